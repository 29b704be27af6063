"""Synthetic joint search + recommendation data: the embedded default dataset.

The generator simulates the setting of Penha et al. (RecSys'24, "Bridging Search and Recommendation in Generative
Retrieval"): recommendation sees *collaborative* similarity (which items co-occur in user histories) and search sees
*content* similarity (which items share query vocabulary). One knob, ``alignment``, controls how much the two agree.

World
    ``num_topics`` topics, each with a made-up name, a vocabulary of ``words_per_topic`` pseudo-words (within-topic
    Zipf frequencies, exponent ``word_zipf``) and ``brands_per_topic`` brand words. A shared pool of real attribute
    words ("red", "compact", ...) cuts across topics.

Items
    Every item gets a **collaborative topic** (balanced over topics) and a **content topic**: with probability
    ``alignment`` the content topic equals the collaborative one, otherwise it is drawn uniformly at random (so at
    ``alignment=0`` about ``1/num_topics`` of the items still agree by chance). Everything textual follows the content
    topic: ``text`` = ``"<name> by <brand>: w1 ... wk"`` with ``item_text_words`` words drawn from the content
    vocabulary, a unique made-up ``name`` word (so each item is findable) and a brand shared by a few items of the
    content topic; ``title`` = ``"Brand Name Headword"`` (readable when printed); ``categories`` =
    ``[content topic name, attribute, ...]``. Within its collaborative topic each item has a popularity weight
    ``rank ** -popularity_zipf`` (random rank).

Users
    Each user prefers ``topics_per_user`` collaborative topics (Dirichlet weights) and lives a timeline of
    ``n_rec + searches_per_user`` events (``n_rec`` uniform in ``[min_history_length, max_history_length]``, search
    events at random positions). The current topic starts from the preferences and, before every later event, is
    redrawn from them with probability ``drift_prob`` (topic drift). Every event picks an item of the current
    collaborative topic by popularity. ``rec`` events are the user's history (no repeated item: duplicates are redrawn
    a few times and, rarely, dropped, so a user can end up slightly below ``min_history_length``). A ``search``
    event's item is the target and its query is ``query_min_terms``..``query_max_terms`` distinct terms drawn
    without replacement from the target's brand, name, attributes, text words and topic name, kept in that order.
    Generic terms are favoured (topic name weight 1, topic word of rank r ``(r+1)**-query_term_zipf``, the
    distinctive brand/name/attributes ``query_distinct_weight``), so popular query strings recur across items and
    users while most strings stay rare (defaults: ~6.3k distinct queries for 10k searches). Timestamps are strictly
    increasing within a user, roughly an hour apart.

Hence at ``alignment=1`` the items that co-occur in histories also share search vocabulary and a model trained on
both tasks gets two consistent views of each item; at ``alignment=0`` the two similarity structures are independent.
:func:`simulate` also returns each item's two topics (see :class:`SyntheticWorld`) for analyses and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from datasets import Dataset

from .schema import CATALOG_FEATURES, INTERACTION_FEATURES

# Real words so that categories and queries read naturally; shared by all topics on purpose (cross-topic noise).
ATTRIBUTES = (
    "red", "blue", "green", "black", "white", "small", "large", "classic", "modern", "vintage", "deluxe",
    "compact", "premium", "budget", "organic", "wireless", "portable", "handmade", "limited", "heavy", "light",
    "soft", "bright", "dark",
)  # fmt: skip
_ONSETS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_BASE_TIME = 1_600_000_000  # an arbitrary Unix time (Sept 2020) so timestamps look like real ones
_REDRAW_ROUNDS = 10  # attempts at replacing a repeated history item before dropping the event


@dataclass
class SyntheticConfig:
    """Knobs of the synthetic world; the defaults give ~29k interactions in about a second."""

    num_items: int = 1000  # catalog size
    num_users: int = 1000  # number of user timelines
    num_topics: int = 20  # topics shared by the collaborative and the content structure (~50 items each)
    alignment: float = 1.0  # P(content topic == collaborative topic) per item; 0 = independent structures
    topics_per_user: int = 3  # collaborative topics a user is interested in
    min_history_length: int = 8  # fewest rec events per user (>= 3 leaves a train item after leave-one-out)
    max_history_length: int = 30  # most rec events per user
    searches_per_user: int = 10  # search events per user, interleaved with the rec events
    drift_prob: float = 0.1  # chance, before each event, that the user re-draws the current topic
    popularity_zipf: float = 1.0  # Zipf exponent of item popularity inside a collaborative topic (0 = uniform)
    words_per_topic: int = 30  # vocabulary size of each content topic
    word_zipf: float = 0.8  # Zipf exponent of word frequency inside a topic vocabulary (common words are shared)
    item_text_words: int = 8  # topic words in each item's text
    brands_per_topic: int = 10  # brand words per content topic (~5 items per brand at the defaults)
    attributes_per_item: int = 2  # attribute words in each item's categories (from ATTRIBUTES)
    query_min_terms: int = 2  # shortest query, in terms
    query_max_terms: int = 4  # longest query, in terms
    query_term_zipf: float = 1.5  # query-term weight of the topic word of rank r is (r+1)**-zipf (topic name: 1)
    query_distinct_weight: float = 0.15  # query-term weight of brand, name and each attribute (rarer, more specific)
    seed: int = 0  # numpy.random.default_rng seed; the same config gives identical tables

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"SyntheticConfig.{field} must be {rule}, got {getattr(self, field)!r}")

        need(self.num_topics >= 1, "num_topics", ">= 1")
        need(self.num_items >= self.num_topics, "num_items", f">= num_topics ({self.num_topics})")
        need(self.num_users >= 1, "num_users", ">= 1")
        need(0.0 <= self.alignment <= 1.0, "alignment", "in [0, 1]")
        need(1 <= self.topics_per_user <= self.num_topics, "topics_per_user", f"in [1, num_topics={self.num_topics}]")
        need(self.min_history_length >= 1, "min_history_length", ">= 1")
        need(
            self.max_history_length >= self.min_history_length,
            "max_history_length",
            f">= min_history_length ({self.min_history_length})",
        )
        need(self.searches_per_user >= 0, "searches_per_user", ">= 0")
        need(0.0 <= self.drift_prob <= 1.0, "drift_prob", "in [0, 1]")
        need(self.popularity_zipf >= 0, "popularity_zipf", ">= 0")
        need(self.word_zipf >= 0, "word_zipf", ">= 0")
        need(self.words_per_topic >= 1, "words_per_topic", ">= 1")
        need(
            1 <= self.item_text_words <= self.words_per_topic,
            "item_text_words",
            f"in [1, words_per_topic={self.words_per_topic}]",
        )
        need(self.brands_per_topic >= 1, "brands_per_topic", ">= 1")
        need(0 <= self.attributes_per_item <= len(ATTRIBUTES), "attributes_per_item", f"in [0, {len(ATTRIBUTES)}]")
        pool = self.query_pool_size
        need(1 <= self.query_min_terms <= pool, "query_min_terms", f"in [1, query pool size={pool}]")
        need(
            self.query_min_terms <= self.query_max_terms <= pool,
            "query_max_terms",
            f"in [query_min_terms={self.query_min_terms}, query pool size={pool}]",
        )
        need(self.query_term_zipf >= 0, "query_term_zipf", ">= 0")
        need(self.query_distinct_weight > 0, "query_distinct_weight", "> 0")
        need(self.seed >= 0, "seed", ">= 0")

    @property
    def query_pool_size(self) -> int:
        """Distinct terms a query can draw from: brand, name, attributes, text words, topic name."""
        return 2 + self.attributes_per_item + self.item_text_words + 1


@dataclass
class SyntheticWorld:
    """The generated tables plus the hidden structure behind them (arrays follow catalog row order)."""

    catalog: Dataset
    interactions: Dataset
    collaborative_topic: np.ndarray  # int, drives co-occurrence in histories
    content_topic: np.ndarray  # int, drives text, categories and queries
    topic_names: list[str]

    def aligned_fraction(self) -> float:
        """Fraction of items whose content topic equals their collaborative topic (~alignment + (1-alignment)/T)."""
        return float(np.mean(self.collaborative_topic == self.content_topic))


def generate_synthetic(config: SyntheticConfig | None = None) -> tuple[Dataset, Dataset]:
    """Generate ``(catalog, interactions)`` with ``CATALOG_FEATURES`` / ``INTERACTION_FEATURES``."""
    world = simulate(config)
    return world.catalog, world.interactions


def simulate(config: SyntheticConfig | None = None) -> SyntheticWorld:
    """Generate the tables and keep each item's collaborative and content topic (see the module docstring)."""
    cfg = config if config is not None else SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    words = _pseudo_words(rng, cfg.num_topics * (1 + cfg.words_per_topic + cfg.brands_per_topic) + cfg.num_items)
    topic_names, words = words[: cfg.num_topics], words[cfg.num_topics :]
    n_vocab = cfg.num_topics * cfg.words_per_topic
    vocab = words[:n_vocab].reshape(cfg.num_topics, cfg.words_per_topic)
    n_brands = cfg.num_topics * cfg.brands_per_topic
    brands = words[n_vocab : n_vocab + n_brands].reshape(cfg.num_topics, cfg.brands_per_topic)
    names = words[n_vocab + n_brands :]

    collab = rng.permutation(np.arange(cfg.num_items) % cfg.num_topics)
    random_topic = rng.integers(0, cfg.num_topics, cfg.num_items)
    content = np.where(rng.random(cfg.num_items) < cfg.alignment, collab, random_topic)
    catalog, pools = _make_catalog(rng, cfg, content, topic_names, vocab, brands, names)
    interactions = _make_interactions(rng, cfg, collab, pools)
    return SyntheticWorld(catalog, interactions, collab, content, [str(t) for t in topic_names])


