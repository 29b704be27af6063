"""SASRec (Kang & McAuley, ICDM 2018): a causal self-attention sequential recommender, in plain torch.

Architecture as in the paper: item embedding + learned positional embedding, ``num_blocks`` blocks of causal
multi-head self-attention and a point-wise two-layer ReLU feed-forward net, each wrapped as
``x + Dropout(sublayer(LayerNorm(x)))`` (the paper's pre-LN form, §3.3), a final LayerNorm, and prediction by the dot
product with the *shared* item embedding table. Every position of a training sequence predicts the next item.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..evaluation.evaluator import Request
from ._common import (
    VALID_METRICS,
    catalog_item_ids,
    check_none_or_count,
    check_positive,
    column,
    ranking_quality,
    seeded,
    task_table,
    to_indices,
    torch_threads,
    train_with_early_stopping,
    validation_requests,
)
from .base import Retriever, register_baseline

_LOSSES = ("ce", "bce")
_NEGATIVE_REDRAWS = 10  # rounds of re-drawing a BCE negative that falls inside the user's sequence


@dataclass
class SASRecConfig:
    """SASRec hyper-parameters; defaults follow the paper / RecBole where they agree, else say which."""

    hidden_size: int = 64  # embedding and model width (paper: 50; RecBole: 64)
    num_blocks: int = 2  # self-attention blocks (paper and RecBole: 2)
    num_heads: int = 1  # attention heads (paper: 1; RecBole: 2 — one head was no worse in the paper's ablation)
    max_len: int = 50  # most recent items kept per sequence (paper: 50 for the sparse Amazon sets, 200 for ML-1M)
    dropout: float = 0.2  # on embeddings, attention weights and sub-layer outputs (paper: 0.2 dense, 0.5 sparse data)
    loss: str = "ce"  # "ce" = full softmax over the catalog (RecBole default, much stronger); "bce" = paper's 1 negative
    learning_rate: float = 1e-3  # Adam (paper and RecBole)
    weight_decay: float = 0.0  # Adam L2 penalty (paper: none on top of dropout)
    batch_size: int = 128  # users per step (paper: 128)
    max_epochs: int = 200  # upper bound; early stopping normally ends far sooner (see docs/baselines.md for CPU times)
    patience: int = 10  # validations without improvement before stopping (RecBole's stopping_step)
    eval_every: int = 1  # epochs between validations
    valid_metric: str = "ndcg@10"  # early-stopping metric on validation["recommend"] (full-catalog ranking)
    init_std: float = 0.02  # std of the normal init of embeddings and linear weights (RecBole's initializer_range)
    score_batch_size: int = 256  # requests per forward pass when validating
    num_threads: int | None = None  # torch threads in fit/score (None = torch's setting; 1 is best on a busy machine)

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_blocks", "num_heads", "max_len", "batch_size", "max_epochs", "patience",
                     "eval_every", "score_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SASRecConfig.{name} must be an integer >= 1, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"SASRecConfig.hidden_size ({self.hidden_size!r}) must be divisible by num_heads "
                             f"({self.num_heads!r})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SASRecConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.loss not in _LOSSES:
            raise ValueError(f"SASRecConfig.loss must be one of {_LOSSES}, got {self.loss!r}")
        if self.valid_metric not in VALID_METRICS:
            raise ValueError(f"SASRecConfig.valid_metric must be one of {VALID_METRICS}, got {self.valid_metric!r}")
        check_positive("SASRecConfig", learning_rate=self.learning_rate, init_std=self.init_std)
        if self.weight_decay < 0:
            raise ValueError(f"SASRecConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        check_none_or_count("SASRecConfig", num_threads=self.num_threads)


class _Block(nn.Module):
    """Pre-LN causal self-attention + point-wise feed-forward, each with a residual connection."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.attn_norm, self.ffn_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ffn = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """``x`` [B, L, d]; ``allowed`` [B, 1, L, L] bool (True = query may attend to key)."""
        b, length, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, length, d)))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class SASRecModel(nn.Module):
    """The network: item ids (1-based, 0 = padding) → hidden state per position; scores via the item table."""

    def __init__(self, num_items: int, cfg: SASRecConfig) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(num_items + 1, cfg.hidden_size, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden_size)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(cfg.hidden_size, cfg.num_heads, cfg.dropout) for _ in range(cfg.num_blocks))
        self.norm = nn.LayerNorm(cfg.hidden_size)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=cfg.init_std)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq`` [B, L] left-padded item indices → hidden states [B, L, d]."""
        length = seq.shape[1]
        # Left padding puts the newest item at the last position, so a position embedding means "distance from now".
        x = self.drop(self.item_emb(seq) + self.pos_emb.weight[-length:])
        real = seq > 0
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=seq.device)
        # Padding is never attended to; a padding query attends to itself only, so no softmax row is empty.
        allowed = (causal & (real[:, None, :] | eye))[:, None]
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(x)

    def item_table(self) -> torch.Tensor:
        """Output embeddings of the real items [num_items, d] (shared with the input table)."""
        return self.item_emb.weight[1:]


def _trim(window: torch.Tensor) -> torch.Tensor:
    """Drop leading columns that are padding in every row (positions count from the right, so nothing changes)."""
    real = (window > 0).any(0).nonzero()
    return window[:, int(real[0]) :] if len(real) else window[:, -1:]


