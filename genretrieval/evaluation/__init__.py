"""Evaluation: ranking metrics as pure functions over per-query arrays."""

from .metrics import compute_metrics, hits_matrix, hr_at_k, map_at_k, mrr, ndcg_at_k, recall_at_k

__all__ = ["compute_metrics", "hits_matrix", "hr_at_k", "map_at_k", "mrr", "ndcg_at_k", "recall_at_k"]
