"""Full-catalog ranking evaluation of a retriever on an examples table, per task.

Examples that share a request are scored once: a search query issued by several users (or leading to several
items) is one request whose relevant set holds every target item seen with it in the split; a recommendation request
is one user's history. Requests are sharded over processes and the rankings gathered with
``accelerator.gather_for_metrics``, so multi-process runs score each request exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .metrics import compute_metrics


@dataclass
class Request:
    """One ranking request: the model input and the items that count as hits."""

    task: str
    source: str
    relevant: set[str]
    exclude: set[str] = field(default_factory=set)
    query: str = ""
    history: list[str] = field(default_factory=list)
    user_id: str = ""


def group_requests(examples: Any, format_fn: Callable[[dict], str], *, exclude_history: bool = False) -> list[Request]:
    """Merge examples with the same model input into requests (in first-seen order)."""
    by_source: dict[tuple[str, str], Request] = {}
    for row in examples:
        source = format_fn(row)
        key = (row["task"], source if row["task"] == "search" else f"{row['user_id']}\t{source}")
        req = by_source.get(key)
        if req is None:
            exclude = set(row["history"]) if exclude_history and row["task"] == "recommend" else set()
            req = by_source[key] = Request(row["task"], source, set(), exclude, row["query"], list(row["history"]),
                                           row["user_id"] if row["task"] == "recommend" else "")
        req.relevant.add(row["target_item"])
    return list(by_source.values())


def subsample(requests: list[Request], max_requests: int | None, seed: int) -> list[Request]:
    """A seeded subset of at most ``max_requests`` requests (order kept), for cheap periodic validation."""
    if max_requests is None or len(requests) <= max_requests:
        return requests
    keep = np.sort(np.random.default_rng(seed).choice(len(requests), size=max_requests, replace=False))
    return [requests[i] for i in keep]


def rank_requests(retriever: Any, requests: Sequence[Request], depth: int, *, batch_size: int = 128,
                  accelerator: Any = None, progress: bool = False) -> list[list[str]]:
    """Ranked item ids (length ≤ ``depth``) for every request, computed shard-wise when an accelerator is given."""
    import torch

    depth = min(depth, len(retriever.id_scheme))
    indices = list(range(len(requests)))
    if accelerator is not None and accelerator.num_processes > 1:
        from torch.utils.data import DataLoader

        loader = accelerator.prepare(DataLoader(indices, batch_size=batch_size, shuffle=False))
    else:
        loader = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    rows: list[torch.Tensor] = []
    iterator = loader
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(loader, desc="ranking", leave=False)
    for batch in iterator:
        batch = [int(i) for i in batch]
        reqs = [requests[i] for i in batch]
        exclude = [r.exclude for r in reqs] if any(r.exclude for r in reqs) else None
        out = retriever.retrieve([r.source for r in reqs], depth, exclude=exclude, batch_size=len(reqs))
        positions = torch.full((len(reqs), depth + 1), -1, dtype=torch.long)
        positions[:, 0] = torch.tensor(batch)
        for row, items in enumerate(out.item_ids):
            positions[row, 1 : 1 + len(items)] = torch.tensor([retriever.id_scheme.position(i) for i in items])
        if accelerator is not None and accelerator.num_processes > 1:
            positions = accelerator.gather_for_metrics(positions.to(accelerator.device)).cpu()
        rows.append(positions)
    table = torch.cat(rows) if rows else torch.empty((0, depth + 1), dtype=torch.long)
    ranked: list[list[str]] = [[] for _ in requests]
    items = retriever.id_scheme.item_ids
    for row in table.tolist():
        ranked[row[0]] = [items[p] for p in row[1:] if p >= 0]
    return ranked


def evaluate_requests(retriever: Any, requests: Sequence[Request], *, ks: Sequence[int] = (5, 10, 30), depth: int = 100,
                      batch_size: int = 128, accelerator: Any = None, progress: bool = False) -> dict[str, float]:
    """Mean metrics over ``requests`` (all of one task): Recall/NDCG/HR@ks, MRR and MAP@depth."""
    if not requests:
        raise ValueError("no requests to evaluate")
    ranked = rank_requests(retriever, requests, depth, batch_size=batch_size, accelerator=accelerator, progress=progress)
    metrics = compute_metrics(ranked, [r.relevant for r in requests], ks=tuple(ks), map_k=depth)
    metrics["num_requests"] = float(len(requests))
    return metrics
