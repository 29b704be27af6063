"""Simulate search queries for datasets that have none (MovieLens, Amazon reviews).

Amazon has no query log, so product-search work (Van Gysel et al. CIKM'16, Ai et al. SIGIR'17, JSR) builds queries from
item metadata: a user who bought an item is taken to have searched for the item's category path. This module does
the same for any canonical catalog + interactions and adds one ``search`` interaction per selected ``rec`` one.

Methods (:class:`QuerySimulationConfig.method`)
    ``category_path``: the terms of the item's ``categories`` in order, lower-cased, split on non-alphanumerics,
    stop-words and repeated terms removed (``["Makeup", "Nails", "Nail Polish"]`` → ``"makeup nails nail polish"``).
    Attributes listed in ``drop_attributes`` (default ``"unknown"``, any case) are skipped. With
    ``drop_first_attribute_if_brand`` the first attribute is taken for a brand and dropped unless it is one of
    ``top_categories``: that is the S3-Rec/P5 Beauty ``attributes`` layout ``[brand if frequent] + category path``
    (the root "Beauty" already removed). ``top_categories=None`` infers them as the first attributes that are also the
    *second* attribute of some item (a path root shows up right after a brand somewhere; a brand never does); on
    Beauty that gives exactly :data:`AMAZON_BEAUTY_TOP_CATEGORIES` and 215 distinct queries.
    ``genre_template`` (MovieLens): one of ``templates`` filled with the item's lower-cased genres and, when the
    title ends in ``(YYYY)``, its decade, e.g. ``"comedy movies"``, ``"action thriller films from the 1990s"``. The
    template and genres are drawn per event with the seed among those the item can fill.
    ``title_keywords``: the non-stop-word terms of the title, repeats removed.
    ``max_terms`` keeps the first terms only (category_path, title_keywords). An item whose query comes out empty
    (no category left, no genre) gets no search event.

Which events and when
    ``search_fraction`` of the ``rec`` rows (a seeded choice, ``round(fraction * n)`` rows) each get one ``search``
    row: same user, same item, **same timestamp**, inserted in the table **right before** the rec row. Every
    consumer orders events by (timestamp, row order) (see ``builders.py``), so the search sorts immediately before
    its rec event while rec timestamps stay untouched (the recommend examples do not change), and a search's history
    (rec items strictly before its timestamp) never contains its own target. Timestamps remain ints.

Personalisation (UnifiedSSR-style, ``personalize=True``)
    Each query gets the ``personal_terms`` best TF-IDF keywords of its user appended (keywords already in the query
    skipped). TF = term counts over the texts (``text``, else ``title``) of the user's *training* rec items: every rec
    item except the user's last two by (timestamp, row), which are the leave-one-out validation and test targets and
    so never leak into any query (a user with <= 2 rec events gets no keyword). IDF = ``log((1+N)/(1+df)) + 1`` over
    the catalog texts. Keywords are non-stop-word tokens of >= 2 characters that are not pure digits and occur in at
    most half the catalog texts (``PERSONAL_MAX_DF``); ties are broken alphabetically.

:func:`describe` returns the generator's name, version and parameters for results files.
"""

from __future__ import annotations

import html
import math
import re
import string
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from datasets import Dataset

from .schema import INTERACTION_FEATURES, SchemaError

GENERATOR_VERSION = 1
METHODS = ("category_path", "genre_template", "title_keywords")
DEFAULT_GENRE_TEMPLATES = (
    "{genre} movies",
    "{genre} films",
    "{genre1} {genre2} movies",
    "{genre} movies from the {decade}s",
    "{genre1} {genre2} films from the {decade}s",
)
TEMPLATE_FIELDS = ("genre", "genre1", "genre2", "decade")
# The six top-level categories of Amazon Beauty (2014); in S3-Rec's attributes any other first value is a brand.
AMAZON_BEAUTY_TOP_CATEGORIES = ("Skin Care", "Hair Care", "Makeup", "Tools & Accessories", "Bath & Body", "Fragrance")

