"""The two benchmark protocols, computed from a :class:`~genretrieval.baselines.base.Retriever`'s catalog scores.

- ``full``: rank the whole catalog, keep the top ``depth`` and compute Recall/NDCG/HR@k, MRR and MAP@depth against
  every relevant item (the same numbers as :func:`~genretrieval.evaluation.metrics.compute_metrics`).
- ``sampled``: the SESRec/UnifiedSSR protocol. Each (request, relevant item) pair is one *case*; the positive is ranked
  among ``num_negatives`` items the user never interacted with, and HR@k, NDCG@k and MRR are reported.

Every model is measured by the same code from the same ``[batch, num_items]`` score tensors, and the per-request (or
per-case) values are kept so that two models can be compared with a paired test
(:mod:`genretrieval.evaluation.significance`). See ``docs/evaluation.md`` for the definitions and the tie rules.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .evaluator import Request
from .metrics import hr_at_k, map_at_k, mrr, ndcg_at_k, recall_at_k

__all__ = ["EvalResult", "ProtocolConfig", "evaluate_retriever", "negative_sample", "rank_from_scores",
           "sampled_candidates"]

PROTOCOLS = ("full", "sampled")


@dataclass(frozen=True)
class ProtocolConfig:
    """How to turn catalog scores into metrics.

    ``ks``/``depth`` are used by ``full``; ``num_negatives``/``sampled_ks`` by ``sampled``. ``seed`` fixes the sampled
    negatives. ``exclude_history`` masks each request's ``exclude`` items (its history) before ranking.
    """

    name: str = "full"
    ks: tuple[int, ...] = (5, 10, 30)
    depth: int = 100
    num_negatives: int = 99
    exclude_history: bool = False
    seed: int = 0
    sampled_ks: tuple[int, ...] = (1, 5, 10)

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise ValueError(f"ProtocolConfig.name must be one of {PROTOCOLS}, got {self.name!r}")
        for attr in ("ks", "sampled_ks"):
            value = getattr(self, attr)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
                raise ValueError(f"ProtocolConfig.{attr} must be a non-empty sequence of integers, got {value!r}")
            for k in value:
                if not _is_int(k) or k < 1:
                    raise ValueError(f"ProtocolConfig.{attr} must hold integers >= 1, got {k!r} in {value!r}")
            # Frozen: a list passed by a YAML loader becomes a hashable, immutable tuple.
            object.__setattr__(self, attr, tuple(int(k) for k in value))
        for attr in ("depth", "num_negatives"):
            value = getattr(self, attr)
            if not _is_int(value) or value < 1:
                raise ValueError(f"ProtocolConfig.{attr} must be an integer >= 1, got {value!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"ProtocolConfig.seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.exclude_history, bool):
            raise ValueError(f"ProtocolConfig.exclude_history must be a bool, got {self.exclude_history!r}")
        # Only the active protocol's cut-offs are checked, so one config type serves both without dummy values.
        if self.name == "full" and max(self.ks) > self.depth:
            raise ValueError(f"ProtocolConfig.ks {self.ks} has k={max(self.ks)} > depth={self.depth}: "
                             f"metrics@k beyond the ranked depth would silently equal metrics@depth")
        if self.name == "sampled" and max(self.sampled_ks) > self.num_negatives + 1:
            raise ValueError(f"ProtocolConfig.sampled_ks {self.sampled_ks} has k={max(self.sampled_ks)} > "
                             f"1 + num_negatives = {self.num_negatives + 1} candidates (HR@k would always be 1)")


@dataclass
class EvalResult:
    """Mean metrics plus the per-request values behind them (aligned across models for paired tests).

    For ``sampled``, ``per_request`` holds one value per *case* (request × relevant item); ``request_index[i]`` says
    which request case ``i`` came from (for ``full`` it is ``arange(num_requests)``).
    """

    metrics: dict[str, float]
    per_request: dict[str, np.ndarray]
    num_requests: int
    num_cases: int
    request_index: np.ndarray
    config: ProtocolConfig = field(default_factory=ProtocolConfig)


def rank_from_scores(scores: torch.Tensor, depth: int) -> torch.LongTensor:
    """Catalog indices of the ``depth`` best items per row, best first; ``-1`` where the score is ``-inf``.

    Ties are broken by the lower catalog index, deterministically (``torch.topk`` alone does not specify which tied
    items it returns). ``depth`` larger than the catalog is clamped. NaN scores are rejected.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be a 2-D [requests, items] tensor, got shape {tuple(scores.shape)}")
    if not _is_int(depth) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    if not scores.is_floating_point():
        scores = scores.float()
    n, num_items = scores.shape
    depth = min(int(depth), num_items)
    if n == 0:
        return torch.empty((0, depth), dtype=torch.long, device=scores.device)
    nan_rows = torch.isnan(scores).any(1)
    if bool(nan_rows.any()):
        first = int(nan_rows.nonzero()[0, 0])
        raise ValueError(f"scores contain NaN (first in row {first}); use -inf to exclude items")
    # topk(depth + 1) tells which rows have a tie straddling the cut-off; only those need the (full-width) rule that
    # keeps the lowest catalog indices among the tied items, since torch.topk's choice among ties is unspecified.
    extra = min(depth + 1, num_items)
    values, chosen = scores.topk(extra, dim=1)
    boundary = values[:, depth - 1]
    if extra > depth:
        straddles = (values[:, -1] == boundary) & (boundary > float("-inf"))
    else:  # the whole catalog is returned: nothing is cut off
        straddles = torch.zeros_like(boundary, dtype=torch.bool)
    chosen = chosen[:, :depth].clone()
    rows = straddles.nonzero()[:, 0]
    if len(rows):
        sub = scores if len(rows) == n else scores[rows]
        threshold = boundary[rows].unsqueeze(1)
        # One integer key whose top `depth` is: every item above the cut-off (key 1; there are fewer than depth),
        # then the tied items with the lowest catalog indices (key -index), never the rest. In-place masked fills
        # are several times faster than nested torch.where on large catalogs.
        dtype = torch.int32 if num_items < 2**31 - 1 else torch.int64
        key = (-torch.arange(num_items, dtype=dtype, device=scores.device)).expand(len(rows), num_items).clone()
        key.masked_fill_(sub != threshold, -num_items - 1)
        key.masked_fill_(sub > threshold, 1)
        chosen[rows] = key.topk(depth, dim=1).indices
    # Ascending index, then a stable descending sort by score: equal scores stay in ascending index order.
    chosen = chosen.sort(dim=1).values
    order = torch.sort(scores.gather(1, chosen), dim=1, descending=True, stable=True)
    ranked = chosen.gather(1, order.indices)
    return ranked.masked_fill(order.values == float("-inf"), -1)