def _left_pad(seqs: Sequence[Sequence[int]], length: int) -> torch.Tensor:
    """Last ``length`` entries of each sequence, left-padded with 0, as a [len(seqs), length] long tensor."""
    out = torch.zeros(len(seqs), length, dtype=torch.long)
    for row, seq in enumerate(seqs):
        tail = list(seq)[-length:]
        if tail:
            out[row, length - len(tail) :] = torch.tensor(tail, dtype=torch.long)
    return out


def user_sequences(table: Any) -> dict[str, list[str]]:
    """Each user's training item sequence, rebuilt from their next-item examples (in row order).

    Consecutive examples whose history ends with the sequence built so far extend it by their target, so the whole
    train part is recovered even when ``max_history`` truncated the histories; otherwise the longest
    ``history + [target]`` window of the user wins (the longer-history rule of the brief).
    """
    seqs: dict[str, list[str]] = {}
    for user, history, target in zip(column(table, "user_id"), column(table, "history"), column(table, "target_item")):
        window = [*history, target]
        seq = seqs.get(user)
        if seq is not None and history and seq[-len(history) :] == list(history):
            seq.append(target)
        elif seq is None or len(window) > len(seq):
            seqs[user] = window
    return seqs


@register_baseline("sasrec")
class SASRec(Retriever):
    """Recommend only. Scores = final hidden state of the request's history (last ``max_len`` items) · item table.

    Items never seen in training keep their (random, small) initial embeddings.
    """

    supported_tasks = ("recommend",)

    def __init__(self, config: SASRecConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else SASRecConfig()
        self.model: SASRecModel | None = None
        self.training_log: list[dict[str, float]] = []  # per epoch: loss and, when validated, the valid metric
        self._index: dict[str, int] = {}

    def fit(self, catalog: Any, train: Mapping[str, Any], validation: Mapping[str, Any] | None = None,
            seed: int = 0) -> SASRec:
        """Train on the users' training sequences; early-stop on ``validation["recommend"]`` when given."""
        cfg = self.config
        table = task_table(train, "recommend")
        if table is None:
            raise ValueError("sasrec: needs recommend training examples (train['recommend'] is missing or empty)")
        self.item_ids = catalog_item_ids(catalog)
        self._index = {item: pos for pos, item in enumerate(self.item_ids)}
        # +1: catalog position p is embedding row p + 1 (row 0 is padding).
        seqs = [[p + 1 for p in to_indices(self._index, s, f"train['recommend'] user {u!r}")]
                for u, s in user_sequences(table).items()]
        windows = _left_pad(seqs, cfg.max_len + 1)  # input = [:, :-1], next-item targets = [:, 1:]
        valid_requests = validation_requests(validation, ["recommend"])
        with seeded(seed), torch_threads(cfg.num_threads):
            self.model = SASRecModel(len(self.item_ids), cfg)
            optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
            shuffle = torch.Generator().manual_seed(seed)

            def run_epoch() -> float:
                total, steps = 0.0, 0
                for batch in torch.randperm(len(windows), generator=shuffle).split(cfg.batch_size):
                    loss = self._loss(windows[batch], shuffle)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    total, steps = total + loss.item(), steps + 1
                return total / steps

            def validate() -> float:
                return ranking_quality(self.score, valid_requests, self.item_ids, cfg.valid_metric, cfg.score_batch_size)

            self.training_log = train_with_early_stopping(
                self.model, run_epoch, validate if valid_requests else None, max_epochs=cfg.max_epochs,
                patience=cfg.patience, eval_every=cfg.eval_every, name="sasrec")
        return self

    def _loss(self, window: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Mean next-item loss over every non-padding position of a batch of windows."""
        assert self.model is not None
        window = _trim(window)
        inputs, targets = window[:, :-1], window[:, 1:]
        hidden = self.model(inputs)
        mask = targets > 0
        if self.config.loss == "ce":
            logits = hidden[mask] @ self.model.item_table().T
            return F.cross_entropy(logits, targets[mask] - 1)
        negatives = self._sample_negatives(window, targets.shape, generator)
        pos = (hidden * self.model.item_emb(targets)).sum(-1)[mask]
        neg = (hidden * self.model.item_emb(negatives)).sum(-1)[mask]
        return F.binary_cross_entropy_with_logits(torch.cat([pos, neg]),
                                                  torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]))

    def _sample_negatives(self, window: torch.Tensor, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
        """One uniform negative per position, re-drawn while it is an item of the user's window (as in the paper)."""
        num_items = len(self.item_ids)
        neg = torch.randint(1, num_items + 1, shape, generator=generator)
        for _ in range(_NEGATIVE_REDRAWS):
            clash = (neg[:, :, None] == window[:, None, :]).any(-1)
            if not clash.any():
                break
            neg[clash] = torch.randint(1, num_items + 1, (int(clash.sum()),), generator=generator)
        return neg

    def score(self, requests: Sequence[Request]) -> torch.Tensor:
        """``[len(requests), num_items]`` float32 scores; an empty history gets the model's "no context" state."""
        if self.model is None:
            raise RuntimeError("sasrec: call fit() before score()")
        self.check_tasks(requests)
        if not requests:
            return torch.empty((0, len(self.item_ids)))
        seqs = [[p + 1 for p in to_indices(self._index, r.history, f"request {i} history")]
                for i, r in enumerate(requests)]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), torch_threads(self.config.num_threads):
                last = self.model(_trim(_left_pad(seqs, self.config.max_len)))[:, -1]
                return last @ self.model.item_table().T
        finally:
            self.model.train(was_training)
