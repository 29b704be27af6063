"""Load user data from JSON Lines or CSV files into the canonical catalog and interaction tables.

The format is chosen by extension: ``.jsonl`` / ``.json`` hold one JSON object per line (blank lines are skipped),
``.csv`` has a header row. Columns not listed below are ignored.

Catalog: ``item_id`` (required; int or str), ``title`` (required), ``text`` (default ``""``), ``categories``
(default ``[]``; a JSON list, or a ``|``-separated string in CSV or JSON).

Interactions: ``user_id``, ``item_id`` (required; int or str), ``timestamp`` (required integer; integral floats and
digit strings are accepted), ``scenario`` (``"search"`` or ``"rec"``, default ``"rec"``), ``query`` (required and
non-empty for ``search``, must be empty for ``rec``).

Every problem raises :class:`~genretrieval.data.schema.DataFormatError` naming the file, the 1-based line and the
field, e.g. ``interactions.csv line 7, field 'timestamp': 'abc' is not an integer``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datasets import Dataset

from ...fileio import atomic_write_text
from ..schema import CATALOG_FEATURES, INTERACTION_FEATURES, SCENARIOS, DataFormatError

CATEGORY_SEPARATOR = "|"
_JSON_SUFFIXES = (".jsonl", ".json")
_CSV_SUFFIXES = (".csv",)


def load_catalog(path: str | os.PathLike) -> Dataset:
    """Read a catalog file into a Dataset with ``CATALOG_FEATURES`` (item ids unique, stored as str)."""
    cols: dict[str, list[Any]] = {name: [] for name in CATALOG_FEATURES}
    first_line: dict[str, int] = {}
    for line, rec in _read_records(path, required=("item_id", "title")):
        at = _Where(path, line)
        item = _parse_id(rec, "item_id", at)
        if item in first_line:
            raise at.error("item_id", f"duplicate item id {item!r} (first on line {first_line[item]})")
        first_line[item] = line
        cols["item_id"].append(item)
        cols["title"].append(_parse_text(rec, "title", at, required=True))
        cols["text"].append(_parse_text(rec, "text", at))
        cols["categories"].append(_parse_categories(rec, at))
    if not first_line:
        raise DataFormatError(str(path), None, None, "the catalog has no items")
    return Dataset.from_dict(cols, features=CATALOG_FEATURES)


def load_interactions(path: str | os.PathLike, catalog: Dataset | None = None) -> Dataset:
    """Read an interactions file into a Dataset with ``INTERACTION_FEATURES``; with ``catalog``, check item ids."""
    known = set(catalog["item_id"]) if catalog is not None else None
    cols: dict[str, list[Any]] = {name: [] for name in INTERACTION_FEATURES}
    for line, rec in _read_records(path, required=("user_id", "item_id", "timestamp")):
        at = _Where(path, line)
        item = _parse_id(rec, "item_id", at)
        if known is not None and item not in known:
            raise at.error("item_id", f"unknown item {item!r} (not in the catalog)")
        scenario = _parse_text(rec, "scenario", at).strip().lower() or "rec"
        if scenario not in SCENARIOS:
            raise at.error("scenario", f"{scenario!r} is not one of {SCENARIOS}")
        query = _parse_text(rec, "query", at)
        if scenario == "search" and not query.strip():
            raise at.error("query", "a search interaction needs a non-empty query")
        if scenario == "rec" and query.strip():
            raise at.error("query", f"a rec interaction must have an empty query, got {query!r}")
        cols["user_id"].append(_parse_id(rec, "user_id", at))
        cols["item_id"].append(item)
        cols["timestamp"].append(_parse_timestamp(rec, at))
        cols["scenario"].append(scenario)
        cols["query"].append(query)
    if not cols["user_id"]:
        raise DataFormatError(str(path), None, None, "the file has no interactions")
    return Dataset.from_dict(cols, features=INTERACTION_FEATURES)


def save_table(table: Dataset, path: str | os.PathLike) -> None:
    """Write a catalog or interactions table in the format the loaders read (chosen by extension)."""
    kind = _file_kind(path)
    rows = table.to_list()
    buffer = io.StringIO(newline="")
    if kind == "json":
        for row in rows:
            buffer.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        writer = csv.writer(buffer)
        writer.writerow(table.column_names)
        for line, row in enumerate(rows, start=2):
            writer.writerow([_csv_cell(value, str(path), line, name) for name, value in row.items()])
    # Validate every cell first, then write through temp file + rename: no half-written table on disk.
    atomic_write_text(path, buffer.getvalue())


class _Where:
    """A file position, to build errors that name it."""

    def __init__(self, path: str | os.PathLike, line: int):
        self.path, self.line = str(path), line

    def error(self, field: str | None, problem: str) -> DataFormatError:
        """The error for ``problem`` in ``field`` at this position."""
        return DataFormatError(self.path, self.line, field, problem)


def _file_kind(path: str | os.PathLike) -> str:
    """``"json"`` or ``"csv"`` from the extension; anything else is an error."""
    suffix = Path(path).suffix.lower()
    if suffix in _JSON_SUFFIXES:
        return "json"
    if suffix in _CSV_SUFFIXES:
        return "csv"
    raise DataFormatError(
        str(path), None, None, f"unsupported extension {suffix!r}; expected one of {_JSON_SUFFIXES + _CSV_SUFFIXES}"
    )


def _read_records(path: str | os.PathLike, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(1-based line, record)``; every record has the ``required`` keys (missing ones raise)."""
    records = _read_json_lines(path) if _file_kind(path) == "json" else _read_csv(path, required)
    for line, rec in records:
        for name in required:
            if name not in rec:
                raise DataFormatError(str(path), line, name, "required field is missing")
        yield line, rec


