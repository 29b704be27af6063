"""The typed configuration tree of ``recipes/train.py`` (one YAML section per dataclass)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..data.builders import MixtureConfig, SplitConfig
from ..data.synthetic import SyntheticConfig
from ..ids.semantic import SemanticIdConfig
from ..modeling.heads.auxiliary import HeadSpec
from ..modeling.retriever import ModelConfig
from ..tokenization import TextTokenizerConfig


@dataclass
class DataConfig:
    """Where the catalog and interactions come from, and how they are split into examples."""

    source: Literal["synthetic", "files"] = "synthetic"  # the embedded generator, or your JSONL/CSV files
    catalog_path: str | None = None  # with source=files: catalog .jsonl/.csv (see docs/data.md)
    interactions_path: str | None = None  # with source=files: interactions .jsonl/.csv
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # knobs of the generator
    split: SplitConfig = field(default_factory=SplitConfig)  # leave-one-out / query-disjoint split settings

    def __post_init__(self) -> None:
        if self.source == "files" and not (self.catalog_path and self.interactions_path):
            raise ValueError("data.source=files needs both data.catalog_path and data.interactions_path")


@dataclass
class IdSchemeConfig:
    """How items become tokens."""

    name: Literal["atomic", "semantic"] = "atomic"  # one token per item, or learned codes (docs/semantic_ids.md)
    path: str | None = None  # semantic: a directory from recipes/build_item_ids.py (None: learn the codes now)
    semantic: SemanticIdConfig = field(default_factory=SemanticIdConfig)  # how codes are learned when path is None

    def __post_init__(self) -> None:
        if self.name not in ("atomic", "semantic"):
            raise ValueError(f"ids.name must be 'atomic' or 'semantic', got {self.name!r}")
        if self.path is not None and self.name != "semantic":
            raise ValueError("ids.path is only used with ids.name=semantic")


@dataclass
class EvalConfig:
    """How validation and test rankings are scored."""

    ks: list[int] = field(default_factory=lambda: [5, 10, 30])  # cut-offs of Recall/NDCG/HR
    depth: int = 100  # items retrieved per request; MRR and MAP are computed over this depth
    exclude_history_items: bool = False  # mask items already in a user's history (rec); reported in metrics.json
    batch_size: int = 128  # requests per retrieval batch
    max_validation_requests: int = 1000  # validation subsample per task (seeded) to keep periodic evals cheap
    metric_for_best: str = "recall@10"  # validation metric (averaged over trained tasks) for early stopping
    num_examples_to_show: int = 3  # example queries/histories printed with retrieved titles at the end
    # Evaluate the best model on the test split after training. The benchmark turns it off: it evaluates every
    # model itself, under its own protocols (a second full-catalog pass would only cost time).
    run_test: bool = True

    def __post_init__(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"eval.ks must be positive cut-offs, got {self.ks!r}")
        if self.depth < max(self.ks):
            raise ValueError(f"eval.depth ({self.depth}) must be at least the largest cut-off ({max(self.ks)})")
        if self.batch_size < 1 or self.max_validation_requests < 1:
            raise ValueError("eval.batch_size and eval.max_validation_requests must be positive")


@dataclass
class TrainingArguments:
    """The optimisation loop."""

    output_dir: str = "runs/default"  # checkpoints, best model, metrics.json, TensorBoard logs
    seed: int = 42  # model init, data order, dropout
    num_epochs: int = 6  # passes over the mixed training set (ignored when max_steps is set); ~1 min each on 2 cores
    max_steps: int | None = None  # optimizer steps in total; overrides num_epochs
    batch_size: int = 64  # examples per device per micro-step
    gradient_accumulation_steps: int = 1  # micro-steps per optimizer step
    learning_rate: float = 2e-3  # small T5s trained from scratch like a high LR with AdamW
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05  # share of steps with linear warm-up
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float = 1.0  # gradient clipping
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto: bf16/fp16 on GPU, fp32 on CPU
    eval_every: int = 0  # optimizer steps between validations; 0 = once per epoch
    early_stopping_patience: int = 3  # validations without improvement before stopping; 0 disables
    save_every: int = 0  # optimizer steps between checkpoints; 0 = once per epoch
    save_total_limit: int = 2  # checkpoints kept (oldest deleted)
    resume_from_checkpoint: str | None = None  # a checkpoint dir, or "latest" (newest in output_dir/checkpoints)
    interrupt_after_steps: int | None = None  # stop this run after N optimizer steps as if killed (tests, time boxes)
    logging_steps: int = 25  # optimizer steps between tracker logs
    report_to: Literal["auto", "tensorboard", "none"] = "auto"  # auto: TensorBoard when installed
    num_threads: int | None = None  # CPU threads per process; None = usable cores / local processes (accelerate launch would set 1)
    dataloader_num_workers: int = 0  # batches come pre-tokenised: workers would only add IPC on CPU
    group_by_length: bool = True  # batches of similar source length (less padding); False = plain seeded shuffle
    length_group_factor: int = 50  # group_by_length sorts within mega-batches of this many batches (as HF's sampler)
    cache_tokenized: bool = True  # keep the tokenised training set in output_dir/cache and reuse it on reruns/resumes
    adamw_fused: bool = True  # fused AdamW kernel (Trainer's default adamw_torch_fused); False = the for-loop kernel
    speed_warmup_steps: int = 2  # first optimizer steps left out of the reported train_examples_per_s (allocation)

    def __post_init__(self) -> None:
        positive = ("num_epochs", "batch_size", "gradient_accumulation_steps", "save_total_limit", "logging_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("max_steps", "interrupt_after_steps", "num_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"training.{name} must be >= 1 or null, got {value!r}")
        if self.length_group_factor < 1:
            raise ValueError(f"training.length_group_factor must be >= 1, got {self.length_group_factor!r}")
        for name in ("eval_every", "save_every", "early_stopping_patience", "dataloader_num_workers", "speed_warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"training.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"training.learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"training.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")


PEFT_METHODS = ("none", "lora", "dora", "loha", "lokr", "ia3")
TOKEN_TRAINING_METHODS = ("lora", "dora")  # PEFT trains selected token rows only alongside LoRA-type adapters


@dataclass
class PeftSettings:
    """Parameter-efficient fine-tuning of a pretrained or trained model (genretrieval/modeling/adapters.py).

    With a method other than ``none`` the base weights stay frozen; only the adapter (and, with
    ``train_new_tokens``, the embedding rows of the item-ID tokens and task prefixes) is trained. The run then saves
    the adapter to ``output_dir/adapter`` and the merged model to ``output_dir/model``.
    """

    method: Literal["none", "lora", "dora", "loha", "lokr", "ia3"] = "none"  # none = train every weight
    r: int = 8  # rank of the low-rank update (lora, dora, loha, lokr; unused by ia3)
    alpha: int = 16  # scaling numerator: the update is multiplied by alpha / r (unused by ia3)
    dropout: float = 0.05  # dropout on the adapter path (lora, dora; rank dropout for loha, lokr; unused by ia3)
    target_modules: list[str] = field(default_factory=lambda: ["q", "v"])  # layer names; T5: q k v o wi wo lm_head
    train_new_tokens: bool = True  # also train the ID-token and task-prefix embedding rows (lora, dora only)

    def __post_init__(self) -> None:
        if self.method not in PEFT_METHODS:
            raise ValueError(f"peft.method must be one of {list(PEFT_METHODS)}, got {self.method!r}")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"peft.r must be an integer >= 1, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int) or self.alpha < 1:
            raise ValueError(f"peft.alpha must be an integer >= 1, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"peft.dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.target_modules, str) or not self.target_modules:
            raise ValueError(f"peft.target_modules must be a non-empty list of layer names, got {self.target_modules!r}")
        bad = [m for m in self.target_modules if not isinstance(m, str) or not m.strip()]
        if bad:
            raise ValueError(f"peft.target_modules: layer names must be non-empty strings, got {bad!r}")
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ValueError(f"peft.target_modules has duplicates: {self.target_modules!r}")
        if self.method != "none" and self.train_new_tokens and self.method not in TOKEN_TRAINING_METHODS:
            raise ValueError(f"peft.train_new_tokens needs peft.method in {list(TOKEN_TRAINING_METHODS)} (PEFT "
                             f"cannot train single token rows next to {self.method}); set peft.train_new_tokens: false")

    @property
    def enabled(self) -> bool:
        """Whether an adapter is trained instead of the whole model."""
        return self.method != "none"


@dataclass
class TrainConfig:
    """Everything ``recipes/train.py`` needs; each field is one YAML section."""

    data: DataConfig = field(default_factory=DataConfig)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)  # tasks: [search], [recommend] or both
    ids: IdSchemeConfig = field(default_factory=IdSchemeConfig)
    tokenizer: TextTokenizerConfig = field(default_factory=TextTokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingArguments = field(default_factory=TrainingArguments)
    eval: EvalConfig = field(default_factory=EvalConfig)
    peft: PeftSettings = field(default_factory=PeftSettings)  # LoRA & co. on model.model_name_or_path
    # Auxiliary JSR / UnifiedSSR / SESRec heads on the shared encoder and item-token rows, e.g.
    # [{name: jsr, weight: 0.1}]: loss = seq2seq + Σ weight × head loss (docs/heads.md).
    heads: list[HeadSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.peft.enabled and not self.model.model_name_or_path:
            raise ValueError(f"peft.method={self.peft.method} fine-tunes an existing model: set model.model_name_or_path "
                             "to a trained retriever directory (e.g. runs/gen_rs/model) or a pretrained T5")
