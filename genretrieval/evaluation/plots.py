"""Benchmark figures: metric bars, training curves and t-SNE maps of item embeddings (PNG, headless).

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas, never through ``pyplot``, so no global
backend is switched and no GUI is needed. Every file is written atomically (temp file in the same directory, then
``os.replace``) so a crash never leaves a truncated PNG behind. matplotlib and scikit-learn come with the ``bench``
extra and are imported only when a plot is requested.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_item_embeddings_tsne", "plot_metrics", "plot_training_curves"]


def plot_metrics(table: Mapping[str, Mapping[str, float]], metrics: Sequence[str], path: str | os.PathLike,
                 title: str = "") -> Path:
    """Grouped bar chart: one group per metric, one bar per model, each bar labelled with its value."""
    if not table:
        raise ValueError("table is empty: expected {model: {metric: value}}")
    if isinstance(metrics, str) or len(metrics) == 0:
        raise ValueError(f"metrics must be a non-empty list of metric names, got {metrics!r}")
    for model, row in table.items():
        missing = [m for m in metrics if m not in row]
        if missing:
            raise ValueError(f"model {model!r} has no value for {missing}; it reports {sorted(row)}")
    Figure = _figure_class()
    models = list(table)
    x = np.arange(len(metrics))
    width = 0.8 / len(models)
    fig = Figure(figsize=(max(6.0, 0.5 * len(metrics) * len(models) + 2), 4.5), layout="constrained")
    ax = fig.add_subplot()
    colors = _distinct_colors(len(models))
    for j, model in enumerate(models):
        values = [float(table[model][m]) for m in metrics]
        bars = ax.bar(x - 0.4 + width * (j + 0.5), values, width, label=model, color=colors[j])
        ax.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90, padding=2)
    ax.set_xticks(x, list(metrics))
    ax.set_ylabel("value")
    shown = [float(row[m]) for row in table.values() for m in metrics]
    top = max((v for v in shown if np.isfinite(v)), default=1.0)
    ax.set_ylim(0, max(top, 1e-9) * 1.25)  # headroom for the rotated value labels
    # beside the axes: a benchmark suite has ~20 models, whose legend would cover the bars inside
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), ncols=1 + (len(models) - 1) // 24)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _distinct_colors(n: int) -> list[Any]:
    """``n`` colours no two alike: tab20's strong shades first, then its light ones; a continuous map beyond 20
    (matplotlib's default cycle repeats after 10, so a suite's 11th model took the 1st one's colour)."""
    from matplotlib import colormaps

    if n <= 20:
        tab20 = colormaps["tab20"]
        return [tab20(i) for i in [*range(0, 20, 2), *range(1, 20, 2)][:n]]
    turbo = colormaps["turbo"]
    return [turbo(i / (n - 1)) for i in range(n)]


def plot_training_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], key: str, path: str | os.PathLike,
                         title: str = "") -> Path:
    """One line per model of ``key`` (e.g. ``"train/loss"``, ``"validation/recall@10"``) against ``step``.

    ``histories`` are trainer ``log_history`` lists; entries without ``key`` (other log kinds) are skipped.
    """
    if not histories:
        raise ValueError("histories is empty: expected {model: log_history}")
    curves = {}
    for model, history in histories.items():
        points = [(e.get("step"), float(e[key])) for e in history if key in e]
        if any(not isinstance(s, (int, np.integer)) for s, _ in points):
            raise ValueError(f"{model!r}: every log entry with {key!r} needs an integer 'step'")
        if points:
            curves[model] = sorted(points)
    if not curves:
        available = sorted({k for h in histories.values() for e in h for k in e if k != "step"})
        raise ValueError(f"no model logged {key!r}; logged keys are {available}")
    Figure = _figure_class()
    fig = Figure(figsize=(6.5, 4.0))
    ax = fig.add_subplot()
    for model, points in curves.items():
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=model)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or key)
    fig.tight_layout()
    return _save(fig, path)


def plot_item_embeddings_tsne(embeddings: Mapping[str, np.ndarray], popularity: np.ndarray,
                              path: str | os.PathLike, seed: int = 0, max_items: int = 2000,
                              perplexity: float = 30.0) -> Path:
    """One t-SNE panel per model of its ``[num_items, d]`` item embeddings, coloured by ``log(1 + popularity)``.

    All panels use the same seeded subsample of ``max_items`` items and one shared colour scale, so a popularity
    gradient (or its absence) can be compared across models. t-SNE uses PCA init and ``random_state=seed``.
    """
    if not embeddings:
        raise ValueError("embeddings is empty: expected {model: array[num_items, d]}")
    popularity = np.asarray(popularity, dtype=float)
    if popularity.ndim != 1:
        raise ValueError(f"popularity must be 1-D [num_items], got shape {popularity.shape}")
    if np.any(popularity < 0) or not np.all(np.isfinite(popularity)):
        raise ValueError("popularity must hold finite counts >= 0")
    num_items = len(popularity)
    arrays = {}
    for model, emb in embeddings.items():
        emb = np.asarray(emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != num_items:
            raise ValueError(f"embeddings[{model!r}] has shape {emb.shape}; "
                             f"expected ({num_items}, d) to match popularity")
        arrays[model] = emb
    if not isinstance(max_items, (int, np.integer)) or max_items < 5:
        raise ValueError(f"max_items must be an integer >= 5, got {max_items!r}")
    if num_items < 5:
        raise ValueError(f"t-SNE needs at least 5 items, got {num_items}")
    try:
        from sklearn.manifold import TSNE
    except ImportError as err:
        raise ImportError("plot_item_embeddings_tsne needs scikit-learn; install it with "
                          "`pip install genretrieval[bench]` (or `pip install scikit-learn`)") from err
    Figure = _figure_class()

    keep = np.arange(num_items)
    if num_items > max_items:
        keep = np.sort(np.random.default_rng(seed).choice(num_items, size=max_items, replace=False))
    colour = np.log1p(popularity[keep])
    # sklearn requires perplexity < n_samples; small test catalogs get a proportionally smaller one.
    perp = float(min(perplexity, max(2.0, (len(keep) - 1) / 3)))
    # Exact t-SNE is faster and more faithful on small sets; Barnes-Hut (O(n log n)) pays off only for larger ones.
    method = "exact" if len(keep) <= 500 else "barnes_hut"

    n = len(arrays)
    fig = Figure(figsize=(4.2 * n + 1.0, 4.2), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    scatter = None
    for ax, (model, emb) in zip(axes, arrays.items()):
        tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perp, method=method)
        xy = tsne.fit_transform(emb[keep])
        # Popular items drawn last so they are not hidden under the long tail.
        order = np.argsort(colour, kind="stable")
        scatter = ax.scatter(xy[order, 0], xy[order, 1], c=colour[order], s=6, cmap="viridis",
                             vmin=float(colour.min()), vmax=float(colour.max()) or 1.0, linewidths=0)
        ax.set_title(model)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(scatter, ax=list(axes), label="log(1 + popularity)", shrink=0.85)
    return _save(fig, path)


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plotting needs matplotlib; install it with `pip install genretrieval[bench]` "
                          "(or `pip install matplotlib`)") from err
    return Figure


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plots are written as PNG; path must end in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its 0600 mode would survive os.replace; open(..., "xb") honours the umask like any file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as handle:
            # Figure.savefig uses the Agg canvas when no backend is attached; format given since the suffix is .tmp.
            fig.savefig(handle, format="png", dpi=120)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
