"""Popularity baselines: how often each item was a training target, globally per task or per exact search query."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.builders import normalize_query
from ..data.schema import TASKS
from ..evaluation.evaluator import Request
from ._common import catalog_item_ids, column, task_table, to_indices
from .base import Retriever, register_baseline


@dataclass
class PopularityConfig:
    """Which tasks `popularity` counts (a task without training examples is skipped anyway)."""

    tasks: tuple[str, ...] = TASKS  # tasks to count

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        if not self.tasks:
            raise ValueError("PopularityConfig.tasks must name at least one task, got ()")
        for task in self.tasks:
            if task not in TASKS:
                raise ValueError(f"PopularityConfig.tasks: unknown task {task!r}; known tasks: {TASKS}")


def _tie_break(num_items: int) -> np.ndarray:
    """Values strictly inside (0, 1), decreasing along the catalog, so equal counts rank in catalog order."""
    return (num_items - np.arange(num_items, dtype=np.float64)) / (num_items + 1)


@register_baseline("popularity")
class Popularity(Retriever):
    """Score = number of training examples of the request's task whose target is the item.

    Scores are ``count + tie_break`` in float64 (``tie_break`` in (0, 1), decreasing with catalog position), so
    ``floor(score)`` is the exact count and ties go to the item that comes first in the catalog; float64 keeps the
    tie-break exact up to ~10^15 / num_items examples.
    """

    def __init__(self, config: PopularityConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else PopularityConfig()
        self.counts: dict[str, np.ndarray] = {}  # task -> int64 counts in catalog order
        self._index: dict[str, int] = {}

    def fit(self, catalog: Any, train: Mapping[str, Any], validation: Mapping[str, Any] | None = None,
            seed: int = 0) -> Popularity:
        """Count target items per task (``validation`` and ``seed`` are unused: counting is deterministic)."""
        self.item_ids = catalog_item_ids(catalog)
        self._index = {item: pos for pos, item in enumerate(self.item_ids)}
        self.counts = {}
        for task in self._count_tasks():
            table = task_table(train, task)
            if table is not None:
                targets = to_indices(self._index, column(table, "target_item"), f"train[{task!r}] target_item")
                self.counts[task] = np.bincount(targets, minlength=len(self.item_ids)).astype(np.int64)
        if not self.counts:
            raise ValueError(f"{self.name}: no training examples for any of the tasks {self._count_tasks()}")
        self.supported_tasks = tuple(self.counts)
        return self

    def score(self, requests: Sequence[Request]) -> torch.Tensor:
        """``[len(requests), num_items]`` float64: each request's task popularity (the input itself is ignored)."""
        self._check_fitted()
        self.check_tasks(requests)
        tie = _tie_break(len(self.item_ids))
        rows = {task: counts + tie for task, counts in self.counts.items()}
        return torch.from_numpy(np.stack([rows[r.task] for r in requests])) if requests else self._empty()

    def _count_tasks(self) -> tuple[str, ...]:
        return self.config.tasks

    def _check_fitted(self) -> None:
        if not self.item_ids:
            raise RuntimeError(f"{self.name}: call fit() before score()")

    def _empty(self) -> torch.Tensor:
        return torch.empty((0, len(self.item_ids)), dtype=torch.float64)


@dataclass
class QueryPopularityConfig:
    """Options of ``popularity-query``."""

    fallback: bool = True  # rank items the query never led to by global search popularity (False: catalog order)

    def __post_init__(self) -> None:
        if not isinstance(self.fallback, bool):
            raise ValueError(f"QueryPopularityConfig.fallback must be a bool, got {self.fallback!r}")


@register_baseline("popularity-query")
class QueryPopularity(Popularity):
    """Search only: items ranked by how often they were the target of the exact (normalised) training query.

    Items the query never led to, and every item for a query unseen in training, fall back to global search
    popularity (unless ``fallback=False``), then catalog order: score = ``query_count * (max_global + 1) +
    global_count + tie_break``, which sorts lexicographically by (query count, global count, catalog position). With
    the query-disjoint split of :func:`~genretrieval.data.build_examples` no test query is seen in training, so this
    equals ``popularity`` there; it matters for per-user chronological splits and real logs where queries recur
    (DESIGN §1, Beauty).
    """

    supported_tasks = ("search",)

    def __init__(self, config: QueryPopularityConfig | None = None) -> None:  # type: ignore[override]
        super().__init__()
        self.config: QueryPopularityConfig = config if config is not None else QueryPopularityConfig()  # type: ignore[assignment]
        self.query_counts: dict[str, Counter[int]] = {}  # normalised query -> Counter(catalog position -> count)

    def fit(self, catalog: Any, train: Mapping[str, Any], validation: Mapping[str, Any] | None = None,
            seed: int = 0) -> QueryPopularity:
        """Count targets per normalised training query, plus global search popularity as the fallback."""
        super().fit(catalog, train, validation, seed)
        table = task_table(train, "search")
        targets = to_indices(self._index, column(table, "target_item"), "train['search'] target_item")
        self.query_counts = {}
        for query, target in zip(column(table, "query"), targets):
            self.query_counts.setdefault(normalize_query(query), Counter())[target] += 1
        return self

    def _count_tasks(self) -> tuple[str, ...]:
        return ("search",)

    def score(self, requests: Sequence[Request]) -> torch.Tensor:
        """``[len(requests), num_items]`` float64 scores (see the class docstring for the formula)."""
        self._check_fitted()
        self.check_tasks(requests)
        tie = _tie_break(len(self.item_ids))
        base = self.counts["search"] + tie if self.config.fallback else tie
        scale = float(self.counts["search"].max() + 1)
        out = np.tile(base, (len(requests), 1))
        for row, req in enumerate(requests):
            for pos, count in self.query_counts.get(normalize_query(req.query), {}).items():
                out[row, pos] += count * scale
        return torch.from_numpy(out)
