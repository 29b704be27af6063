"""Ranking metrics as pure numpy functions over a boolean hits matrix.

:func:`hits_matrix` turns ranked lists and relevant sets into ``hits[q, r]`` (is the item at rank ``r + 1`` of query
``q`` relevant?) and ``n_rel[q]``; every metric then is a few array operations and returns one value per query, so
means, confidence intervals and paired significance tests can all be computed from the same arrays.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

__all__ = ["compute_metrics", "hits_matrix", "hr_at_k", "map_at_k", "mrr", "ndcg_at_k", "recall_at_k"]


def hits_matrix(
    ranked: Sequence[Sequence[str]], relevant: Sequence[Collection[str]], k: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(hits [n, K] bool, n_rel [n] int)`` for ``n`` queries; ``K`` is ``k`` or the longest ranked list.

    A relevant item repeated in a ranked list counts only at its first rank. Relevant sets must be non-empty.
    """
    if isinstance(ranked, str) or isinstance(relevant, str):
        raise ValueError("ranked and relevant must be sequences with one entry per query, not a string")
    if len(ranked) != len(relevant):
        raise ValueError(f"ranked has {len(ranked)} queries but relevant has {len(relevant)}")
    if k is not None:
        _check_k(k)
    width = k if k is not None else max((len(r) for r in ranked), default=0)
    hits = np.zeros((len(ranked), width), dtype=bool)
    n_rel = np.zeros(len(ranked), dtype=np.int64)
    for q, (items, rel) in enumerate(zip(ranked, relevant)):
        # A bare string is a Collection of characters: almost always a forgotten [ ] or { } around one item id.
        if isinstance(items, str):
            raise ValueError(f"ranked[{q}] is a string ({items!r}); it must be a list of item ids")
        if isinstance(rel, str):
            raise ValueError(f"relevant[{q}] is a string ({rel!r}); wrap a single relevant item as {{{rel!r}}}")
        rel_set = set(rel)
        if not rel_set:
            raise ValueError(f"relevant[{q}] is empty: every query needs at least one relevant item")
        n_rel[q] = len(rel_set)
        found: set[Any] = set()
        for r, item in enumerate(items[:width]):
            if item in rel_set and item not in found:
                found.add(item)
                hits[q, r] = True
    return hits, n_rel


def recall_at_k(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    """Fraction of each query's relevant items found in the top ``k``."""
    top = _top(hits, n_rel, k)
    return top.sum(1) / n_rel


def ndcg_at_k(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k with binary gains and ``1 / log2(rank + 1)`` discounts; the ideal list has ``min(n_rel, k)`` hits."""
    top = _top(hits, n_rel, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (top * discounts[: top.shape[1]]).sum(1)
    ideal = np.cumsum(discounts)[np.minimum(n_rel, k) - 1]
    return dcg / ideal


def mrr(hits: np.ndarray) -> np.ndarray:
    """Reciprocal rank of the first hit in each (already truncated) list; 0 when there is none."""
    hits = _check_hits(hits)
    first = hits.argmax(1)
    return np.where(hits.any(1), 1.0 / (first + 1), 0.0)


def map_at_k(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    """Average precision@k: sum of precision@i over the hit ranks ``i <= k``, divided by ``min(n_rel, k)``."""
    top = _top(hits, n_rel, k)
    precision = np.cumsum(top, 1) / np.arange(1, top.shape[1] + 1)
    return (precision * top).sum(1) / np.minimum(n_rel, k)


def hr_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Hit rate@k: 1.0 if any relevant item is in the top ``k``, else 0.0."""
    _check_k(k)
    return _check_hits(hits)[:, :k].any(1).astype(float)


def compute_metrics(
    ranked: Sequence[Sequence[str]],
    relevant: Sequence[Collection[str]],
    ks: Sequence[int] = (5, 10, 30),
    map_k: int = 100,
) -> dict[str, float]:
    """Means of ``recall@k``, ``ndcg@k``, ``hr@k`` for each ``k`` in ``ks``, ``mrr`` (whole list), ``map@{map_k}``."""
    if len(ranked) == 0:
        raise ValueError("no queries: ranked is empty")
    for k in (*ks, map_k):
        _check_k(k)
    hits, n_rel = hits_matrix(ranked, relevant)
    results: dict[str, float] = {}
    for k in ks:
        results[f"recall@{k}"] = float(recall_at_k(hits, n_rel, k).mean())
        results[f"ndcg@{k}"] = float(ndcg_at_k(hits, n_rel, k).mean())
        results[f"hr@{k}"] = float(hr_at_k(hits, k).mean())
    results["mrr"] = float(mrr(hits).mean())
    results[f"map@{map_k}"] = float(map_at_k(hits, n_rel, map_k).mean())
    return results


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")


def _check_hits(hits: np.ndarray) -> np.ndarray:
    hits = np.asarray(hits)
    if hits.ndim != 2:
        raise ValueError(f"hits must be a 2-D [queries, ranks] array, got shape {hits.shape}")
    return hits.astype(bool, copy=False)


def _top(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    _check_k(k)
    hits = _check_hits(hits)
    n_rel = np.asarray(n_rel)
    if n_rel.shape != (hits.shape[0],):
        raise ValueError(f"n_rel must have shape ({hits.shape[0]},) to match hits, got {n_rel.shape}")
    if len(n_rel) and n_rel.min() < 1:
        raise ValueError(f"n_rel must be >= 1 for every query; query {int(np.argmin(n_rel))} has {int(n_rel.min())}")
    return hits[:, :k]
