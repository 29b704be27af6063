"""The joint S&R heads (JSR, UnifiedSSR, SESRec) trained standalone, as baselines on the benchmark's splits.

Each registered head becomes a baseline of the same name: the head gets its own item table and word table
(:class:`~genretrieval.modeling.heads.OwnEmbeddings`; words = ``_common.words`` over the catalog text and the training
queries), is trained with the paper's sampled-negative loss on batches of training examples, early-stopped on the
validation splits, and scores the whole catalog. ``tasks`` trains on one task only ("trained individually" in the
papers' ablations); a head's ``training_stages`` may ask for alternating task batches or per-task fine-tuning
(UnifiedSSR's two-stage schedule).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.schema import TASKS
from ..evaluation.evaluator import Request
from ..evaluation.sampling import sample_request_index
from ..modeling.heads import Head, HeadDataConfig, OwnEmbeddings, build_head, registered_heads
from ._common import (
    VALID_METRICS,
    catalog_texts,
    check_none_or_count,
    check_positive,
    column,
    ranking_quality,
    seeded,
    task_table,
    torch_threads,
    train_with_early_stopping,
    validation_requests,
)
from .base import Retriever, register_baseline


@dataclass
class HeadBaselineConfig:
    """How a head is trained standalone (the head's own hyper-parameters go in ``head_params``)."""

    head_params: dict[str, Any] = field(default_factory=dict)  # fields of the head's config dataclass
    tasks: list[str] = field(default_factory=lambda: list(TASKS))  # train on these tasks (one = "individual")
    embedding_dim: int = 64  # item/word vector width
    data: HeadDataConfig = field(default_factory=HeadDataConfig)  # sequence lengths
    learning_rate: float = 1e-3  # Adam (all three papers use Adam)
    weight_decay: float = 0.0  # Adam L2 penalty
    batch_size: int = 256  # examples per step
    max_epochs: int = 30  # upper bound; early stopping normally ends sooner
    patience: int = 3  # validations without improvement before stopping
    valid_metric: str = "ndcg@10"  # early-stopping metric, averaged over the tasks' validation splits
    score_batch_size: int = 128  # requests per scoring pass
    # Validate on a seeded sample of this many requests per task (None = all): a head that scores every candidate
    # with its own attention (SESRec) needs ~20 min per full validation pass on Beauty's 22k users x 12k items.
    max_valid_requests: int | None = None
    num_threads: int | None = None  # torch threads in fit/score (None = torch's setting)

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = HeadDataConfig(**self.data)
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ValueError(f"HeadBaselineConfig.tasks must be a non-empty subset of {list(TASKS)}, got {self.tasks}")
        for name in ("embedding_dim", "batch_size", "max_epochs", "patience", "score_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HeadBaselineConfig.{name} must be an integer >= 1, got {value!r}")
        check_positive("HeadBaselineConfig", learning_rate=self.learning_rate)
        if self.valid_metric not in VALID_METRICS:
            raise ValueError(f"HeadBaselineConfig.valid_metric must be one of {VALID_METRICS}, got {self.valid_metric!r}")
        check_none_or_count("HeadBaselineConfig", num_threads=self.num_threads,
                            max_valid_requests=self.max_valid_requests)


class HeadBaseline(Retriever):
    """A registered head trained standalone. Subclasses are generated per head name (see the bottom of the file)."""

    head_name = ""

    def __init__(self, config: HeadBaselineConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else HeadBaselineConfig()
        self.heads: dict[str, Head] = {}  # task -> trained head (one shared object unless fine-tuned per task)
        self.embeddings: dict[str, OwnEmbeddings] = {}
        self.builder: Any = None  # HeadBatchBuilder, set by fit
        self.training_log: list[dict[str, float]] = []

    @property
    def supported_tasks(self) -> tuple[str, ...]:  # type: ignore[override]
        """The tasks it was configured (and, after fit, trained) for."""
        return tuple(self.heads) if self.heads else tuple(self.config.tasks)

    def fit(self, catalog: Any, train: Mapping[str, Any], validation: Mapping[str, Any] | None = None,
            seed: int = 0) -> HeadBaseline:
        """Train on ``train[task]`` for the configured tasks; early-stop on their validation requests."""
        from ..modeling.heads.data import HeadBatchBuilder, word_ids, word_vocabulary

        cfg = self.config
        tables = {t: task_table(train, t) for t in cfg.tasks}
        tasks = [t for t, table in tables.items() if table is not None]
        if not tasks:
            raise ValueError(f"{self.name}: no training examples for tasks {cfg.tasks}")
        queries = column(tables["search"], "query") if "search" in tasks else []
        vocab = word_vocabulary(list(catalog_texts(catalog)) + list(queries))
        self.builder = HeadBatchBuilder(catalog, {t: tables[t] for t in tasks}, word_ids(vocab), cfg.data)
        self.item_ids = list(self.builder.item_ids)
        rows = {t: tables[t].to_list() if hasattr(tables[t], "to_list") else list(tables[t]) for t in tasks}
        with seeded(seed), torch_threads(cfg.num_threads):
            emb = OwnEmbeddings(len(self.item_ids), len(vocab) + 1, cfg.embedding_dim, self.builder.item_text_ids)
            head = build_head(self.head_name, cfg.embedding_dim, len(self.builder.user_index) + 1,
                              vocab_size=len(vocab) + 1, **cfg.head_params)
            generator = torch.Generator().manual_seed(seed)
            stages = head.training_stages(cfg.max_epochs)
            self.heads = {t: head for t in tasks}
            self.embeddings = {t: emb for t in tasks}
            for epochs, mode in stages:
                if mode == "per-task" and len(tasks) > 1:
                    shared_head, shared_emb = head, emb
                    for task in tasks:
                        self.heads[task] = copy.deepcopy(shared_head)
                        self.embeddings[task] = copy.deepcopy(shared_emb)
                        self._train_stage([task], rows, validation, epochs, "joint", generator, only=task)
                else:
                    self._train_stage(tasks, rows, validation, epochs, mode, generator)
        return self

    def _train_stage(self, tasks: list[str], rows: Mapping[str, list[dict]], validation: Mapping[str, Any] | None,
                     epochs: int, mode: str, generator: torch.Generator, only: str | None = None) -> None:
        """Train the head(s) of ``tasks`` for up to ``epochs`` epochs with early stopping on their validation sets."""
        from tqdm.auto import tqdm

        cfg = self.config
        assert self.builder is not None
        head, emb = self.heads[tasks[0]], self.embeddings[tasks[0]]
        module = torch.nn.ModuleDict({"head": head, "emb": emb})
        optimizer = torch.optim.Adam(module.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        label = f"{self.name}{'/' + only if only else ''}"
        valid_requests = []
        for task in tasks:  # sampled per task: ranking_quality averages the tasks, each must stay represented
            per_task = validation_requests(validation, [task])
            valid_requests += [per_task[i] for i in sample_request_index(len(per_task), cfg.max_valid_requests)]

        def batches() -> list[list[dict]]:
            per_task = {t: [rows[t][i] for i in torch.randperm(len(rows[t]), generator=generator).tolist()]
                        for t in tasks}
            if mode == "alternate":  # one batch of each task in turn (UnifiedSSR's joint pre-training)
                chunks = {t: [r[i:i + cfg.batch_size] for i in range(0, len(r), cfg.batch_size)] for t, r in per_task.items()}
                out: list[list[dict]] = []
                for i in range(max(len(c) for c in chunks.values())):
                    out += [chunks[t][i] for t in tasks if i < len(chunks[t])]
                return out
            union = [row for t in tasks for row in per_task[t]]
            order = torch.randperm(len(union), generator=generator).tolist()
            union = [union[i] for i in order]
            return [union[i:i + cfg.batch_size] for i in range(0, len(union), cfg.batch_size)]

        def run_epoch() -> float:
            total, steps = torch.zeros(()), 0
            # a batch bar too: one epoch of a sequence head takes minutes on a CPU
            for chunk in tqdm(batches(), desc=f"{label} ({mode})", unit="batch", leave=False):
                batch = self.builder.from_examples(chunk, head.config.num_negatives, generator)
                out = head(batch, emb)
                optimizer.zero_grad()
                out.loss.backward()
                optimizer.step()
                total, steps = total + out.loss.detach(), steps + 1
            return float(total / max(steps, 1))

        def validate() -> float:
            return ranking_quality(lambda reqs: self._score_with(head, emb, reqs), valid_requests, self.item_ids,
                                   cfg.valid_metric, cfg.score_batch_size)

        self.training_log += [dict(entry, stage_tasks=float(len(tasks))) for entry in train_with_early_stopping(
            module, run_epoch, validate if valid_requests else None, max_epochs=epochs, patience=cfg.patience,
            eval_every=1, name=label)]

    def _score_with(self, head: Head, emb: OwnEmbeddings, requests: Sequence[Request]) -> torch.Tensor:
        """Full-catalog scores of ``requests`` by one head."""
        assert self.builder is not None
        was_training = head.training
        head.eval()
        emb.eval()
        try:
            with torch.no_grad():
                batch = self.builder.from_requests(requests)
                return head.score(batch, emb, torch.arange(len(self.item_ids))).float()
        finally:
            head.train(was_training)
            emb.train(was_training)

    def score(self, requests: Sequence[Request]) -> torch.Tensor:
        """``[len(requests), num_items]`` scores; each request goes to the head trained for its task."""
        if not self.heads:
            raise RuntimeError(f"{self.name}: call fit() before score()")
        self.check_tasks(requests)
        out = torch.empty(len(requests), len(self.item_ids))
        with torch_threads(self.config.num_threads):
            for task in set(r.task for r in requests):
                rows = [i for i, r in enumerate(requests) if r.task == task]
                for start in range(0, len(rows), self.config.score_batch_size):
                    part = rows[start:start + self.config.score_batch_size]
                    out[part] = self._score_with(self.heads[task], self.embeddings[task], [requests[i] for i in part])
        return out


def register_head_baselines() -> None:
    """Register a baseline per registered head (idempotent): ``jsr``, ``unified-ssr``, ``sesrec``, ..."""
    from .base import _REGISTRY

    for name in registered_heads():
        if name not in _REGISTRY:
            cls = type(f"HeadBaseline_{name.replace('-', '_')}", (HeadBaseline,), {"head_name": name})
            register_baseline(name)(cls)
