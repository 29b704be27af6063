"""Paired significance tests and seed aggregation for model comparisons.

Two models evaluated on the same requests (same order, same protocol, same sampled negatives) give paired
per-request values (:attr:`~genretrieval.evaluation.protocols.EvalResult.per_request`), so the right test is a paired
t-test on the differences. Across seeds, each seed's mean is one paired observation. scipy is required for the
t distribution; it ships with the ``bench`` extra (and with scikit-learn).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["compare_over_seeds", "compare_per_request", "mean_over_seeds", "paired_t_test"]


def paired_t_test(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Two-sided paired t-test of ``a`` vs ``b``: ``{"t", "p_value", "mean_diff" (mean of a - b), "n"}``.

    When every difference is equal the variance is zero: identical inputs give ``t = 0, p = 1``; a constant non-zero
    difference gives ``t = ±inf, p = 0`` (scipy would return NaN for both).
    """
    a = _as_vector(a, "a")
    b = _as_vector(b, "b")
    if len(a) != len(b):
        raise ValueError(f"paired test needs the same requests in the same order: "
                         f"a has {len(a)} values, b has {len(b)}")
    if len(a) < 2:
        raise ValueError(f"paired t-test needs at least 2 pairs, got {len(a)}")
    diff = a - b
    mean_diff = float(diff.mean())
    n = len(diff)
    if np.all(diff == diff[0]):
        if mean_diff == 0.0:
            return {"t": 0.0, "p_value": 1.0, "mean_diff": 0.0, "n": n}
        return {"t": float(np.copysign(np.inf, mean_diff)), "p_value": 0.0, "mean_diff": mean_diff, "n": n}
    stats = _scipy_stats()
    result = stats.ttest_rel(a, b)
    return {"t": float(result.statistic), "p_value": float(result.pvalue), "mean_diff": mean_diff, "n": n}


def compare_per_request(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """:func:`paired_t_test` for every metric the two per-request tables share (e.g. two ``EvalResult.per_request``)."""
    shared = [m for m in a if m in b]
    if not shared:
        raise ValueError(f"no metric in common: a has {sorted(a)}, b has {sorted(b)}")
    out = {}
    for metric in shared:
        try:
            out[metric] = paired_t_test(a[metric], b[metric])
        except ValueError as err:
            raise ValueError(f"{metric}: {err}") from None
    return out


def mean_over_seeds(results: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "std", "n"}}`` over one metrics dict per seed; ``std`` is the sample std (0 for one seed).

    Every seed must report the same metrics, so that a missing run cannot silently shrink ``n`` for one metric.
    """
    if isinstance(results, Mapping) or len(results) == 0:
        raise ValueError("results must be a non-empty list with one metrics dict per seed")
    names = list(results[0])
    for i, r in enumerate(results[1:], start=1):
        if set(r) != set(names):
            missing, extra = sorted(set(names) - set(r)), sorted(set(r) - set(names))
            raise ValueError(f"seed {i} reports different metrics than seed 0: missing {missing}, extra {extra}")
    out: dict[str, dict[str, float]] = {}
    for name in names:
        values = np.array([float(r[name]) for r in results])
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[name] = {"mean": float(values.mean()), "std": std, "n": len(values)}
    return out


def compare_over_seeds(a_per_seed: Sequence[float], b_per_seed: Sequence[float]) -> dict[str, Any]:
    """Paired t-test across seeds: ``a_per_seed[i]`` and ``b_per_seed[i]`` must come from the same seed ``i``."""
    return paired_t_test(np.asarray(a_per_seed, dtype=float), np.asarray(b_per_seed, dtype=float))


def _as_vector(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of per-request values, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values (first at index {int(np.argmin(np.isfinite(arr)))})")
    return arr


def _scipy_stats() -> Any:
    try:
        from scipy import stats
    except ImportError as err:  # pragma: no cover - scipy comes with the bench extra
        raise ImportError("paired_t_test needs scipy; install it with `pip install genretrieval[bench]` "
                          "(or `pip install scipy`)") from err
    return stats