def _read_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line, object)`` for every non-blank line."""
    # utf-8-sig drops a byte-order mark that some editors write
    with open(path, encoding="utf-8-sig") as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as e:
                hint = " (expected one JSON object per line, not a JSON array)" if raw.lstrip().startswith("[") else ""
                problem = f"malformed JSON: {e.msg} at column {e.colno}{hint}"
                raise DataFormatError(str(path), line, None, problem) from None
            if not isinstance(rec, dict):
                raise DataFormatError(str(path), line, None, f"expected a JSON object, got {type(rec).__name__}")
            yield line, rec


def _read_csv(path: str | os.PathLike, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line, {column: cell})`` for every non-blank row after checking the header."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = [name.strip() for name in next(reader, [])]
        if not header:
            raise DataFormatError(str(path), 1, None, f"missing header row; expected columns {list(required)} at least")
        for name in required:
            if name not in header:
                raise DataFormatError(str(path), 1, name, f"required column is missing from the header {header}")
        duplicated = sorted({name for name in header if header.count(name) > 1})
        if duplicated:
            raise DataFormatError(str(path), 1, duplicated[0], "column appears more than once in the header")
        end = reader.line_num
        for row in reader:
            line, end = end + 1, reader.line_num  # a quoted cell may span lines: report where the row starts
            if not row:
                continue
            if len(row) != len(header):
                raise DataFormatError(str(path), line, None, f"expected {len(header)} cells (header), got {len(row)}")
            yield line, dict(zip(header, row))


def _parse_id(rec: dict[str, Any], field: str, at: _Where) -> str:
    """A non-empty id from an int or a string (floats are refused: ``3.0`` vs ``"3"`` would be ambiguous)."""
    value = rec[field]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise at.error(field, f"{value!r} is not an id (expected an integer or a string)")
    text = str(value).strip()
    if not text:
        raise at.error(field, "empty id")
    return text


def _parse_text(rec: dict[str, Any], field: str, at: _Where, required: bool = False) -> str:
    """A string field; numbers become strings, a missing optional field becomes ``""``."""
    value = rec.get(field)
    if value is None:
        if required:
            raise at.error(field, "required field is null")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise at.error(field, f"expected a string, got {type(value).__name__} {value!r}")
    text = str(value)
    if required and not text.strip():
        raise at.error(field, "required field is empty")
    return text


def _parse_categories(rec: dict[str, Any], at: _Where) -> list[str]:
    """Categories from a JSON list or a ``|``-separated string (empty parts dropped)."""
    value = rec.get("categories")
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(CATEGORY_SEPARATOR) if part.strip()]
    if isinstance(value, list):
        for element in value:
            if isinstance(element, bool) or not isinstance(element, (str, int)):
                raise at.error("categories", f"list element {element!r} is not a string")
        return [str(element) for element in value]
    raise at.error("categories", f"expected a list or a {CATEGORY_SEPARATOR!r}-separated string, got {value!r}")


def _parse_timestamp(rec: dict[str, Any], at: _Where) -> int:
    """An int from an int, an integral float or a string of digits."""
    value = rec["timestamp"]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise at.error("timestamp", f"{value!r} is not an integer")


def _csv_cell(value: Any, path: str, line: int, field: str) -> Any:
    """A CSV cell; lists are ``|``-joined, refusing elements that contain the separator (no round trip)."""
    if not isinstance(value, list):
        return value
    for element in value:
        if CATEGORY_SEPARATOR in element:
            raise DataFormatError(path, line, field, f"{element!r} contains the separator {CATEGORY_SEPARATOR!r}")
    return CATEGORY_SEPARATOR.join(value)
