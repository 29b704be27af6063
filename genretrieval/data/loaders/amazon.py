"""Load Amazon review data (McAuley et al.) into the canonical catalog and interaction tables.

Two forms are supported.

Raw review dumps, 2014 or 2018 (:func:`load_amazon_reviews`)
    ``reviews_path``: one review per line with ``reviewerID``, ``asin`` and ``unixReviewTime`` (other fields are
    ignored), e.g. ``reviews_Beauty_5.json.gz`` or ``Beauty_5.json.gz``. ``metadata_path``: one item per line with
    ``asin`` and optionally ``title``, ``brand``, ``categories`` (2014: a list of category paths) or ``category``
    (2018: one path) and ``description`` (a string, or a list of strings in 2018). Lines are strict JSON (2018) or
    Python dict literals (the 2014 "loose JSON", read with ``ast.literal_eval``, never ``eval``). Gzip is detected
    from the content.

    Catalog: the reviewed items, in metadata-file order. ``title`` = the title (HTML entities decoded; the ASIN when
    the metadata has none); ``categories`` = the item's first category path with its root (``"Beauty"``) dropped when
    ``category_root_drop``; ``text`` = ``"title. Brand: b. Categories: c1, c2. description"`` (absent parts left out,
    HTML tags stripped). The brand is in the text, not in ``categories``, so category-path queries need no brand rule.
    A repeated ``asin`` in the metadata keeps its first line (the 2018 dumps have exact duplicates).
    Interactions: one ``rec`` event per review (duplicates kept), sorted by (user, ``unixReviewTime``, line).
    ``k_core`` iteratively drops users and items with fewer than ``k_core`` reviews (``None``: keep all; the 5-core
    files already are 5-core). A reviewed item without metadata raises, unless ``missing_metadata="drop"``.

Preprocessed sequences, S3-Rec / P5 / TIGER (:func:`load_amazon_sequences`)
    A folder with ``sequences.txt`` (``user item item ...`` per line, oldest first, no timestamps) and
    ``items.jsonl`` (``{"item_id", "asin", "text", "attributes"}``). ``timestamp`` = 0-based position in the user's
    sequence. Catalog: every item of ``items.jsonl`` in file order, ``title`` = ``text`` = the upstream text
    (whitespace collapsed; an empty text keeps ``text`` empty and takes the ASIN, else the id, as title),
    ``categories`` = ``attributes`` (HTML entities decoded; for Beauty ``[brand if frequent] + category path``).

Problems raise :class:`~genretrieval.data.schema.DataFormatError` naming the file, the 1-based line and the field.
"""

from __future__ import annotations

import ast
import html
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datasets import Dataset

from ..schema import CATALOG_FEATURES, DataFormatError, rec_tables
from .jsonl import _parse_id, _Where
from .movielens import find_file, id_sort_key, iter_lines

SEQUENCES_FILE = "sequences.txt"
ITEMS_FILE = "items.jsonl"
_MISSING_METADATA = ("error", "drop")
_TAG = re.compile(r"<[^>]*>")


def load_amazon_reviews(
    reviews_path: str | os.PathLike,
    metadata_path: str | os.PathLike,
    *,
    category_root_drop: bool = True,
    k_core: int | None = None,
    missing_metadata: str = "error",
) -> tuple[Dataset, Dataset]:
    """Read a raw 2014/2018 review dump and its metadata into ``(catalog, interactions)`` (see the module docstring)."""
    if k_core is not None and (isinstance(k_core, bool) or not isinstance(k_core, int) or k_core < 1):
        raise ValueError(f"load_amazon_reviews: k_core must be an int >= 1 or None, got {k_core!r}")
    if missing_metadata not in _MISSING_METADATA:
        raise ValueError(
            f"load_amazon_reviews: missing_metadata must be one of {_MISSING_METADATA}, got {missing_metadata!r}"
        )
    reviews = _read_reviews(reviews_path)
    if not reviews:
        raise DataFormatError(str(reviews_path), None, None, "the file has no reviews")
    meta = _read_metadata(metadata_path, {item for _, item, _, _ in reviews}, category_root_drop)
    missing = [r for r in reviews if r[1] not in meta]
    if missing and missing_metadata == "error":
        _, item, _, line = missing[0]
        raise DataFormatError(
            str(reviews_path), line, "asin",
            f"item {item!r} has no line in the metadata file {metadata_path} ({len(missing)} reviews of items without "
            f"metadata; pass missing_metadata='drop' to drop them)",
        )  # fmt: skip
    if missing:
        reviews = [r for r in reviews if r[1] in meta]
    if k_core is not None:
        reviews = _k_core(reviews, k_core)
    if not reviews:
        raise DataFormatError(str(reviews_path), None, None, f"no review is left after k_core={k_core!r}")
    reviews.sort(key=lambda r: (id_sort_key(r[0]), r[2], r[3]))

    used = {item for _, item, _, _ in reviews}
    catalog: dict[str, list[Any]] = {name: [] for name in CATALOG_FEATURES}
    for item, (title, text, categories) in meta.items():  # dicts keep metadata-file order
        if item in used:
            catalog["item_id"].append(item)
            catalog["title"].append(title)
            catalog["text"].append(text)
            catalog["categories"].append(categories)
    return rec_tables(catalog, reviews)


