"""A dense two-tower retriever serving search and recommendation with one item tower.

* Words: a vocabulary of the words (``_common.words``) of the catalog text and the training queries; query words
  outside it are dropped (they could only map to untrained vectors).
* Item tower: ``id_emb[item] + W · mean(word_emb(item text))``. The id table starts at zero, so an item never seen in
  training is represented by its content alone (not by random noise).
* Query tower (search): ``MLP(mean(word_emb(query words)))``; the word table is shared with the item tower, so
  query and item words live in one space (as in JSR).
* History tower (recommend): a GRU over the item-tower vectors of the history (oldest first), last state → linear.
  A GRU rather than a mean because next-item prediction depends on order and recency (the synthetic users drift
  between topics, and so do real ones); the mean is available as ``history_encoder="mean"``.
* One model for both tasks: separate input towers (the inputs differ in kind), one shared item tower. No task
  embedding is needed since the tower already tells the tasks apart.
* Loss: in-batch sampled softmax over cosine similarities / ``temperature``, the batch's targets being the
  candidates; a column holding the same item as the row's own target is masked (it is not a negative), and the
  log-frequency of each candidate is subtracted (logQ correction, Yi et al. RecSys'19) so popular items are not
  over-penalised for appearing as negatives more often.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.schema import TASKS
from ..evaluation.evaluator import Request
from ._common import (
    VALID_METRICS,
    catalog_item_ids,
    catalog_texts,
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
    words,
)
from .base import Retriever, register_baseline

_HISTORY_ENCODERS = ("gru", "mean")


@dataclass
class BiEncoderConfig:
    """Bi-encoder hyper-parameters."""

    embedding_dim: int = 64  # width of word, item and output vectors
    hidden_size: int = 128  # hidden width of the query MLP
    history_encoder: str = "gru"  # "gru" (order-aware) or "mean" of the history's item vectors
    max_history: int = 50  # most recent history items used
    max_text_words: int = 64  # words kept per item text (title + text + categories)
    dropout: float = 0.1  # on the pooled word vectors and the MLP hidden layer
    temperature: float = 0.05  # softmax temperature over cosine similarities (typical range 0.05–0.1)
    logq_correction: bool = True  # subtract log item frequency from in-batch logits (popular-negative bias)
    tasks: tuple[str, ...] = TASKS  # tasks to train; a task without training examples is skipped
    learning_rate: float = 1e-3  # Adam
    weight_decay: float = 0.0  # Adam L2 penalty
    batch_size: int = 256  # examples per step = in-batch candidates
    max_epochs: int = 100  # upper bound; early stopping normally ends far sooner
    patience: int = 5  # validations without improvement before stopping
    eval_every: int = 1  # epochs between validations
    valid_metric: str = "ndcg@10"  # early-stopping metric, averaged over the tasks' validation splits
    score_batch_size: int = 256  # requests per forward pass when validating
    num_threads: int | None = None  # torch threads in fit/score (None = torch's setting; 1 is best on a busy machine)

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "hidden_size", "max_history", "max_text_words", "batch_size", "max_epochs",
                     "patience", "eval_every", "score_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BiEncoderConfig.{name} must be an integer >= 1, got {value!r}")
        if self.history_encoder not in _HISTORY_ENCODERS:
            raise ValueError(f"BiEncoderConfig.history_encoder must be one of {_HISTORY_ENCODERS}, "
                             f"got {self.history_encoder!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"BiEncoderConfig.dropout must be in [0, 1), got {self.dropout!r}")
        check_positive("BiEncoderConfig", temperature=self.temperature, learning_rate=self.learning_rate)
        if self.weight_decay < 0:
            raise ValueError(f"BiEncoderConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        check_none_or_count("BiEncoderConfig", num_threads=self.num_threads)
        self.tasks = tuple(self.tasks)
        if not self.tasks or any(t not in TASKS for t in self.tasks):
            raise ValueError(f"BiEncoderConfig.tasks must be a non-empty subset of {TASKS}, got {self.tasks!r}")
        if self.valid_metric not in VALID_METRICS:
            raise ValueError(f"BiEncoderConfig.valid_metric must be one of {VALID_METRICS}, got {self.valid_metric!r}")


def _pad(rows: Sequence[Sequence[int]], pad: int, width: int | None = None) -> torch.Tensor:
    """Right-pad integer lists to a [len(rows), width] long tensor (width = longest row, at least 1)."""
    width = width if width is not None else max(1, max((len(r) for r in rows), default=1))
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            out[i, : len(row)] = torch.tensor(row[:width], dtype=torch.long)
    return out


class BiEncoderModel(nn.Module):
    """Word table (row 0 = padding), item tower, query tower and history tower."""

    def __init__(self, vocab_size: int, item_words: torch.Tensor, cfg: BiEncoderConfig) -> None:
        super().__init__()
        d = cfg.embedding_dim
        self.register_buffer("item_words", item_words, persistent=False)  # [num_items, T] word ids, 0 = padding
        self.word_emb = nn.Embedding(vocab_size, d, padding_idx=0)
        self.item_id_emb = nn.Embedding(item_words.shape[0], d)
        nn.init.zeros_(self.item_id_emb.weight)  # unseen items = content only
        self.text_proj = nn.Linear(d, d)
        self.query_mlp = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(d, cfg.hidden_size), nn.ReLU(),
                                       nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden_size, d))
        self.history_gru = nn.GRU(d, d, batch_first=True) if cfg.history_encoder == "gru" else None
        self.history_out = nn.Linear(d, d)

    def mean_words(self, ids: torch.Tensor) -> torch.Tensor:
        """Mean word vector of each row of ``ids`` [B, T] (padding ignored; all-padding rows give 0)."""
        mask = (ids > 0).unsqueeze(-1).float()
        return (self.word_emb(ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def items(self, index: torch.Tensor) -> torch.Tensor:
        """Item vectors [len(index), d] for catalog positions ``index``."""
        return self.item_id_emb(index) + self.text_proj(self.mean_words(self.item_words[index]))

    def queries(self, word_ids: torch.Tensor) -> torch.Tensor:
        """Query vectors [B, d] from right-padded word ids [B, T]."""
        return self.query_mlp(self.mean_words(word_ids))

    def histories(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """History vectors [B, d] from right-padded item vectors [B, L, d] and true lengths [B] (0 allowed)."""
        if self.history_gru is None:
            mask = (torch.arange(items.shape[1])[None] < lengths[:, None]).unsqueeze(-1).float()
            pooled = (items * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        else:
            states, _ = self.history_gru(items)
            # Causal: the state at the last real position ignores the padding after it; empty history → position 0.
            pooled = states[torch.arange(len(lengths)), (lengths - 1).clamp(min=0)]
            pooled = pooled * (lengths > 0).unsqueeze(-1).float()
        return self.history_out(pooled)


@register_baseline("biencoder")
class BiEncoder(Retriever):
    """Both tasks. Score = cosine(input tower(request), item tower(item)) / temperature."""

    def __init__(self, config: BiEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else BiEncoderConfig()
        self.model: BiEncoderModel | None = None
        self.vocab: dict[str, int] = {}  # word -> row of the word table (0 = padding)
        self.training_log: list[dict[str, float]] = []  # per epoch: loss and, when validated, the valid metric
        self._index: dict[str, int] = {}

    def fit(self, catalog: Any, train: Mapping[str, Any], validation: Mapping[str, Any] | None = None,
            seed: int = 0) -> BiEncoder:
        """Train both towers on the configured tasks' examples; early-stop on their validation splits if given."""
        cfg = self.config
        tables = {t: task_table(train, t) for t in cfg.tasks}
        tables = {t: tab for t, tab in tables.items() if tab is not None}
        if not tables:
            raise ValueError(f"biencoder: no training examples for any of the tasks {cfg.tasks}")
        self.supported_tasks = tuple(tables)
        self.item_ids = catalog_item_ids(catalog)
        self._index = {item: pos for pos, item in enumerate(self.item_ids)}
        texts = [words(t) for t in catalog_texts(catalog)]
        queries = column(tables["search"], "query") if "search" in tables else []
        self.vocab = {}
        for tokens in [*texts, *(words(q) for q in queries)]:
            for w in tokens:
                self.vocab.setdefault(w, len(self.vocab) + 1)
        item_words = _pad([[self.vocab[w] for w in t[: cfg.max_text_words]] for t in texts], 0)

        examples = self._encode_examples(tables)
        targets = torch.tensor([e[2] for e in examples])
        log_freq = torch.bincount(targets, minlength=len(self.item_ids)).float().clamp(min=1).div(len(targets)).log()
        valid_requests = validation_requests(validation, self.supported_tasks)
        with seeded(seed), torch_threads(cfg.num_threads):
            self.model = BiEncoderModel(len(self.vocab) + 1, item_words, cfg)
            optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
            shuffle = torch.Generator().manual_seed(seed)

            def run_epoch() -> float:
                total, steps = 0.0, 0
                for batch in torch.randperm(len(examples), generator=shuffle).split(cfg.batch_size):
                    loss = self._loss([examples[i] for i in batch.tolist()], log_freq)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    total, steps = total + loss.item(), steps + 1
                return total / steps

            def validate() -> float:
                return ranking_quality(self.score, valid_requests, self.item_ids, cfg.valid_metric, cfg.score_batch_size)

            self.training_log = train_with_early_stopping(
                self.model, run_epoch, validate if valid_requests else None, max_epochs=cfg.max_epochs,
                patience=cfg.patience, eval_every=cfg.eval_every, name="biencoder")
        return self

    def _encode_examples(self, tables: Mapping[str, Any]) -> list[tuple[str, list[int], int]]:
        """``(task, input ids, target position)`` per example: word ids for search, item positions for recommend."""
        out = []
        for task, table in tables.items():
            what = f"train[{task!r}]"
            targets = to_indices(self._index, column(table, "target_item"), f"{what} target_item")
            inputs = column(table, "query") if task == "search" else column(table, "history")
            for source, target in zip(inputs, targets):
                out.append((task, self._input_ids(task, source, what), target))
        return out

    def _input_ids(self, task: str, source: Any, what: str) -> list[int]:
        """Known word ids of a query, or catalog positions of the last ``max_history`` history items."""
        if task == "search":
            return [self.vocab[w] for w in words(source) if w in self.vocab]
        return to_indices(self._index, list(source)[-self.config.max_history :], f"{what} history")

    def _encode(self, tasks: Sequence[str], inputs: Sequence[list[int]], item_vecs: torch.Tensor,
                rows: dict[int, int] | None = None) -> torch.Tensor:
        """Normalised input vectors [B, d]; history items are looked up in ``item_vecs`` (via ``rows`` if given)."""
        assert self.model is not None
        d = self.config.embedding_dim
        out = torch.zeros(len(tasks), d)
        search = [i for i, t in enumerate(tasks) if t == "search"]
        rec = [i for i, t in enumerate(tasks) if t == "recommend"]
        if search:
            out[search] = self.model.queries(_pad([inputs[i] for i in search], 0))
        if rec:
            hist = [[rows[p] if rows is not None else p for p in inputs[i]] for i in rec]
            padded_vecs = torch.cat([item_vecs, torch.zeros(1, d)])  # last row = padding
            index = _pad(hist, len(item_vecs))
            lengths = torch.tensor([len(h) for h in hist])
            out[rec] = self.model.histories(padded_vecs[index], lengths)
        return F.normalize(out, dim=-1)

    def _loss(self, batch: list[tuple[str, list[int], int]], log_freq: torch.Tensor) -> torch.Tensor:
        """In-batch softmax loss: row i's positive is column i; other columns holding the same item are masked."""
        assert self.model is not None
        targets = torch.tensor([t for _, _, t in batch])
        needed = sorted({t for _, _, t in batch} | {p for task, ids, _ in batch if task == "recommend" for p in ids})
        rows = {p: r for r, p in enumerate(needed)}
        item_vecs = self.model.items(torch.tensor(needed))  # only the items this batch touches
        queries = self._encode([task for task, _, _ in batch], [ids for _, ids, _ in batch], item_vecs, rows)
        candidates = F.normalize(item_vecs[torch.tensor([rows[int(t)] for t in targets])], dim=-1)
        logits = queries @ candidates.T / self.config.temperature
        if self.config.logq_correction:
            logits = logits - log_freq[targets][None, :]
        duplicate = (targets[:, None] == targets[None, :]) & ~torch.eye(len(batch), dtype=torch.bool)
        logits = logits.masked_fill(duplicate, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(batch)))

    def score(self, requests: Sequence[Request]) -> torch.Tensor:
        """``[len(requests), num_items]`` float32 cosine / temperature scores."""
        if self.model is None:
            raise RuntimeError("biencoder: call fit() before score()")
        self.check_tasks(requests)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), torch_threads(self.config.num_threads):
                item_vecs = self.model.items(torch.arange(len(self.item_ids)))
                tasks = [r.task for r in requests]
                inputs = [self._input_ids(r.task, r.query if r.task == "search" else r.history, f"request {i}")
                          for i, r in enumerate(requests)]
                queries = self._encode(tasks, inputs, item_vecs)
                return queries @ F.normalize(item_vecs, dim=-1).T / self.config.temperature
        finally:
            self.model.train(was_training)