def evaluate_retriever(retriever: Any, requests: Sequence[Request], config: ProtocolConfig, *,
                       interacted: Mapping[str, set[str]] | None = None, batch_size: int = 256,
                       progress: bool | str = False) -> EvalResult:
    """Score ``requests`` batch by batch with ``retriever.score`` and evaluate them under ``config``.

    ``interacted`` maps a user id to every item the user interacted with (all splits); under ``sampled`` those items,
    the request's relevant, ``exclude`` and ``history`` items are never drawn as negatives. Score tensors are only
    ever ``[batch_size, num_items]``. ``progress`` shows a bar per batch; a string is the bar's label.
    """
    return evaluate_protocols(retriever, requests, [config], interacted=interacted, batch_size=batch_size,
                              progress=progress)[0]


def evaluate_protocols(retriever: Any, requests: Sequence[Request], configs: Sequence[ProtocolConfig], *,
                       interacted: Mapping[str, set[str]] | None = None, batch_size: int = 256,
                       progress: bool | str = False) -> list[EvalResult]:
    """:func:`evaluate_retriever` under several protocols at once, one result per config in order.

    Each batch is scored once and every protocol reads the same scores, so a model whose ``score`` is expensive
    (exact multi-token scoring) pays for it once instead of once per protocol.
    """
    configs = list(configs)
    if not configs:
        raise ValueError("configs is empty: pass at least one ProtocolConfig")
    for config in configs:
        if not isinstance(config, ProtocolConfig):
            raise TypeError(f"config must be a ProtocolConfig, got {type(config).__name__}")
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if len(requests) == 0:
        raise ValueError("no requests to evaluate")
    item_ids = list(getattr(retriever, "item_ids", None) or [])
    if not item_ids:
        raise ValueError(f"{type(retriever).__name__} has no item_ids: fit it before evaluating")
    position = {item: i for i, item in enumerate(item_ids)}
    if len(position) != len(item_ids):
        raise ValueError(f"{type(retriever).__name__}.item_ids contains duplicates "
                         f"({len(item_ids) - len(position)} repeated ids)")
    check_tasks = getattr(retriever, "check_tasks", None)
    if callable(check_tasks):
        check_tasks(requests)

    starts = range(0, len(requests), batch_size)
    if progress:
        from tqdm.auto import tqdm

        label = progress if isinstance(progress, str) else "eval"
        names = "+".join(c.name for c in configs)
        starts = tqdm(starts, desc=f"{label} ({names})", leave=False, unit="batch")
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in configs]
    for start in starts:
        batch = list(requests[start : start + batch_size])
        raw = _batch_scores(retriever, batch, len(item_ids))
        masked = None  # computed once per batch, only if some protocol masks the history
        for part, config in zip(parts, configs):
            scores = raw
            if config.exclude_history:
                masked = _mask_excluded(raw, batch, position) if masked is None else masked
                scores = masked
            if config.name == "full":
                part.append(_full_batch(scores, batch, start, position, config))
            else:
                part.append(_sampled_batch(scores, batch, start, position, config, interacted))
    return [_finish(config, part, len(requests)) for config, part in zip(configs, parts)]