# A small built-in English list, so that nothing is downloaded: function words only (articles, pronouns, auxiliaries,
# conjunctions, the commonest prepositions) and the clitic fragments left by splitting on apostrophes ("men's" ->
# "men", "s"). Prepositions that carry meaning in product categories and titles ("After Sun", "Make Up", "Out of
# Africa" keeps "africa" either way) are deliberately absent: NLTK's list would turn "After Sun" into "sun".
STOP_WORDS = frozenset(
    """a an the and or but nor if as of for in on at to from with by about into than so
    i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his himself she her hers
    herself it its itself they them their theirs themselves this that these those what which who whom whose
    am is are was were be been being have has had having do does did doing will would shall should can could may
    might must s t d ll m o re ve y""".split()
)

# Personal keywords must occur in at most this share of the catalog texts (sklearn's max_df): boilerplate shared by
# every item ("genres" in the MovieLens texts) would otherwise win on term frequency.
PERSONAL_MAX_DF = 0.5

_TOKEN = re.compile(r"[^\W_]+")  # runs of letters/digits in any script: "L'Oréal" -> "l", "oréal"
_YEAR = re.compile(r"\((\d{4})\)\s*$")


@dataclass
class QuerySimulationConfig:
    """How search queries are simulated from item metadata (see the module docstring)."""

    method: str = "category_path"  # one of METHODS: category_path | genre_template | title_keywords
    drop_first_attribute_if_brand: bool = False  # first attribute is a brand unless in top_categories (S3-Rec Beauty)
    top_categories: tuple[str, ...] | None = None  # first attributes that are categories; None = infer from catalog
    drop_attributes: tuple[str, ...] = ("unknown",)  # attribute/genre values never used (compared lower-cased)
    templates: tuple[str, ...] = DEFAULT_GENRE_TEMPLATES  # genre_template phrasings, fields in TEMPLATE_FIELDS
    max_terms: int | None = None  # keep the first this-many item terms (category_path, title_keywords); None = all
    personalize: bool = False  # append the user's top TF-IDF keywords from their training items (UnifiedSSR)
    personal_terms: int = 2  # keywords appended per query when personalize
    search_fraction: float = 1.0  # share of rec interactions that get a search event (seeded choice)
    seed: int = 0  # seed of the event choice and of the genre templates

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"QuerySimulationConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.top_categories is not None:
            self.top_categories = tuple(self.top_categories)
        self.drop_attributes = tuple(self.drop_attributes)
        self.templates = tuple(self.templates)
        if not self.templates:
            raise ValueError("QuerySimulationConfig.templates must not be empty, got ()")
        for template in self.templates:
            fields = _template_fields(template)
            unknown = sorted(fields - set(TEMPLATE_FIELDS))
            if unknown:
                raise ValueError(
                    f"QuerySimulationConfig.templates: {template!r} uses unknown field(s) {unknown}; "
                    f"allowed: {TEMPLATE_FIELDS}"
                )
            if not fields & {"genre", "genre1"}:
                raise ValueError(
                    f"QuerySimulationConfig.templates: {template!r} names no genre ({{genre}} or {{genre1}})"
                )
        if self.max_terms is not None and not _is_int_at_least(self.max_terms, 1):
            raise ValueError(f"QuerySimulationConfig.max_terms must be an int >= 1 or None, got {self.max_terms!r}")
        if not _is_int_at_least(self.personal_terms, 1):
            raise ValueError(f"QuerySimulationConfig.personal_terms must be an int >= 1, got {self.personal_terms!r}")
        if not (isinstance(self.search_fraction, (int, float)) and 0.0 < self.search_fraction <= 1.0):
            raise ValueError(f"QuerySimulationConfig.search_fraction must be in (0, 1], got {self.search_fraction!r}")
        if not _is_int_at_least(self.seed, 0):
            raise ValueError(f"QuerySimulationConfig.seed must be an int >= 0, got {self.seed!r}")