def load_amazon_sequences(directory: str | os.PathLike) -> tuple[Dataset, Dataset]:
    """Read an S3-Rec/P5/TIGER folder (``sequences.txt`` + ``items.jsonl``) into ``(catalog, interactions)``."""
    folder = Path(directory)
    found = {name: find_file(folder, name) for name in (SEQUENCES_FILE, ITEMS_FILE)}
    absent = [name for name, p in found.items() if p is None]
    if not folder.is_dir() or absent:
        raise FileNotFoundError(
            f"{folder}: missing {' and '.join(absent) if folder.is_dir() else 'folder'}; a preprocessed Amazon folder "
            f"needs {SEQUENCES_FILE} (user item item ...) and {ITEMS_FILE} (item_id, asin, text, attributes), "
            f"optionally gzipped (.gz)"
        )
    items_path, sequences_path = found[ITEMS_FILE], found[SEQUENCES_FILE]
    catalog: dict[str, list[Any]] = {name: [] for name in CATALOG_FEATURES}
    first_line: dict[str, int] = {}
    for line, rec in read_json_objects(items_path):
        at = _Where(items_path, line)
        for name in ("item_id", "text"):
            if name not in rec:
                raise at.error(name, "required field is missing")
        item = _parse_id(rec, "item_id", at)
        if item in first_line:
            raise at.error("item_id", f"duplicate item id {item!r} (first on line {first_line[item]})")
        first_line[item] = line
        text = rec["text"]
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise at.error("text", f"expected a string, got {type(text).__name__} {text!r}")
        asin = rec.get("asin")
        if asin is not None and not isinstance(asin, str):
            raise at.error("asin", f"expected a string, got {type(asin).__name__} {asin!r}")
        text = " ".join(text.split())
        attributes = rec.get("attributes") or []
        if not isinstance(attributes, list) or not all(isinstance(a, str) for a in attributes):
            raise at.error("attributes", f"expected a list of strings, got {attributes!r}")
        catalog["item_id"].append(item)
        catalog["title"].append(text or (asin or "").strip() or item)  # upstream Beauty has one item with no text
        catalog["text"].append(text)
        catalog["categories"].append([html.unescape(a).strip() for a in attributes if a.strip()])
    if not first_line:
        raise DataFormatError(str(items_path), None, None, "the file has no items")

    rows: list[tuple[str, str, int]] = []
    seen_users: dict[str, int] = {}
    for line, raw in iter_lines(sequences_path):
        user, *items = raw.split()
        if user in seen_users:
            problem = f"user {user!r} already has a sequence on line {seen_users[user]}"
            raise DataFormatError(str(sequences_path), line, "user_id", problem)
        seen_users[user] = line
        if not items:
            problem = f"user {user!r} has no items (expected 'user item item ...')"
            raise DataFormatError(str(sequences_path), line, "item_id", problem)
        for position, item in enumerate(items):
            if item not in first_line:
                raise DataFormatError(
                    str(sequences_path), line, "item_id",
                    f"unknown item {item!r} at position {position + 1} (not in {items_path.name})",
                )  # fmt: skip
            rows.append((user, item, position))
    if not rows:
        raise DataFormatError(str(sequences_path), None, None, "the file has no sequences")
    rows.sort(key=lambda r: (id_sort_key(r[0]), r[2]))  # stable: positions are unique within a user
    return rec_tables(catalog, rows)