def _finish(config: ProtocolConfig, parts: list[dict[str, np.ndarray]], num_requests: int) -> EvalResult:
    """Per-request and mean metrics of one protocol from its per-batch parts."""
    request_index = np.concatenate([p["_request_index"] for p in parts])
    if config.name == "full":
        hits = np.concatenate([p["hits"] for p in parts])
        n_rel = np.concatenate([p["n_rel"] for p in parts])
        per_request: dict[str, np.ndarray] = {}
        for k in config.ks:
            per_request[f"recall@{k}"] = recall_at_k(hits, n_rel, k)
            per_request[f"ndcg@{k}"] = ndcg_at_k(hits, n_rel, k)
            per_request[f"hr@{k}"] = hr_at_k(hits, k)
        per_request["mrr"] = mrr(hits)
        per_request[f"map@{config.depth}"] = map_at_k(hits, n_rel, config.depth)
    else:
        ranks = np.concatenate([p["rank"] for p in parts])
        # The positive's rank as a one-hot hits row: the same metric functions serve both protocols.
        width = config.num_negatives + 1
        hits = np.zeros((len(ranks), width), dtype=bool)
        hits[np.arange(len(ranks)), ranks - 1] = True
        n_rel = np.ones(len(ranks), dtype=np.int64)
        per_request = {}
        for k in config.sampled_ks:
            per_request[f"hr@{k}"] = hr_at_k(hits, k)
            per_request[f"ndcg@{k}"] = ndcg_at_k(hits, n_rel, k)
        per_request["mrr"] = mrr(hits)
    metrics = {name: float(values.mean()) for name, values in per_request.items()}
    return EvalResult(metrics, per_request, num_requests, len(request_index), request_index, config)


