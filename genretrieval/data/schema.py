"""Canonical tables shared by every loader, builder and model.

Three tables, each a :class:`datasets.Dataset` with fixed :class:`datasets.Features`:

* **catalog**: one row per item — ``item_id`` (str), ``title`` (str), ``text`` (str, free description),
  ``categories`` (list of str: category path, genres, attributes).
* **interactions**: one row per event — ``user_id`` (str), ``item_id`` (str), ``timestamp`` (int64, any
  monotone clock), ``scenario`` (``"search"`` or ``"rec"``), ``query`` (str; non-empty iff scenario is search).
* **examples**: one row per training/evaluation instance — ``task`` (``"search"`` or ``"recommend"``),
  ``user_id`` (str), ``query`` (str, empty for recommend), ``history`` (list of item ids, oldest first; may be
  empty for search), ``target_item`` (str).

Item and user ids are strings everywhere so that any source (ASINs, MovieLens ints, UUIDs) fits unchanged.
"""

from __future__ import annotations

from datasets import Dataset, Features, Sequence, Value

SCENARIOS = ("search", "rec")
TASKS = ("search", "recommend")

CATALOG_FEATURES = Features(
    {
        "item_id": Value("string"),
        "title": Value("string"),
        "text": Value("string"),
        "categories": Sequence(Value("string")),
    }
)

INTERACTION_FEATURES = Features(
    {
        "user_id": Value("string"),
        "item_id": Value("string"),
        "timestamp": Value("int64"),
        "scenario": Value("string"),
        "query": Value("string"),
    }
)

EXAMPLE_FEATURES = Features(
    {
        "task": Value("string"),
        "user_id": Value("string"),
        "query": Value("string"),
        "history": Sequence(Value("string")),
        "target_item": Value("string"),
    }
)


class SchemaError(ValueError):
    """Raised when a table does not follow the canonical schema; the message names the table, row and column."""


class DataFormatError(SchemaError):
    """Raised by file loaders; the message names the file, the 1-based line (when known) and the field.

    Example: ``interactions.csv line 7, field 'timestamp': 'abc' is not an integer``.
    """

    def __init__(self, path: str, line: int | None, field: str | None, problem: str):
        where = str(path) if line is None else f"{path} line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.field, self.problem = str(path), line, field, problem

    def __reduce__(self) -> tuple:  # the default would call __init__ with the message only
        return (type(self), (self.path, self.line, self.field, self.problem))


def _check_columns(ds: Dataset, features: Features, table: str) -> None:
    missing = [c for c in features if c not in ds.column_names]
    if missing:
        raise SchemaError(f"{table}: missing column(s) {missing}; expected columns {list(features)}")


def validate_catalog(catalog: Dataset) -> None:
    """Check a catalog table: required columns, non-empty unique item ids."""
    _check_columns(catalog, CATALOG_FEATURES, "catalog")
    seen: dict[str, int] = {}
    for row, item in enumerate(catalog["item_id"]):
        if not item:
            raise SchemaError(f"catalog: row {row}, column 'item_id': empty item id")
        if item in seen:
            raise SchemaError(f"catalog: row {row}, column 'item_id': duplicate item id {item!r} (first at row {seen[item]})")
        seen[item] = row


def validate_interactions(interactions: Dataset, catalog: Dataset | None = None) -> None:
    """Check an interactions table; with ``catalog``, also that every item exists in it."""
    _check_columns(interactions, INTERACTION_FEATURES, "interactions")
    known = set(catalog["item_id"]) if catalog is not None else None
    cols = interactions.select_columns(["user_id", "item_id", "scenario", "query"]).to_dict()
    for row, (user, item, scenario, query) in enumerate(
        zip(cols["user_id"], cols["item_id"], cols["scenario"], cols["query"])
    ):
        if not user:
            raise SchemaError(f"interactions: row {row}, column 'user_id': empty user id")
        if scenario not in SCENARIOS:
            raise SchemaError(f"interactions: row {row}, column 'scenario': {scenario!r} is not one of {SCENARIOS}")
        if scenario == "search" and not (query or "").strip():
            raise SchemaError(f"interactions: row {row}, column 'query': a search interaction needs a non-empty query")
        if known is not None and item not in known:
            raise SchemaError(f"interactions: row {row}, column 'item_id': unknown item {item!r} (not in the catalog)")


def rec_tables(catalog: dict[str, list], rows: list[tuple[str, str, int]]) -> tuple[Dataset, Dataset]:
    """Canonical (catalog, interactions) from catalog columns and ``(user, item, timestamp)`` rec events."""
    interactions = {
        "user_id": [r[0] for r in rows],
        "item_id": [r[1] for r in rows],
        "timestamp": [r[2] for r in rows],
        "scenario": ["rec"] * len(rows),
        "query": [""] * len(rows),
    }
    return Dataset.from_dict(catalog, features=CATALOG_FEATURES), Dataset.from_dict(interactions, features=INTERACTION_FEATURES)