def describe(config: QuerySimulationConfig, catalog: Dataset | None = None) -> dict[str, Any]:
    """The generator and its parameters, JSON-ready, for results files; ``catalog`` adds the resolved top categories."""
    record: dict[str, Any] = {
        "generator": "genretrieval.data.queries.simulate_search",
        "version": GENERATOR_VERSION,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
        "stop_words": len(STOP_WORDS),
    }
    if catalog is not None and config.method == "category_path" and config.drop_first_attribute_if_brand:
        record["resolved_top_categories"] = sorted(resolve_top_categories(catalog, config))
    return record


def tokenize(text: str) -> list[str]:
    """Lower-cased letter/digit runs of ``text`` (HTML entities decoded first); punctuation splits words."""
    return _TOKEN.findall(html.unescape(text).lower())


def content_terms(texts: list[str], max_terms: int | None = None) -> list[str]:
    """The tokens of ``texts`` in order, without stop-words and without repeats (the first occurrence wins)."""
    out: list[str] = []
    seen: set[str] = set()
    for text in texts:
        for token in tokenize(text):
            if token not in STOP_WORDS and token not in seen:
                seen.add(token)
                out.append(token)
    return out[:max_terms] if max_terms is not None else out


def resolve_top_categories(catalog: Dataset, config: QuerySimulationConfig) -> set[str]:
    """``config.top_categories`` or, when ``None``, the first attributes that are also some item's second attribute.

    A top-level category is a path root, so under a brand it is the second attribute; brands never are. "Some later
    position" would not do: Beauty has brands named "Retinol" and "Scissors", which are also leaf categories.
    """
    if config.top_categories is not None:
        return set(config.top_categories)
    firsts, seconds = set(), set()
    for categories in catalog["categories"]:
        if categories:
            firsts.add(categories[0])
        if len(categories) > 1:
            seconds.add(categories[1])
    return firsts & seconds


def item_queries(catalog: Dataset, config: QuerySimulationConfig) -> dict[str, str]:
    """The (non-personalised) query of every catalog item for the deterministic methods; ``""`` = no query.

    ``genre_template`` draws per event, so it has no single query per item: use :func:`simulate_search`.
    """
    if config.method == "genre_template":
        raise ValueError("item_queries: method 'genre_template' draws a query per event; use simulate_search")
    top = resolve_top_categories(catalog, config) if config.drop_first_attribute_if_brand else set()
    drop = {a.lower() for a in config.drop_attributes}
    out = {}
    for item, title, categories in zip(catalog["item_id"], catalog["title"], catalog["categories"]):
        if config.method == "category_path":
            out[item] = " ".join(content_terms(_path_attributes(categories, config, top, drop), config.max_terms))
        else:
            out[item] = " ".join(content_terms([title], config.max_terms))
    return out


def simulate_search(catalog: Dataset, interactions: Dataset, config: QuerySimulationConfig | None = None) -> Dataset:
    """``interactions`` plus one simulated ``search`` row right before each selected ``rec`` row (module docstring).

    Existing rows (search ones included) are kept in order and unchanged. Raises ``SchemaError`` for an interaction
    whose item is not in the catalog.
    """
    cfg = config if config is not None else QuerySimulationConfig()
    cols = interactions.select_columns(list(INTERACTION_FEATURES)).to_dict()
    cat = catalog.select_columns(["item_id", "title", "text", "categories"]).to_dict()
    row_of = {item: r for r, item in enumerate(cat["item_id"])}
    for r, item in enumerate(cols["item_id"]):
        if item not in row_of:
            raise SchemaError(f"interactions: row {r}, column 'item_id': unknown item {item!r} (not in the catalog)")

    rng = np.random.default_rng(cfg.seed)
    rec_rows = [r for r, scenario in enumerate(cols["scenario"]) if scenario == "rec"]
    n_pick = int(round(cfg.search_fraction * len(rec_rows)))
    picked = {rec_rows[i] for i in rng.permutation(len(rec_rows))[:n_pick]}
    fixed = item_queries(catalog, cfg) if cfg.method != "genre_template" else {}
    personal = _personal_keywords(cols, cat, cfg) if cfg.personalize else {}
    drop = {a.lower() for a in cfg.drop_attributes}

    out: dict[str, list[Any]] = {name: [] for name in INTERACTION_FEATURES}
    for r in range(len(cols["user_id"])):
        if r in picked:
            user, item = cols["user_id"][r], cols["item_id"][r]
            if cfg.method == "genre_template":
                query = _genre_query(cat["title"][row_of[item]], cat["categories"][row_of[item]], cfg, drop, rng)
            else:
                query = fixed[item]
            if query and cfg.personalize:
                have = set(tokenize(query))
                extra = [t for t in personal.get(user, []) if t not in have][: cfg.personal_terms]
                query = " ".join([query, *extra])
            if query:
                for name, value in zip(INTERACTION_FEATURES, (user, item, cols["timestamp"][r], "search", query)):
                    out[name].append(value)
        for name in INTERACTION_FEATURES:
            out[name].append(cols[name][r])
    return Dataset.from_dict(out, features=INTERACTION_FEATURES)