def negative_sample(request: Request, num_items: int, num_negatives: int, forbidden: np.ndarray, seed: int,
                    target: str) -> np.ndarray:
    """``num_negatives`` distinct catalog indices in ``[0, num_items)`` avoiding ``forbidden``, drawn uniformly.

    The generator is seeded from ``seed`` and a stable hash of (task, user, query, history, target), so the same case
    gets the same negatives in every model (whatever its input format), call, process and batch layout.
    ``forbidden`` must be sorted and unique.
    """
    allowed = num_items - len(forbidden)
    if allowed < num_negatives:
        raise ValueError(f"request for user {request.user_id!r} (target {target!r}) has only {allowed} catalog items "
                         f"it never interacted with, fewer than num_negatives={num_negatives}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _stable_key(request, target)]))
    draws = rng.choice(allowed, size=num_negatives, replace=False)
    # Map the i-th allowed item to its catalog index: skip every forbidden index at or before it.
    return draws + np.searchsorted(forbidden - np.arange(len(forbidden)), draws, side="right")


def _batch_scores(retriever: Any, batch: list[Request], num_items: int) -> torch.Tensor:
    scores = retriever.score(batch)
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{type(retriever).__name__}.score must return a torch.Tensor, got {type(scores).__name__}")
    if tuple(scores.shape) != (len(batch), num_items):
        raise ValueError(f"{type(retriever).__name__}.score returned shape {tuple(scores.shape)} for {len(batch)} "
                         f"requests; expected ({len(batch)}, {num_items}) in item_ids order")
    scores = scores.detach()
    return scores if scores.is_floating_point() else scores.float()


def _mask_excluded(scores: torch.Tensor, batch: list[Request], position: dict[str, int]) -> torch.Tensor:
    """A copy of ``scores`` with each request's ``exclude`` items at -inf."""
    rows, cols = [], []
    for row, request in enumerate(batch):
        hidden = [position[i] for i in request.exclude if i in position]
        rows += [row] * len(hidden)
        cols += hidden
    if not cols:
        return scores
    scores = scores.clone()  # the retriever may return a cached tensor, and the unmasked scores may serve another protocol
    scores[torch.tensor(rows, device=scores.device), torch.tensor(cols, device=scores.device)] = float("-inf")
    return scores


def _full_batch(scores: torch.Tensor, batch: list[Request], start: int, position: dict[str, int],
                config: ProtocolConfig) -> dict[str, np.ndarray]:
    for row, r in enumerate(batch):
        if not r.relevant:
            raise ValueError(f"request {start + row} ({r.source!r}) has no relevant items")
    ranked = rank_from_scores(scores, config.depth).cpu()
    num_items = scores.shape[1]
    # Hits by set membership of (row, catalog index) keys; relevant items absent from the catalog still count in
    # n_rel (they can never be retrieved), as compute_metrics would count them.
    rel_keys = [row * num_items + position[i] for row, r in enumerate(batch) for i in r.relevant if i in position]
    keys = torch.arange(len(batch)).unsqueeze(1) * num_items + ranked
    hits = torch.isin(keys, torch.tensor(rel_keys, dtype=torch.long)) & (ranked >= 0)
    n_rel = np.array([len(r.relevant) for r in batch], dtype=np.int64)
    if hits.shape[1] < config.depth:  # a catalog smaller than depth: pad so every batch has the same width
        hits = torch.nn.functional.pad(hits, (0, config.depth - hits.shape[1]))
    request_index = np.arange(start, start + len(batch), dtype=np.int64)
    return {"hits": hits.numpy(), "n_rel": n_rel, "_request_index": request_index}


def sampled_candidates(requests: Sequence[Request], item_ids: Sequence[str], num_negatives: int = 99, seed: int = 0,
                       interacted: Mapping[str, set[str]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The sampled protocol's cases: ``(request_index [cases], candidates [cases, 1 + num_negatives])``.

    ``candidates`` are catalog indices, negatives first and the positive last; a request with several relevant items
    gives one case per relevant item (in sorted id order). This is exactly what :func:`evaluate_retriever` ranks.
    """
    position = {item: i for i, item in enumerate(item_ids)}
    return _sampled_candidates(requests, position, num_negatives, seed, interacted, 0)


def _sampled_candidates(requests: Sequence[Request], position: dict[str, int], num_negatives: int, seed: int,
                        interacted: Mapping[str, set[str]] | None, start: int) -> tuple[np.ndarray, np.ndarray]:
    candidates, request_index = [], []
    for row, request in enumerate(requests):
        if not request.relevant:
            raise ValueError(f"request {start + row} ({request.source!r}) has no relevant items")
        seen = set(request.relevant) | set(request.exclude) | set(request.history)
        if interacted is not None:
            seen |= set(interacted.get(request.user_id, ()))
        forbidden = np.unique(np.array([position[i] for i in seen if i in position], dtype=np.int64))
        # sorted(): set iteration order depends on the salted str hash, and the case order must be reproducible.
        for target in sorted(request.relevant):
            if target not in position:
                raise ValueError(f"request {start + row} ({request.source!r}): relevant item {target!r} is not in "
                                 f"the retriever's catalog, so it cannot be ranked under the sampled protocol")
            negatives = negative_sample(request, len(position), num_negatives, forbidden, seed, target)
            candidates.append(np.append(negatives, position[target]))
            request_index.append(start + row)
    if not candidates:
        return np.zeros(0, dtype=np.int64), np.zeros((0, num_negatives + 1), dtype=np.int64)
    return np.array(request_index, dtype=np.int64), np.stack(candidates).astype(np.int64)


def _sampled_batch(scores: torch.Tensor, batch: list[Request], start: int, position: dict[str, int],
                   config: ProtocolConfig, interacted: Mapping[str, set[str]] | None) -> dict[str, np.ndarray]:
    request_index, candidates = _sampled_candidates(batch, position, config.num_negatives, config.seed, interacted,
                                                    start)
    if len(candidates) == 0:
        return {"rank": np.zeros(0, dtype=np.int64), "_request_index": request_index}
    rows = torch.from_numpy(request_index - start).to(scores.device).unsqueeze(1)
    cand = torch.from_numpy(candidates).to(scores.device)
    width = cand.shape[1]
    # The positive is the last column: rank_from_scores breaks ties by lower index, so a tied positive ranks below
    # every negative it ties with (the pessimistic convention).
    order = rank_from_scores(scores[rows, cand], width)
    is_pos = order == width - 1
    # Not found only when the positive scores -inf: it then ranks last among all candidates.
    rank = torch.where(is_pos.any(1), is_pos.to(torch.int64).argmax(1) + 1, torch.full_like(order[:, 0], width))
    return {"rank": rank.cpu().numpy(), "_request_index": request_index}


def _stable_key(request: Request, target: str) -> int:
    # The request's content, not its formatted `source`: models that format inputs differently (atomic vs semantic
    # ids in the history, task prefixes) must still draw the same negatives. hashlib, not hash(): Python salts str
    # hashes per process, which would change the negatives from run to run.
    text = "\x1f".join((request.task, request.user_id, request.query, "\x1e".join(request.history), target))
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
