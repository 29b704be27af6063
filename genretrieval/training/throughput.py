"""Training throughput: genretrieval's Accelerate loop (``train``) against a stock ``Seq2SeqTrainer``.

Both sides get the same tiny T5 (same init: same seed, same builder), the same pre-tokenised examples (one Arrow
cache file, written once), the same batch size, optimizer (AdamW, fused as Trainer's default), linear schedule with
the same warm-up, number of optimizer steps, seed and CPU thread count. Each side is timed over the same span: from
the end of optimizer step ``warmup_steps`` to the end of the last step (data loading, forward, backward, clipping,
optimizer and scheduler steps, per-step bookkeeping and periodic loss logging; no evaluation and no checkpoints,
which both sides have switched off or kept outside the span). Repeats alternate the order of the sides.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

SIDES = ("ours", "seq2seq_trainer", "ours_no_bucketing")
DESCRIPTIONS = {
    "ours": "genretrieval.training.train (Accelerate loop): pre-tokenised cached examples, length-bucketed batches "
            "(sorted within mega-batches of length_group_factor x batch_size, batch order shuffled per epoch), dynamic "
            "padding per batch, loss kept on device until logging, fused AdamW",
    "seq2seq_trainer": "transformers.Seq2SeqTrainer with default arguments except batch size, lr, weight decay, "
                       "warm-up steps, max_steps, seed, logging_steps (as ours), report_to=none, save_strategy=no, "
                       "eval_strategy=no: random sampler, DataCollatorForSeq2Seq (tokenizer.pad per batch + "
                       "decoder_input_ids from labels), default optim adamw_torch_fused",
    "ours_no_bucketing": "ours with training.group_by_length=false (plain seeded shuffle): isolates the effect of "
                         "length bucketing",
}


@dataclass
class BenchSettings:
    """What is benchmarked; every side uses the same values."""

    output: str = "runs/bench_training/bench_training.json"  # the JSON report
    work_dir: str = "runs/bench_training/work"  # tokenised cache, run directories (deleted between repeats)
    sides: list[str] = field(default_factory=lambda: ["ours", "seq2seq_trainer"])  # any of SIDES
    repeats: int = 3  # runs per side (alternating order); the median is reported
    seed: int = 42
    threads: int | None = None  # torch CPU threads for both; None = $OMP_NUM_THREADS, else all usable cores
    num_items: int = 1000  # synthetic catalog size (SyntheticConfig.num_items)
    num_users: int = 1000  # synthetic users (SyntheticConfig.num_users)
    batch_size: int = 64
    max_steps: int = 100  # optimizer steps per run (batch_size x max_steps examples)
    warmup_steps: int = 5  # steps before the timed span (both sides)
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    lr_warmup_ratio: float = 0.05  # linear LR warm-up share (both: int(ratio x max_steps) steps)
    logging_steps: int = 25  # loss logging interval (both sides)
    d_model: int = 128  # tiny T5: d_model 128, 2+2 layers, ~2M parameters (STACK-NOTES)
    d_ff: int = 512
    num_layers: int = 2
    num_heads: int = 4

    def __post_init__(self) -> None:
        bad = [s for s in self.sides if s not in SIDES]
        if bad or not self.sides:
            raise ValueError(f"sides must be a non-empty subset of {list(SIDES)}, got {self.sides!r}")
        for name in ("repeats", "num_items", "num_users", "batch_size", "max_steps", "logging_steps", "d_model",
                     "d_ff", "num_layers", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads!r}")
        # At least one step before the span: the Trainer side's clock starts at a step's end.
        if not 1 <= self.warmup_steps < self.max_steps:
            raise ValueError(f"warmup_steps must be in [1, max_steps={self.max_steps}), got {self.warmup_steps!r}")


def resolve_threads(threads: int | None) -> int:
    """The thread count both sides use: explicit, else ``$OMP_NUM_THREADS``, else every usable core."""
    if threads:
        return threads
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    from .trainer import default_num_threads

    return default_num_threads()


def train_config(settings: BenchSettings, threads: int, output_dir: Path, group_by_length: bool = True):
    """The ``TrainConfig`` of our side (also used to build the shared data, tokenizer and model)."""
    from ..data.synthetic import SyntheticConfig
    from ..modeling.retriever import ModelConfig
    from .arguments import DataConfig, EvalConfig, TrainConfig, TrainingArguments

    s = settings
    return TrainConfig(
        data=DataConfig(synthetic=SyntheticConfig(num_items=s.num_items, num_users=s.num_users, seed=s.seed)),
        model=ModelConfig(d_model=s.d_model, d_ff=s.d_ff, num_layers=s.num_layers, num_decoder_layers=s.num_layers,
                          num_heads=s.num_heads, d_kv=s.d_model // s.num_heads),
        training=TrainingArguments(
            output_dir=str(output_dir), seed=s.seed, max_steps=s.max_steps, batch_size=s.batch_size,
            learning_rate=s.learning_rate, weight_decay=s.weight_decay, warmup_ratio=s.lr_warmup_ratio,
            lr_scheduler="linear", mixed_precision="no", logging_steps=s.logging_steps, report_to="none",
            num_threads=threads, group_by_length=group_by_length, speed_warmup_steps=s.warmup_steps,
            # One validation + one checkpoint, both after the last step (outside the timed span).
            eval_every=s.max_steps, save_every=s.max_steps, save_total_limit=1, early_stopping_patience=0),
        eval=EvalConfig(max_validation_requests=50, num_examples_to_show=0, depth=30),
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(threads: int) -> dict[str, Any]:
    """Versions, CPU and thread settings the numbers were measured with."""
    import accelerate
    import datasets
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "datasets": datasets.__version__, "python": platform.python_version(), "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(), "torch_threads": threads, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


class _Shared:
    """Data, tokenizer, model recipe and the tokenised training set, built once for every side."""

    def __init__(self, settings: BenchSettings, threads: int, work: Path):
        from accelerate.utils import set_seed

        from ..data.builders import build_examples, mix_tasks
        from .batching import TokenizedExamples, tokenize_examples
        from .trainer import build_retriever, load_tables

        self.config = train_config(settings, threads, work / "ours")
        self.tables = load_tables(self.config)
        examples = build_examples(*self.tables, self.config.data.split)
        self.train_set = mix_tasks({t: examples[t]["train"] for t in self.config.mixture.tasks}, self.config.mixture)
        self.examples = examples
        set_seed(settings.seed)
        retriever = build_retriever(self.config, *self.tables[:1], examples, log=lambda *_: None)
        # Our side reads its cache from output_dir/cache: writing it there now makes it the one tokenisation.
        self.cache_dir = work / "ours" / "cache"
        self.tokenized = tokenize_examples(self.train_set, retriever, self.cache_dir)
        self.lengths = TokenizedExamples(self.tokenized).lengths
        self.num_params = sum(p.numel() for p in retriever.model.parameters())

    def fresh_model(self, seed: int):
        """Tokenizer + model initialised exactly as ``train`` initialises them."""
        from accelerate.utils import set_seed

        from .trainer import build_retriever

        set_seed(seed)
        retriever = build_retriever(self.config, *self.tables[:1], self.examples, log=lambda *_: None)
        return retriever.tokenizer, retriever.model


def _run_ours(shared: _Shared, settings: BenchSettings, threads: int, work: Path, group_by_length: bool) -> dict:
    from .trainer import train

    out = work / "ours"
    for stale in ("checkpoints", "best", "model"):  # a previous repeat's files; the cache stays
        shutil.rmtree(out / stale, ignore_errors=True)
    config = train_config(settings, threads, out, group_by_length)
    caches_before = sorted(p.name for p in shared.cache_dir.glob("*.arrow"))
    result = train(config, tables=shared.tables)
    losses = [e["train/loss"] for e in result["log_history"] if "train/loss" in e]
    timed = result["train_timed"]
    return {"examples": timed["examples"], "seconds": timed["seconds"],
            "examples_per_s": timed["examples"] / timed["seconds"], "last_logged_loss": losses[-1] if losses else None,
            "reused_shared_tokenized_cache": sorted(p.name for p in shared.cache_dir.glob("*.arrow")) == caches_before}


def _run_seq2seq_trainer(shared: _Shared, settings: BenchSettings, threads: int, work: Path) -> dict:
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    s = settings
    tokenizer, model = shared.fresh_model(s.seed)
    torch.set_num_threads(threads)
    out = work / "seq2seq_trainer"
    shutil.rmtree(out, ignore_errors=True)
    stamps: dict[int, float] = {}
    batch_sizes: list[int] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: D102 - a timing hook
            stamps[state.global_step] = time.perf_counter()

    stock = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch_sizes.append(len(features))  # which examples a step saw (the loader prefetches one batch ahead)
        return stock(features)

    args = Seq2SeqTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=s.batch_size, learning_rate=s.learning_rate,
        weight_decay=s.weight_decay, lr_scheduler_type="linear", warmup_steps=int(s.lr_warmup_ratio * s.max_steps),
        max_steps=s.max_steps, seed=s.seed, logging_steps=s.logging_steps, report_to="none", save_strategy="no",
        eval_strategy="no", dataloader_num_workers=0, use_cpu=not torch.cuda.is_available())
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=shared.tokenized, data_collator=collate,
                             processing_class=tokenizer, callbacks=[StepClock()])
    trainer.train()
    seconds = stamps[s.max_steps] - stamps[s.warmup_steps]
    examples = sum(batch_sizes[s.warmup_steps : s.max_steps])
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"examples": examples, "seconds": seconds, "examples_per_s": examples / seconds,
            "last_logged_loss": losses[-1] if losses else None, "optim": str(args.optim)}


def _batches_padding(lengths: np.ndarray, settings: BenchSettings, bucketed: bool) -> dict[str, float]:
    from .batching import EpochPermutationSampler, LengthGroupedSampler, padding_stats

    if bucketed:
        batches = LengthGroupedSampler(lengths, settings.batch_size, settings.seed).batches()
    else:
        order = np.asarray(list(EpochPermutationSampler(len(lengths), settings.seed)))
        batches = [order[i : i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
    return padding_stats(lengths, batches[: settings.max_steps])


def run_benchmark(settings: BenchSettings) -> dict[str, Any]:
    """Run every side ``repeats`` times on the same data and model; write and return the JSON report."""
    threads = resolve_threads(settings.threads)
    torch.set_num_threads(threads)
    work = Path(settings.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    env_start = environment(threads)
    started = time.time()
    shared = _Shared(settings, threads, work)
    runs: dict[str, list[dict]] = {side: [] for side in settings.sides}
    for r in range(settings.repeats):
        # Alternate the order so that drifting background load does not always favour the same side.
        order = settings.sides if r % 2 == 0 else list(reversed(settings.sides))
        for side in order:
            if side == "seq2seq_trainer":
                runs[side].append(_run_seq2seq_trainer(shared, settings, threads, work))
            else:
                runs[side].append(_run_ours(shared, settings, threads, work, group_by_length=(side == "ours")))
            torch.set_num_threads(threads)
    results = {}
    for side, side_runs in runs.items():
        rates = [run["examples_per_s"] for run in side_runs]
        results[side] = {"median_examples_per_s": statistics.median(rates), "examples_per_s": rates,
                         "runs": side_runs, "description": DESCRIPTIONS[side]}
    report: dict[str, Any] = {
        "benchmark": "training throughput (examples/s), one process, sides measured in alternating order",
        "settings": asdict(settings),
        "model": {"type": "T5ForConditionalGeneration", "parameters": shared.num_params},
        "data": {"source": "synthetic", "train_examples": len(shared.train_set),
                 "examples_per_run": settings.batch_size * settings.max_steps,
                 "timed_examples_per_run": settings.batch_size * (settings.max_steps - settings.warmup_steps),
                 "source_tokens_mean": float(shared.lengths.mean()), "source_tokens_max": int(shared.lengths.max()),
                 "padding_random_batches": _batches_padding(shared.lengths, settings, bucketed=False),
                 "padding_bucketed_batches": _batches_padding(shared.lengths, settings, bucketed=True)},
        "results": results,
        "environment": env_start,
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "wall_seconds": round(time.time() - started, 1),
    }
    if "ours" in results and "seq2seq_trainer" in results:
        ratio = results["ours"]["median_examples_per_s"] / results["seq2seq_trainer"]["median_examples_per_s"]
        report["ratio_ours_over_seq2seq_trainer"] = ratio
        report["target"] = {"ratio": 1.2, "met": ratio >= 1.2}
    out = Path(settings.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return report