def _is_int_at_least(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _path_attributes(categories: list[str], cfg: QuerySimulationConfig, top: set[str], drop: set[str]) -> list[str]:
    """The attributes a category-path query is made of: brand (per the rule) and dropped values removed."""
    attributes = list(categories)
    if cfg.drop_first_attribute_if_brand and attributes and attributes[0] not in top:
        attributes = attributes[1:]
    return [a for a in attributes if a.strip().lower() not in drop]


def _genre_query(
    title: str, genres: list[str], cfg: QuerySimulationConfig, drop: set[str], rng: np.random.Generator
) -> str:
    """One seeded template filled with the item's genres (and decade); ``""`` if no template fits."""
    names = [" ".join(g.lower().split()) for g in genres if g.strip() and g.strip().lower() not in drop]
    names = list(dict.fromkeys(names))
    year = _YEAR.search(title)
    feasible = []
    for template in cfg.templates:
        fields = _template_fields(template)
        if ("genre2" in fields and len(names) < 2) or not names or ("decade" in fields and year is None):
            continue
        feasible.append((template, fields))
    if not feasible:
        return ""
    template, fields = feasible[int(rng.integers(len(feasible)))]
    values: dict[str, str] = {}
    if "decade" in fields:
        values["decade"] = str(int(year.group(1)) // 10 * 10)
    if "genre" in fields:
        values["genre"] = names[int(rng.integers(len(names)))]
    if fields & {"genre1", "genre2"}:
        if "genre2" in fields:
            first, second = sorted(rng.choice(len(names), size=2, replace=False).tolist())
            values["genre1"], values["genre2"] = names[first], names[second]
        else:
            values["genre1"] = names[int(rng.integers(len(names)))]
    return " ".join(template.format(**values).split())


def _keyword_tokens(text: str) -> list[str]:
    return [t for t in tokenize(text) if len(t) >= 2 and not t.isdigit() and t not in STOP_WORDS]


def _personal_keywords(cols: dict[str, list], cat: dict[str, list], cfg: QuerySimulationConfig) -> dict[str, list[str]]:
    """Per user, keywords by TF-IDF over their training rec items (all but the last two), best first."""
    docs = {
        item: _keyword_tokens(text or title) for item, title, text in zip(cat["item_id"], cat["title"], cat["text"])
    }
    df = Counter(t for tokens in docs.values() for t in set(tokens))
    n = len(docs)
    idf = {t: math.log((1 + n) / (1 + d)) + 1.0 for t, d in df.items() if d <= PERSONAL_MAX_DF * n}
    events: dict[str, list[tuple[int, int, str]]] = {}
    columns = zip(cols["user_id"], cols["item_id"], cols["timestamp"], cols["scenario"])
    for r, (user, item, ts, scenario) in enumerate(columns):
        if scenario == "rec":
            events.setdefault(user, []).append((ts, r, item))
    out = {}
    for user, bucket in events.items():
        bucket.sort()
        tf = Counter(t for _, _, item in bucket[:-2] for t in docs[item] if t in idf)  # [:-2]: LOO targets excluded
        # the whole ranking, not a top-k: a query may already contain any number of the best keywords
        out[user] = sorted(tf, key=lambda t: (-tf[t] * idf[t], t))
    return out