def _pseudo_words(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct pronounceable made-up words (consonant-vowel syllables), none equal to an attribute."""
    syllables = [o + v for o in _ONSETS for v in _VOWELS]
    length = 3
    while len(syllables) ** length < 4 * (n + len(ATTRIBUTES)):  # sparse sampling keeps words dissimilar
        length += 1
    codes = rng.choice(len(syllables) ** length, size=n + len(ATTRIBUTES), replace=False)
    out = []
    for code in codes:
        parts = []
        for _ in range(length):
            code, digit = divmod(int(code), len(syllables))
            parts.append(syllables[digit])
        word = "".join(parts)
        if word not in ATTRIBUTES:
            out.append(word)
    return np.array(out[:n], dtype=object)


def _gumbel_top_k(rng: np.random.Generator, log_weights: np.ndarray, rows: int, k: int) -> np.ndarray:
    """``rows`` independent weighted samples of ``k`` distinct column indices (Gumbel top-k trick)."""
    keys = log_weights[None, :] + rng.gumbel(size=(rows, log_weights.shape[0]))
    return np.argsort(-keys, axis=1)[:, :k]


def _make_catalog(
    rng: np.random.Generator,
    cfg: SyntheticConfig,
    content: np.ndarray,
    topic_names: np.ndarray,
    vocab: np.ndarray,
    brands: np.ndarray,
    names: np.ndarray,
) -> tuple[Dataset, tuple[np.ndarray, np.ndarray]]:
    """Build the catalog table and each item's query terms and their log-weights, both ``[num_items, pool]``."""
    word_logw = -cfg.word_zipf * np.log(np.arange(1, cfg.words_per_topic + 1))
    word_idx = np.sort(_gumbel_top_k(rng, word_logw, cfg.num_items, cfg.item_text_words), axis=1)  # common first
    text_words = vocab[content[:, None], word_idx]
    brand = brands[content, rng.integers(0, cfg.brands_per_topic, cfg.num_items)]
    attr_idx = _gumbel_top_k(rng, np.zeros(len(ATTRIBUTES)), cfg.num_items, cfg.attributes_per_item)
    attrs = np.array(ATTRIBUTES, dtype=object)[attr_idx]
    topic = topic_names[content]

    width = len(str(cfg.num_items - 1))
    catalog = Dataset.from_dict(
        {
            "item_id": [f"i{i:0{width}d}" for i in range(cfg.num_items)],
            "title": [f"{b.title()} {n.title()} {w[0].title()}" for b, n, w in zip(brand, names, text_words)],
            "text": [f"{n} by {b}: {' '.join(w)}" for n, b, w in zip(names, brand, text_words)],
            "categories": [[t, *a] for t, a in zip(topic, attrs.tolist())],
        },
        features=CATALOG_FEATURES,
    )
    pools = np.concatenate([brand[:, None], names[:, None], attrs, text_words, topic[:, None]], axis=1)
    # Query-term weights: generic terms (topic name, common topic words) are picked more often than the
    # distinctive ones, so popular query strings recur across items and users as in real logs.
    logw = np.concatenate(
        [
            np.full((cfg.num_items, 2 + cfg.attributes_per_item), np.log(cfg.query_distinct_weight)),
            -cfg.query_term_zipf * np.log(word_idx + 1.0),
            np.zeros((cfg.num_items, 1)),
        ],
        axis=1,
    )
    return catalog, (pools, logw)


def _segment_positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For concatenated segments of ``lengths``: the segment of every element and its position inside it."""
    owner = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(lengths) - lengths
    return owner, np.arange(int(lengths.sum())) - starts[owner]


def _make_interactions(
    rng: np.random.Generator, cfg: SyntheticConfig, collab: np.ndarray, pools: tuple[np.ndarray, np.ndarray]
) -> Dataset:
    """Simulate every user's timeline of rec and search events (see the module docstring)."""
    n_users, n_topics = cfg.num_users, cfg.num_topics
    n_rec = rng.integers(cfg.min_history_length, cfg.max_history_length + 1, n_users)
    lengths = n_rec + cfg.searches_per_user
    user, pos = _segment_positions(lengths)
    n_events = len(user)

    # Search events at random positions of each timeline: rank positions by a random key inside each user.
    order = np.lexsort((rng.random(n_events), user))
    is_search = np.empty(n_events, dtype=bool)
    is_search[order] = pos >= n_rec[user]  # `order` keeps users contiguous, so `pos` indexes the shuffled slots

    # Topic drift: each event's candidate topic comes from the user's preferences; a drift (always at the first
    # event) switches to it, and otherwise the previous topic carries forward.
    prefs = _gumbel_top_k(rng, np.zeros(n_topics), n_users, cfg.topics_per_user)
    pref_cdf = np.cumsum(rng.dirichlet(np.ones(cfg.topics_per_user), n_users), axis=1)
    slot = (rng.random(n_events)[:, None] > pref_cdf[user]).sum(axis=1).clip(max=cfg.topics_per_user - 1)
    candidate = prefs[user, slot]
    switch = (rng.random(n_events) < cfg.drift_prob) | (pos == 0)
    topic = candidate[np.maximum.accumulate(np.where(switch, np.arange(n_events), 0))]

    sampler = _PopularitySampler(rng, collab, n_topics, cfg.popularity_zipf)
    item = sampler.draw(rng, topic)
    keep = _dedupe_histories(rng, sampler, user, item, topic, ~is_search, len(collab))

    search_rows = np.flatnonzero(is_search)
    queries = np.full(n_events, "", dtype=object)
    targets = item[search_rows]
    queries[search_rows] = _make_queries(rng, cfg, pools[0][targets], pools[1][targets])

    timestamp = _timestamps(rng, lengths)

    width_u = len(str(n_users - 1))
    width_i = len(str(len(collab) - 1))
    user_ids = np.array([f"u{u:0{width_u}d}" for u in range(n_users)], dtype=object)
    item_ids = np.array([f"i{i:0{width_i}d}" for i in range(len(collab))], dtype=object)
    return Dataset.from_dict(
        {
            "user_id": user_ids[user[keep]].tolist(),
            "item_id": item_ids[item[keep]].tolist(),
            "timestamp": timestamp[keep].tolist(),
            "scenario": np.where(is_search[keep], "search", "rec").tolist(),
            "query": queries[keep].tolist(),
        },
        features=INTERACTION_FEATURES,
    )


def _timestamps(rng: np.random.Generator, lengths: np.ndarray) -> np.ndarray:
    """Strictly increasing times inside each timeline: a random start in a month, then ~1 h gaps."""
    gaps = 1 + rng.exponential(3600.0, int(lengths.sum())).astype(np.int64)
    start = _BASE_TIME + rng.integers(0, 30 * 86400, len(lengths))
    user, _ = _segment_positions(lengths)
    cum = np.cumsum(gaps)
    first = np.cumsum(lengths) - lengths
    return start[user] + cum - (cum[first] - gaps[first])[user]


class _PopularitySampler:
    """Draws items of given collaborative topics with Zipf popularity, all rows at once.

    Items are sorted by topic and each topic's normalised CDF is shifted by the topic index, so one
    ``searchsorted`` over ``topic + u`` samples inside the right topic for every row.
    """

    def __init__(self, rng: np.random.Generator, collab: np.ndarray, n_topics: int, zipf: float):
        self.items = np.argsort(collab, kind="stable")
        topics = collab[self.items]
        sizes = np.bincount(topics, minlength=n_topics)
        # Random popularity rank inside each topic: a per-topic permutation of 0..size-1.
        rank = np.empty(len(topics), dtype=np.int64)
        rank[np.lexsort((rng.random(len(topics)), topics))] = _segment_positions(sizes)[1]
        weight = (rank + 1.0) ** -zipf
        totals = np.bincount(topics, weights=weight, minlength=n_topics)
        within = np.cumsum(weight) - (np.cumsum(totals) - totals)[topics]
        self.cdf = topics + within / totals[topics]
        last = np.cumsum(sizes) - 1
        self.cdf[last] = topics[last] + 1.0  # exact topic ends, so float rounding never spills into the next topic

    def draw(self, rng: np.random.Generator, topic: np.ndarray) -> np.ndarray:
        """One item per entry of ``topic``."""
        u = topic + rng.random(len(topic))
        return self.items[np.searchsorted(self.cdf, u, side="right").clip(max=len(self.items) - 1)]


def _dedupe_histories(
    rng: np.random.Generator,
    sampler: _PopularitySampler,
    user: np.ndarray,
    item: np.ndarray,
    topic: np.ndarray,
    is_rec: np.ndarray,
    n_items: int,
) -> np.ndarray:
    """Redraw repeated items inside each user's rec history (in place); return the mask of events to keep."""
    rec_rows = np.flatnonzero(is_rec)
    for round_ in range(_REDRAW_ROUNDS + 1):
        key = user[rec_rows].astype(np.int64) * n_items + item[rec_rows]
        _, first = np.unique(key, return_index=True)  # earliest event of each (user, item) stays
        repeated = np.ones(len(rec_rows), dtype=bool)
        repeated[first] = False
        rows = rec_rows[repeated]
        if len(rows) == 0 or round_ == _REDRAW_ROUNDS:
            break
        item[rows] = sampler.draw(rng, topic[rows])
    keep = np.ones(len(item), dtype=bool)
    keep[rows] = False
    return keep


def _make_queries(rng: np.random.Generator, cfg: SyntheticConfig, pools: np.ndarray, logw: np.ndarray) -> list[str]:
    """One query per row of ``pools``: a random number of distinct weighted pool terms, kept in pool order."""
    n, width = pools.shape
    n_terms = rng.integers(cfg.query_min_terms, cfg.query_max_terms + 1, n)
    rank = np.argsort(np.argsort(-(logw + rng.gumbel(size=(n, width))), axis=1), axis=1)
    chosen = rank < n_terms[:, None]
    return [" ".join(row[mask]) for row, mask in zip(pools, chosen)]
