"""Where the ``evaluate`` module of genretrieval's ranking metrics lives, and a one-call loader.

``evaluate.load`` takes a folder ``<dir>`` holding ``<dir>.py``; the folder ships inside the package, so loading it
needs no network and no Hub cache (only a copy of the script in ``HF_MODULES_CACHE``, which ``evaluate`` makes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["METRIC_NAME", "load_metric", "metric_path"]

METRIC_NAME = "genretrieval_retrieval"


def metric_path() -> str:
    """Absolute path of the metric folder, ready for ``evaluate.load``."""
    path = Path(__file__).resolve().parent / METRIC_NAME
    if not (path / f"{METRIC_NAME}.py").is_file():
        # Happens with a wheel built without the package data declared in pyproject.toml.
        raise FileNotFoundError(f"the evaluate metric script {path / f'{METRIC_NAME}.py'} is missing from this install")
    return str(path)


def load_metric(**kwargs: Any) -> Any:
    """``evaluate.load(metric_path(), **kwargs)``: an ``evaluate.EvaluationModule`` computing genretrieval's metrics."""
    import evaluate  # slow import (~5 s): only when the metric is actually wanted

    return evaluate.load(metric_path(), **kwargs)
