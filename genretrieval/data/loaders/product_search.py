"""Load the personalised product-search release of Ai et al. (SIGIR'17), e.g. Amazon "Cell Phones & Accessories".

Folder (each file optionally gzipped; ``.gz`` names are what upstream ships):

* ``query_text.txt.gz``: one query per line; a query's id is its 0-based line number.
* ``train.qrels.gz`` / ``test.qrels.gz``: ``<reviewerID>_<query line> 0 <ASIN> <label>`` per line (TREC qrels).
  Label 1 means the user bought the item after the query; rows with label 0 are skipped. Queries are category-path
  strings (Van Gysel et al.); the upstream split hides 30% of each user's purchases and uses disjoint test queries.
* ``train_review_id.txt.gz`` (review line numbers in the original dump) is not needed and not read.

:func:`load_product_search` returns a :class:`ProductSearchData` ``(catalog, interactions, split)``:

* ``catalog``: the items seen in the qrels, in order of first appearance (train file first). Upstream ships no item
  text, so ``title`` = the ASIN, ``text`` = ``""`` and ``categories`` = ``[]``; join the Amazon metadata yourself
  (:func:`~genretrieval.data.loaders.amazon.load_amazon_reviews` reads it) for content-based models.
* ``interactions``: one ``search`` row per judgement: ``user_id`` = reviewerID, ``item_id`` = ASIN, ``query`` = the
  query text. Upstream has no time, so ``timestamp`` is the row's position (train rows 0..n-1, then the test rows):
  an order that puts every upstream test event after every training one, not a clock.
* ``split``: ``"train"`` or ``"test"`` per interaction row, the upstream assignment.

:func:`product_search_examples` turns that into search examples that keep the upstream split (a seeded share of the
training (user, query) pairs becomes validation). The generic
:func:`~genretrieval.data.builders.build_examples` also accepts these interactions (its query-disjoint or per-user
split then replaces the upstream one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from datasets import Dataset, DatasetDict

from ..schema import CATALOG_FEATURES, EXAMPLE_FEATURES, INTERACTION_FEATURES, DataFormatError
from .movielens import find_file, iter_lines, open_text, parse_id_text, parse_int

QUERY_FILE = "query_text.txt"
QRELS_FILES = {"train": "train.qrels", "test": "test.qrels"}


class ProductSearchData(NamedTuple):
    """The canonical tables of a product-search release plus the upstream split of each interaction row."""

    catalog: Dataset
    interactions: Dataset
    split: list[str]  # "train" or "test" per interactions row (upstream assignment)


def load_product_search(directory: str | os.PathLike) -> ProductSearchData:
    """Read an Ai et al. product-search folder (module docstring); unpacks as ``catalog, interactions, split``."""
    folder = Path(directory)
    names = [QUERY_FILE, *QRELS_FILES.values()]
    found = {name: find_file(folder, name) for name in names} if folder.is_dir() else {}
    absent = [name for name in names if found.get(name) is None]
    if absent:
        raise FileNotFoundError(
            f"{folder}: missing {', '.join(absent) if folder.is_dir() else 'folder'}; an Ai et al. product-search "
            f"folder needs {', '.join(f'{n}.gz' for n in names)} (plain, uncompressed names work too)"
        )
    query_path = found[QUERY_FILE]
    queries: list[str] = []
    for line, raw in enumerate(_all_lines(query_path), start=1):
        text = " ".join(raw.split())
        if not text:
            raise DataFormatError(str(query_path), line, "query", "empty query (a query's id is its line number)")
        queries.append(text)

    cols: dict[str, list[Any]] = {name: [] for name in INTERACTION_FEATURES}
    split: list[str] = []
    items: dict[str, None] = {}  # ordered set
    for split_name, file_name in QRELS_FILES.items():
        path = found[file_name]
        for line, raw in iter_lines(path):
            parts = raw.split()
            if len(parts) != 4:
                problem = f"expected 4 space-separated fields (<reviewerID>_<query> 0 <asin> <label>), got {len(parts)}"
                raise DataFormatError(str(path), line, None, problem)
            user_query, _, asin, label = parts
            user, sep, query_index = user_query.rpartition("_")
            if not sep or not user:
                raise DataFormatError(str(path), line, "user_query", f"{user_query!r} is not <reviewerID>_<query line>")
            index = parse_int(query_index, path, line, "user_query")
            if not 0 <= index < len(queries):
                problem = f"query line {index} is outside {query_path.name} (lines 0..{len(queries) - 1})"
                raise DataFormatError(str(path), line, "user_query", problem)
            relevance = parse_int(label, path, line, "relevance")
            if relevance not in (0, 1):
                raise DataFormatError(str(path), line, "relevance", f"expected 0 or 1, got {label!r}")
            if relevance == 0:
                continue
            item = parse_id_text(asin, path, line, "asin")
            items[item] = None
            cols["user_id"].append(user)
            cols["item_id"].append(item)
            cols["timestamp"].append(len(split))
            cols["scenario"].append("search")
            cols["query"].append(queries[index])
            split.append(split_name)
    if not split:
        raise DataFormatError(str(found[QRELS_FILES["train"]]), None, None, "the qrels hold no relevant judgement")
    n = len(items)
    catalog = {"item_id": list(items), "title": list(items), "text": [""] * n, "categories": [[] for _ in range(n)]}
    return ProductSearchData(
        Dataset.from_dict(catalog, features=CATALOG_FEATURES),
        Dataset.from_dict(cols, features=INTERACTION_FEATURES),
        split,
    )


def product_search_examples(
    data: ProductSearchData, *, validation_fraction: float = 0.1, max_history: int = 20, seed: int = 0
) -> DatasetDict:
    """Search examples (``EXAMPLE_FEATURES``) that keep the upstream train/test split.

    ``validation``: a seeded ``validation_fraction`` of the distinct training (user, query) pairs, with all their
    judgements (so a validation input never also appears in train). ``history``: the user's distinct training
    purchases in order of first appearance, without the example's own target, last ``max_history`` (0 = no
    history). Upstream has no time, so this is the user's purchase profile, not a chronological history; it never
    contains a test purchase.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"product_search_examples: validation_fraction must be in [0, 1), got {validation_fraction!r}")
    if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 0:
        raise ValueError(f"product_search_examples: max_history must be an int >= 0, got {max_history!r}")
    if seed < 0:
        raise ValueError(f"product_search_examples: seed must be >= 0, got {seed!r}")
    cols = data.interactions.select_columns(["user_id", "item_id", "query"]).to_dict()
    if len(data.split) != len(cols["user_id"]):
        raise ValueError(
            f"product_search_examples: split has {len(data.split)} entries for {len(cols['user_id'])} interactions"
        )
    profile: dict[str, dict[str, None]] = {}
    pairs: dict[tuple[str, str], None] = {}
    for user, item, query, split in zip(cols["user_id"], cols["item_id"], cols["query"], data.split):
        if split == "train":
            profile.setdefault(user, {})[item] = None
            pairs[(user, query)] = None
    pair_list = list(pairs)
    order = np.random.default_rng(seed).permutation(len(pair_list))
    held = {pair_list[i] for i in order[: int(round(validation_fraction * len(pair_list)))]}

    out = {name: {key: [] for key in EXAMPLE_FEATURES} for name in ("train", "validation", "test")}
    for user, item, query, split in zip(cols["user_id"], cols["item_id"], cols["query"], data.split):
        name = "validation" if split == "train" and (user, query) in held else split
        history = [i for i in profile.get(user, {}) if i != item] if max_history else []
        rows = out[name]
        rows["task"].append("search")
        rows["user_id"].append(user)
        rows["query"].append(query)
        rows["history"].append(history[-max_history:] if max_history else [])
        rows["target_item"].append(item)
    return DatasetDict({name: Dataset.from_dict(rows, features=EXAMPLE_FEATURES) for name, rows in out.items()})


def _all_lines(path: Path) -> list[str]:
    """Every line, blank ones included: a query's id is its line number, so none may be skipped silently."""
    try:
        with open_text(path) as f:
            return [raw.rstrip("\r\n") for raw in f]
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataFormatError(str(path), None, None, f"cannot read the file: {e}") from None
