"""genretrieval's ranking metrics (Recall/NDCG/HR@k, MRR, MAP@depth) as a local 🤗 ``evaluate`` module.

Load it from its folder (works offline, nothing is downloaded)::

    import evaluate
    from genretrieval.evaluation.hf_metric import metric_path

    metric = evaluate.load(metric_path())
    metric.compute(predictions=[["i3", "i1", "i7"]], references=[["i1"]], ks=[1, 3], depth=3)

The numbers are those of ``genretrieval.evaluation.evaluator.evaluate_requests``: each ranking is cut at ``depth``
(the retrieval depth of the trainer), then ``genretrieval.evaluation.compute_metrics`` scores it. This file only
converts and checks inputs; the formulas live in ``genretrieval/evaluation/metrics.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate

from genretrieval.evaluation.metrics import compute_metrics

_DESCRIPTION = """\
Full-catalog ranking metrics of generative retrieval, one request (search query or user history) per row:
recall@k, ndcg@k and hr@k for every k in `ks`, mrr over the first `depth` ranks, map@depth, and num_requests.
Relevance is binary; an item repeated in a ranking counts only at its first rank.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `str`): per request, item ids ranked best first. An empty ranking is allowed
        (the retriever returned nothing) and scores 0.
    references (`list` of `list` of `str`): per request, the relevant item ids (non-empty; duplicates count once).
    ks (`list` of `int`, defaults to `[5, 10, 30]`): cut-offs of recall/ndcg/hr; each at most `depth`.
    depth (`int`, defaults to `100`): rankings are cut to this length; mrr and map@depth use these ranks.
Returns:
    `dict` with `recall@k`, `ndcg@k`, `hr@k` for each k, `mrr`, `map@{depth}` (means over requests, in [0, 1]) and
    `num_requests`.
Examples:
    >>> metric = evaluate.load(metric_path())
    >>> metric.compute(predictions=[["a", "b"], ["c", "d"]], references=[["b"], ["x"]], ks=[1, 2], depth=2)["mrr"]
    0.25
"""

_CITATION = ""


class GenretrievalRetrieval(evaluate.Metric):
    """Recall/NDCG/HR@k, MRR and MAP@depth of ranked item-id lists, computed by ``genretrieval.evaluation``."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(
        self,
        predictions: Sequence[Sequence[str]],
        references: Sequence[Sequence[str]],
        ks: Sequence[int] = (5, 10, 30),
        depth: int = 100,
    ) -> dict[str, float]:
        if len(predictions) == 0:
            raise ValueError("no requests: predictions and references are empty")
        if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence) or len(ks) == 0:
            raise ValueError(f"ks must be a non-empty list of cut-offs such as [5, 10, 30], got {ks!r}")
        for k in (*ks, depth):
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"ks and depth must be integers >= 1, got {k!r}")
        if max(ks) > depth:
            # Same rule as genretrieval's EvalConfig: a cut-off beyond the retrieval depth would silently
            # score ranks that were never retrieved.
            raise ValueError(f"depth ({depth}) must be at least the largest cut-off in ks ({max(ks)})")
        ranked = [list(items)[:depth] for items in predictions]
        metrics = compute_metrics(ranked, [list(rel) for rel in references], ks=tuple(ks), map_k=depth)
        metrics["num_requests"] = float(len(ranked))
        return metrics