def read_json_objects(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line, dict)`` per non-blank line: strict JSON, else a Python dict literal (2014 "loose JSON")."""
    for line, raw in iter_lines(path):
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as e:
            try:
                rec = ast.literal_eval(raw.strip())  # the 2014 dumps are Python reprs; literal_eval runs no code
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                problem = f"malformed JSON: {e.msg} at column {e.colno} (and not a Python dict literal either)"
                raise DataFormatError(str(path), line, None, problem) from None
        if not isinstance(rec, dict):
            raise DataFormatError(str(path), line, None, f"expected an object, got {type(rec).__name__}")
        yield line, rec


def _read_reviews(path: str | os.PathLike) -> list[tuple[str, str, int, int]]:
    """``(user, item, timestamp, line)`` per review, in file order."""
    rows = []
    for line, rec in read_json_objects(path):
        at = _Where(path, line)
        for name in ("reviewerID", "asin", "unixReviewTime"):
            if name not in rec:
                raise at.error(name, "required field is missing")
        ts = rec["unixReviewTime"]
        if isinstance(ts, bool) or not (isinstance(ts, int) or (isinstance(ts, str) and ts.strip().isdigit())):
            raise at.error("unixReviewTime", f"{ts!r} is not an integer")
        rows.append((_parse_id(rec, "reviewerID", at), _parse_id(rec, "asin", at), int(ts), line))
    return rows


def _read_metadata(
    path: str | os.PathLike, wanted: set[str], category_root_drop: bool
) -> dict[str, tuple[str, str, list[str]]]:
    """``{asin: (title, text, categories)}`` for the ``wanted`` items, in file order (first line of an asin wins)."""
    meta: dict[str, tuple[str, str, list[str]]] = {}
    for line, rec in read_json_objects(path):
        at = _Where(path, line)
        if "asin" not in rec:
            raise at.error("asin", "required field is missing")
        item = _parse_id(rec, "asin", at)
        if item not in wanted or item in meta:
            continue
        title = _clean(_string_field(rec, "title", at)) or item
        brand = _clean(_string_field(rec, "brand", at))
        path_ = _category_path(rec, at)
        if category_root_drop:
            path_ = path_[1:]
        description = _clean(_TAG.sub(" ", _string_field(rec, "description", at, allow_list=True)))
        brand_part = f"Brand: {brand}" if brand else ""
        parts = [title, brand_part, f"Categories: {', '.join(path_)}" if path_ else "", description]
        text = ". ".join(p.rstrip(". ") for p in parts if p)
        meta[item] = (title, text, path_)
    return meta


def _string_field(rec: dict[str, Any], field: str, at: _Where, allow_list: bool = False) -> str:
    value = rec.get(field)
    if value is None:
        return ""
    if allow_list and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise at.error(field, f"expected a string, got {type(value).__name__} {value!r:.60}")
    return value


def _clean(text: str) -> str:
    """HTML entities decoded and whitespace collapsed."""
    return " ".join(html.unescape(text).split())


def _category_path(rec: dict[str, Any], at: _Where) -> list[str]:
    """The first category path: 2014 ``categories`` (list of lists) or 2018 ``category`` (list)."""
    if rec.get("categories") is not None:
        value, field = rec["categories"], "categories"
        if not isinstance(value, list) or not all(isinstance(p, list) for p in value):
            raise at.error(field, f"expected a list of category paths (lists), got {value!r:.80}")
        value = value[0] if value else []
    else:
        value, field = rec.get("category") or [], "category"
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise at.error(field, f"expected a list of strings, got {value!r:.80}")
    # the 2018 dumps leak HTML fragments ('</span>') into some paths: keep real names only
    return [c for c in (_clean(_TAG.sub(" ", v)) for v in value) if c]


def _k_core(reviews: list[tuple[str, str, int, int]], k: int) -> list[tuple[str, str, int, int]]:
    """Drop users and items with fewer than ``k`` reviews until none is left (counts include duplicates)."""
    while True:
        users = Counter(r[0] for r in reviews)
        items = Counter(r[1] for r in reviews)
        kept = [r for r in reviews if users[r[0]] >= k and items[r[1]] >= k]
        if len(kept) == len(reviews):
            return kept
        reviews = kept
