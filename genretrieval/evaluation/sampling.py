"""Evaluating where exact full-catalog scoring does not fit: beam-search ranking and seeded request samples.

Exact scoring of multi-token (semantic) IDs costs one decoder pass per (request, ID prefix); on a 12k-item catalog
that is minutes per 16 requests on a CPU. :class:`BeamRanking` ranks by constrained beam search instead (TIGER's
way) and :func:`sample_request_index` picks a seeded subset of the test requests, the same for every seed and model
that asks for the same size, so paired tests stay paired.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class BeamRanking:
    """A retriever view whose ``score()`` is constrained beam search's top-``num_beams`` list, every other item -inf.

    Metrics are exact for cut-offs up to ``num_beams`` (use ``num_beams`` as the protocol depth, so MRR/MAP are
    truncated there). The sampled protocol does not apply: its 100 candidates are mostly outside the beam.
    """

    def __init__(self, retriever: Any, num_beams: int) -> None:
        if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
            raise ValueError(f"num_beams must be an integer >= 1, got {num_beams!r}")
        self.retriever, self.num_beams = retriever, num_beams
        self.item_ids = list(retriever.item_ids)
        self._position = {item: i for i, item in enumerate(self.item_ids)}

    def check_tasks(self, requests: Sequence[Any]) -> None:
        """Delegate the task check to the wrapped retriever, when it has one."""
        check = getattr(self.retriever, "check_tasks", None)
        if callable(check):
            check(requests)

    def score(self, requests: Sequence[Any], batch_size: int = 64) -> Any:
        """``[len(requests), num_items]`` scores: beam log-probabilities on the beam's items, -inf elsewhere."""
        import torch

        sources = [self.retriever._format_request(r) for r in requests]
        out = self.retriever.retrieve(sources, k=self.num_beams, num_beams=self.num_beams, batch_size=batch_size)
        scores = torch.full((len(requests), len(self.item_ids)), float("-inf"))
        for row, (items, values) in enumerate(zip(out.item_ids, out.scores)):
            for item, value in zip(items, values):
                scores[row, self._position[item]] = float(value)
        return scores


def sample_request_index(num_requests: int, max_requests: int | None, seed: int = 0) -> np.ndarray:
    """Sorted positions of a seeded sample of ``max_requests`` of ``num_requests`` requests (all if None or more)."""
    if max_requests is not None and (isinstance(max_requests, bool) or not isinstance(max_requests, int)
                                     or max_requests < 1):
        raise ValueError(f"max_requests must be an integer >= 1 or None, got {max_requests!r}")
    if max_requests is None or max_requests >= num_requests:
        return np.arange(num_requests)
    return np.sort(np.random.default_rng(seed).choice(num_requests, max_requests, replace=False))
