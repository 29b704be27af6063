"""The multi-task Accelerate training loop behind ``recipes/train.py``.

One loop serves Gen-S, Gen-R and Gen-R+S: the mixture config decides which tasks' examples are in the training set.
Resumption is exact: the data order is a pure function of (seed, epoch), the loader never draws from the global RNG,
and ``save_state`` stores weights, optimizer, scheduler and RNG states next to a ``trainer_state.json``.
"""

from __future__ import annotations

import json
import gc
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..config import flatten
from ..data.builders import build_examples, mix_tasks
from ..data.schema import TASKS
from ..evaluation.evaluator import Request, evaluate_requests, group_requests, rank_requests, subsample
from ..ids import AtomicIdScheme, ItemIdScheme, load_id_scheme
from ..ids.base import ID_SCHEME_FILE
from ..fileio import atomic_write_text
from ..modeling.retriever import GenerativeRetriever, build_model
from .arguments import TrainConfig, TrainingArguments
from .batching import CACHE_DIR, EpochPermutationSampler, LengthGroupedSampler, PaddingCollator, TokenizedExamples
from .batching import tokenize_examples
from .distributed import average_gradients, broadcast_module

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------
def load_tables(config: TrainConfig):
    """The catalog and interactions the config points to."""
    if config.data.source == "synthetic":
        from ..data.synthetic import generate_synthetic

        return generate_synthetic(config.data.synthetic)
    from ..data.loaders import load_catalog, load_interactions

    catalog = load_catalog(config.data.catalog_path)
    return catalog, load_interactions(config.data.interactions_path, catalog=catalog)


def build_id_scheme(config: TrainConfig, catalog: Any, examples: dict[str, Any], log: Any = print) -> ItemIdScheme:
    """The item-ID scheme: that of the trained retriever in ``model.model_name_or_path`` if it has one (its ID tokens
    are what the model learned), else the one of ``config.ids``: atomic, a saved semantic scheme, or codes learned now."""
    model_dir, path = config.model.model_name_or_path, config.ids.path
    scheme = None
    if model_dir and (Path(model_dir) / ID_SCHEME_FILE).is_file():
        scheme = load_id_scheme(model_dir)
        if path and load_id_scheme(path) != scheme:
            raise ValueError(f"ids.path {path!r} is not the item-ID scheme of the model in {model_dir!r}; "
                             "drop ids.path to reuse the model's scheme")
        log(f"item IDs: reusing the scheme of {model_dir} (ids.name/ids.path are ignored)")
        path = model_dir
    elif config.ids.name == "atomic":
        return AtomicIdScheme(catalog["item_id"])
    if path:
        scheme = scheme if scheme is not None else load_id_scheme(path)
        missing = [i for i in catalog["item_id"] if i not in scheme]
        if missing or len(scheme) != len(catalog):
            raise ValueError(f"the item-ID scheme in {path!r} ({len(scheme)} items) does not cover the "
                             f"catalog ({len(catalog)} items; e.g. missing {missing[:3]})")
        # Positions must match the catalog: the trie, score() columns and the dataset all index items by position.
        if list(scheme.item_ids) != list(catalog["item_id"]):
            raise ValueError(f"the item-ID scheme in {path!r} lists the catalog in another order; "
                             "rebuild it from the same data config")
        return scheme
    from ..ids.quantizers import format_diagnostics
    from ..ids.semantic import build_semantic_ids

    scheme = build_semantic_ids(catalog, examples, config.ids.semantic, progress=True)
    log(f"semantic IDs ({config.ids.semantic.embedding} embeddings, {config.ids.semantic.quantizer}):\n"
        + format_diagnostics(scheme.info["diagnostics"]))
    return scheme


def build_retriever(config: TrainConfig, catalog: Any, examples: dict[str, Any],
                    log: Any = print) -> GenerativeRetriever:
    """Tokenizer (SentencePiece on catalog text + training queries) + ID scheme + model, fresh or pretrained."""
    from ..tokenization import add_id_tokens, build_tokenizer

    scheme = build_id_scheme(config, catalog, examples, log)
    prefixes = ("search:", "recommend:")
    if config.model.model_name_or_path:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.model.model_name_or_path)
        add_id_tokens(tokenizer, list(prefixes) + scheme.new_tokens())
    else:
        texts = [t for t in catalog["title"] if t] + [t for t in catalog["text"] if t]
        texts += [" ".join(c) for c in catalog["categories"] if c]
        # Only training queries: validation/test queries must stay unseen (query-disjoint protocol).
        texts += [q for q in examples["search"]["train"]["query"] if q]
        tokenizer = build_tokenizer(texts, scheme.new_tokens(), task_prefixes=prefixes, config=config.tokenizer)
    model = build_model(config.model, tokenizer)
    titles = dict(zip(catalog["item_id"], catalog["title"]))
    return GenerativeRetriever(model, tokenizer, scheme, max_source_length=config.model.max_source_length,
                               max_history=config.model.max_history, titles=titles)


@dataclass
class Seq2SeqCollator:
    """Formats example rows into model inputs and ID-token targets, padded per batch."""

    retriever: GenerativeRetriever

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        tok = self.retriever.tokenizer
        sources = [self.retriever.format_example(r) for r in rows]
        targets = [self.retriever.format_target(r["target_item"]) for r in rows]
        batch = tok(sources, max_length=self.retriever.max_source_length, truncation=True, padding=True,
                    return_tensors="pt")
        labels = tok(text_target=targets, padding=True, return_tensors="pt")["input_ids"]
        labels[labels == tok.pad_token_id] = -100
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


def default_num_threads() -> int:
    """CPU threads for one process: the cores this process may use, shared among the processes on this machine."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def make_train_loader(train_set: Any, retriever: GenerativeRetriever, args: TrainingArguments,
                      cache_dir: str | Path | None = None, num_processes: int = 1,
                      with_index: bool = False) -> tuple[DataLoader, EpochPermutationSampler]:
    """Pre-tokenised training batches, dynamically padded, length-bucketed when ``args.group_by_length``.

    ``with_index`` adds each batch's ``example_index`` (rows of ``train_set``), which auxiliary heads need.

    Returns the loader and its sampler (call ``sampler.set_epoch`` before each epoch).
    """
    examples = TokenizedExamples(tokenize_examples(train_set, retriever, cache_dir), with_index=with_index)
    if args.group_by_length:
        # Buckets of one global batch: accelerate deals consecutive per-process batches out to the processes, so N
        # processes × batch B then see exactly the examples one process with batch N×B would see.
        sampler = LengthGroupedSampler(examples.lengths, args.batch_size * num_processes, args.seed,
                                       args.length_group_factor)
    else:
        sampler = EpochPermutationSampler(len(examples), args.seed)
    # An explicit generator keeps DataLoader from drawing its base seed from the global RNG, which would make a
    # resumed run's dropout masks differ from an uninterrupted one.
    loader = DataLoader(examples, batch_size=args.batch_size, sampler=sampler,
                        collate_fn=PaddingCollator(retriever.tokenizer.pad_token_id),
                        num_workers=args.dataloader_num_workers, generator=torch.Generator().manual_seed(args.seed))
    return loader, sampler


# ---------------------------------------------------------------------------------------------------------------
# state
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class TrainerState:
    """What besides weights/optimizer/RNG a resumed run needs to continue exactly."""

    global_step: int = 0  # optimizer steps done
    micro_step: int = 0  # batches consumed (global_step × accumulation)
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # consecutive validations without improvement
    stopped_early: bool = False
    log_history: list[dict[str, Any]] = field(default_factory=list)

    def save(self, directory: Path) -> None:
        """Write as JSON (atomically)."""
        atomic_write_text(directory / STATE_FILE, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, directory: Path) -> TrainerState:
        """Read a saved state."""
        return cls(**json.loads((directory / STATE_FILE).read_text(encoding="utf-8")))


def _resolve_checkpoint(arg: str, output_dir: Path) -> Path:
    if arg == "latest":
        checkpoints = _list_checkpoints(output_dir)
        if not checkpoints:
            raise FileNotFoundError(f"resume_from_checkpoint=latest but {output_dir / 'checkpoints'} holds no checkpoint")
        return checkpoints[-1]
    path = Path(arg)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a checkpoint (no {STATE_FILE})")
    return path


def _list_checkpoints(output_dir: Path) -> list[Path]:
    root = output_dir / "checkpoints"
    found = [p for p in root.glob("checkpoint-*") if (p / STATE_FILE).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


# ---------------------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------------------
def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"  # bf16 autocast gave no speed-up on CPU here (STACK-NOTES) and costs accuracy


def _make_accelerator(config: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    args = config.training
    log_with = None
    if args.report_to in ("auto", "tensorboard"):
        try:
            import tensorboard  # noqa: F401

            log_with = "tensorboard"
        except ImportError:
            if args.report_to == "tensorboard":
                raise ImportError("training.report_to=tensorboard but tensorboard is not installed") from None
    # Under torchrun on a machine without GPUs, accelerate only forms a (gloo) process group when told cpu=True;
    # otherwise every process would believe it is the only one and they would overwrite each other's files.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(
        cpu=multi_cpu,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=_mixed_precision(args.mixed_precision),
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=str(Path(args.output_dir) / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=False),
    )


def _validation_requests(retriever: GenerativeRetriever, examples: dict[str, Any], tasks: Sequence[str], split: str,
                         config: TrainConfig, limit: int | None) -> dict[str, list[Request]]:
    out = {}
    for task in tasks:
        reqs = group_requests(examples[task][split], retriever.format_example,
                              exclude_history=config.eval.exclude_history_items)
        out[task] = subsample(reqs, limit, config.training.seed)
    return out


def _evaluate(retriever, requests: dict[str, list[Request]], config: TrainConfig, accelerator, progress=False):
    # generate() lives on the bare model, not on a DDP/FSDP wrapper.
    retriever = retriever.with_model(accelerator.unwrap_model(retriever.model))
    model = retriever.model
    was_training = model.training
    model.eval()
    try:
        metrics = {task: evaluate_requests(retriever, reqs, ks=config.eval.ks, depth=config.eval.depth,
                                           batch_size=config.eval.batch_size, accelerator=accelerator,
                                           progress=progress)
                   for task, reqs in requests.items() if reqs}
    finally:
        model.train(was_training)
    return metrics


def _score(metrics: dict[str, dict[str, float]], name: str) -> float:
    values = [m[name] for m in metrics.values()]
    if not values:
        raise ValueError("no validation metrics: every trained task has an empty validation split")
    return float(np.mean(values))


def train(config: TrainConfig, tables: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Run training + validation + final test evaluation; returns the content of ``metrics.json``.

    ``tables`` = ``(catalog, interactions)`` replaces the data the config points to (the benchmark passes real
    datasets it has already loaded and given simulated queries).
    """
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    args = config.training
    output_dir = Path(args.output_dir)
    # T5 ties lm_head/encoder/decoder embeddings; accelerate warns about it on every save_state, harmlessly.
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    if not torch.cuda.is_available():
        torch.set_num_threads(args.num_threads or default_num_threads())
    accelerator = _make_accelerator(config)
    set_seed(args.seed)
    log = accelerator.print
    started = time.time()

    # ---- data ----
    catalog, interactions = tables if tables is not None else load_tables(config)
    examples = build_examples(catalog, interactions, config.data.split)
    tasks = list(config.mixture.tasks)
    for task in tasks:
        if len(examples[task]["train"]) == 0:
            raise ValueError(f"task {task!r} is in mixture.tasks but the data has no {task} training examples")
    train_set = mix_tasks({t: examples[t]["train"] for t in tasks}, config.mixture)
    stats = {t: {s: len(examples[t][s]) for s in ("train", "validation", "test")} for t in TASKS}
    log(f"catalog: {len(catalog)} items | interactions: {len(interactions)} | training examples (mixed): {len(train_set)}")
    for t in TASKS:
        log(f"  {t:9s} train {stats[t]['train']:>7d}  validation {stats[t]['validation']:>6d}  test {stats[t]['test']:>6d}")

    # ---- model ----
    retriever = build_retriever(config, catalog, examples, log)
    n_params = sum(p.numel() for p in retriever.model.parameters())
    log(f"model: {type(retriever.model).__name__}, {n_params / 1e6:.2f}M parameters, vocabulary {len(retriever.tokenizer)}")
    if config.peft.enabled:
        retriever = _apply_adapter(config, retriever, log)
    aux, train_rows = None, None
    if config.heads:
        from ..modeling.heads.auxiliary import AuxiliaryHeads

        aux = AuxiliaryHeads(config.heads, retriever, catalog, {t: examples[t]["train"] for t in tasks})
        retriever.heads = aux
        train_rows = train_set.to_list()  # the heads build their inputs (histories, earlier searches) from raw rows
        log("auxiliary heads: " + ", ".join(f"{s.name} (weight {s.weight}, "
                                             f"{sum(p.numel() for p in aux.heads[s.name].parameters()) / 1e3:.0f}k "
                                             "parameters)" for s in config.heads))
    # The main process writes the tokenised cache; the others then read it instead of tokenising concurrently.
    with accelerator.main_process_first():
        loader, sampler = make_train_loader(train_set, retriever, args,
                                            output_dir / CACHE_DIR if args.cache_tokenized else None,
                                            num_processes=accelerator.num_processes, with_index=aux is not None)
    trainable = [p for p in retriever.model.parameters() if p.requires_grad]
    if aux is not None:
        trainable += list(aux.heads.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=args.weight_decay,
                                  fused=args.adamw_fused or None)
    batches_per_epoch = math.ceil(len(loader) / accelerator.num_processes) if accelerator.num_processes > 1 else len(loader)
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    total_steps = args.max_steps or steps_per_epoch * args.num_epochs
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=int(args.warmup_ratio * total_steps),
                              num_training_steps=total_steps * accelerator.num_processes)
    model, optimizer, loader, scheduler = accelerator.prepare(retriever.model, optimizer, loader, scheduler)
    retriever.model = model
    head_generator = None
    if aux is not None:
        aux.to(accelerator.device)
        aux.set_model(accelerator.unwrap_model(model))
        broadcast_module(aux.heads)  # DDP wraps only the model: the heads' copies must start equal...
        accelerator.register_for_checkpointing(aux.heads)  # resumed runs restore the heads too
        head_generator = torch.Generator().manual_seed(args.seed)  # negatives of the heads' losses
    eval_every = args.eval_every or steps_per_epoch
    save_every = args.save_every or steps_per_epoch

    valid_requests = _validation_requests(retriever, examples, tasks, "validation", config,
                                          config.eval.max_validation_requests)

    # ---- resume ----
    state = TrainerState()
    if args.resume_from_checkpoint:
        ckpt = _resolve_checkpoint(args.resume_from_checkpoint, output_dir)
        accelerator.load_state(str(ckpt))
        state = TrainerState.load(ckpt)
        log(f"resumed from {ckpt} at step {state.global_step}")
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output_dir / "config.json", json.dumps(asdict(config), indent=2))
    if accelerator.log_with:
        hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flatten(asdict(config)).items()}
        accelerator.init_trackers("genretrieval", config=hparams)

    def write(message: str) -> None:
        if accelerator.is_main_process:
            tqdm.write(message)

    def save_checkpoint() -> None:
        ckpt = output_dir / "checkpoints" / f"checkpoint-{state.global_step}"
        accelerator.save_state(str(ckpt))
        if accelerator.is_main_process:
            state.save(ckpt)
            for old in _list_checkpoints(output_dir)[: -args.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def validate() -> bool:
        """Validate, keep the best model, return True when early stopping says stop."""
        metrics = _evaluate(retriever, valid_requests, config, accelerator)
        score = _score(metrics, config.eval.metric_for_best)
        entry = {"step": state.global_step, f"validation/{config.eval.metric_for_best}": score}
        entry.update({f"validation/{t}/{k}": v for t, m in metrics.items() for k, v in m.items()})
        state.log_history.append(entry)
        accelerator.log(entry, step=state.global_step)
        improved = state.best_metric is None or score > state.best_metric
        if improved:
            state.best_metric, state.best_step, state.bad_evals = score, state.global_step, 0
            if accelerator.is_main_process:
                _save_best(accelerator, retriever, output_dir / "best")
        else:
            state.bad_evals += 1
        accelerator.wait_for_everyone()
        per_task = ", ".join(f"{t} {m[config.eval.metric_for_best]:.4f}" for t, m in metrics.items())
        write(f"step {state.global_step}: validation {config.eval.metric_for_best} = {score:.4f} ({per_task})"
                   f"{' best' if improved else f'; best {state.best_metric:.4f} at step {state.best_step}'}")
        return bool(args.early_stopping_patience) and state.bad_evals >= args.early_stopping_patience

    # ---- loop ----
    model.train()
    pbar = tqdm(total=total_steps, initial=state.global_step, desc="training", disable=not accelerator.is_local_main_process,
                dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 10.0)
    steps_this_run = 0
    # Losses stay on the device until a log line needs them: an .item() per step would stall a GPU every step.
    window_loss = torch.zeros((), device=accelerator.device)
    window_examples, window_seconds, pending_examples = 0, 0.0, 0
    timed_examples, timed_seconds = 0, 0.0  # this run's training steps after speed_warmup_steps (no eval/saving)
    mark = time.perf_counter()  # end of the last training work; validation and checkpoints move it forward
    done = state.stopped_early or state.global_step >= total_steps
    start_epoch = state.micro_step // batches_per_epoch
    for epoch in range(start_epoch, num_epochs):
        if done:
            break
        sampler.set_epoch(epoch)
        skip = state.micro_step - epoch * batches_per_epoch
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip > 0 else loader
        for batch in epoch_loader:
            with accelerator.accumulate(model):
                index = batch.pop("example_index", None)
                loss = model(**batch).loss
                if aux is not None:
                    head_loss, _ = aux([train_rows[i] for i in index.tolist()], head_generator)
                    loss = loss + head_loss
                accelerator.backward(loss)
                if aux is not None and accelerator.sync_gradients and accelerator.num_processes > 1:
                    average_gradients(aux.heads.parameters())  # ...and take the same averaged step
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(trainable if aux is not None else model.parameters(),
                                                args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state.micro_step += 1
            window_loss += loss.detach().float()
            pending_examples += batch["input_ids"].shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            steps_this_run += 1
            now = time.perf_counter()
            window_seconds += now - mark
            window_examples += pending_examples
            if steps_this_run > args.speed_warmup_steps:
                timed_seconds += now - mark
                timed_examples += pending_examples
            pending_examples, mark = 0, now
            pbar.update(1)
            if state.global_step % args.logging_steps == 0 or state.global_step == total_steps:
                if accelerator.num_processes > 1:
                    # Every rank reaches this line at the same step: one collective per log, not per step.
                    window_loss = accelerator.reduce(window_loss, "mean")
                mean_loss = window_loss.item() / max(1, args.logging_steps * args.gradient_accumulation_steps)
                rate = window_examples / max(window_seconds, 1e-9)
                pbar.set_postfix(loss=f"{mean_loss:.3f}", ex_per_s=f"{rate:.0f}", lr=f"{scheduler.get_last_lr()[0]:.1e}")
                accelerator.log({"train/loss": mean_loss, "train/examples_per_s": rate,
                                 "train/lr": scheduler.get_last_lr()[0], "train/epoch": epoch}, step=state.global_step)
                state.log_history.append({"step": state.global_step, "train/loss": mean_loss, "train/examples_per_s": rate})
                window_loss = torch.zeros((), device=accelerator.device)
                window_examples, window_seconds = 0, 0.0
            last = state.global_step >= total_steps
            if state.global_step % eval_every == 0 or last:
                if validate():
                    state.stopped_early = True
                    write(f"early stopping: no improvement in {args.early_stopping_patience} validations")
                mark = time.perf_counter()  # validation is not training time
            if state.global_step % save_every == 0 or last or state.stopped_early:
                save_checkpoint()
                mark = time.perf_counter()
            if last or state.stopped_early:
                done = True
                break
            if args.interrupt_after_steps and steps_this_run >= args.interrupt_after_steps:
                if state.global_step % save_every:
                    save_checkpoint()
                pbar.close()
                log(f"interrupted after {steps_this_run} steps (training.interrupt_after_steps); "
                    f"resume with --training.resume_from_checkpoint latest")
                accelerator.end_training()
                return {"interrupted_at_step": state.global_step}
    pbar.close()
    model.eval()
    train_seconds = time.time() - started

    # ---- final: best model → test ----
    best_dir = output_dir / "best"
    if best_dir.is_dir():
        _restore_best(accelerator.unwrap_model(model), best_dir)
        if aux is not None and (best_dir / "heads.safetensors").is_file():
            from safetensors.torch import load_file

            aux.heads.load_state_dict(load_file(str(best_dir / "heads.safetensors")))
    model = _merge_adapter_before_saving(accelerator, retriever, model, output_dir)
    test_requests = _validation_requests(retriever, examples, tasks, "test", config, None)
    test_metrics = (_evaluate(retriever, test_requests, config, accelerator, progress=accelerator.is_main_process)
                    if config.eval.run_test else {})
    if accelerator.is_main_process:
        # Saved after the test run so the model card and training_config.json describe this exact model.
        _save_retriever(accelerator, retriever, output_dir / "model", training_config=asdict(config),
                        metrics=test_metrics)
    result = {
        "tasks": tasks,
        "test": test_metrics,
        "best_validation": {"metric": config.eval.metric_for_best, "value": state.best_metric, "step": state.best_step},
        "protocol": {"ranking": "full catalog", "split_rec": "leave-one-out (last item → test)",
                     "split_search": "query-disjoint", "history_items_masked": config.eval.exclude_history_items,
                     "depth": config.eval.depth},
        "data": {"source": config.data.source, "items": len(catalog), "interactions": len(interactions),
                 "examples": stats, "mixed_train_examples": len(train_set)},
        "random_ranker_recall@10": min(1.0, 10 / len(catalog)),
        "steps": state.global_step, "stopped_early": state.stopped_early, "log_history": state.log_history,
        "train_seconds_this_run": round(train_seconds, 1), "seed": args.seed,
        # Training steps only (no validation, checkpoints or the first speed_warmup_steps): recipes/bench_training.py.
        "train_examples_per_s": round(timed_examples / timed_seconds, 2) if timed_seconds > 0 else None,
        "train_timed": {"examples": timed_examples, "seconds": round(timed_seconds, 4),
                        "warmup_steps_excluded": args.speed_warmup_steps},
        "environment": _environment(),
    }
    if accelerator.is_main_process:
        atomic_write_text(output_dir / "metrics.json", json.dumps(result, indent=2))
        if test_metrics:
            log(format_metrics_table(test_metrics, config.eval.ks))
            log(f"(random ranker Recall@10 ≈ {result['random_ranker_recall@10']:.4f}; "
                f"history items {'masked' if config.eval.exclude_history_items else 'not masked'})")
        show_examples(retriever.with_model(accelerator.unwrap_model(model)), test_requests, config.eval.num_examples_to_show, log)
        log(f"model saved to {output_dir / 'model'}; metrics in {output_dir / 'metrics.json'}")
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1:
        # Freeing the DDP wrapper while a gloo all-gather is still being torn down can deadlock at exit (gloo's
        # worker thread waits for the GIL the destructor holds): drop it explicitly while every rank is in sync.
        del model
        accelerator.free_memory()
        gc.collect()
    accelerator.end_training()
    return result


def _apply_adapter(config: TrainConfig, retriever: GenerativeRetriever, log: Any) -> GenerativeRetriever:
    from ..modeling.adapters import apply_adapter, count_parameters

    retriever = apply_adapter(retriever, config.peft)
    trainable, total = count_parameters(retriever.model)
    log(f"adapter: {config.peft.method} (r={config.peft.r}) on {config.peft.target_modules}"
        f"{', with trainable ID-token rows' if config.peft.train_new_tokens else ''}: "
        f"{trainable:,} trainable of {total:,} parameters")
    return retriever


def _save_best(accelerator, retriever: GenerativeRetriever, directory: Path) -> None:
    from ..modeling.adapters import is_adapted, save_adapter

    model = accelerator.unwrap_model(retriever.model)
    if is_adapted(model):
        # The frozen base is already on disk (model.model_name_or_path): the adapter alone is the best state.
        save_adapter(retriever.with_model(model), directory)
    else:
        _save_retriever(accelerator, retriever, directory)


def _restore_best(model: torch.nn.Module, best_dir: Path) -> None:
    from safetensors.torch import load_file

    from ..modeling.adapters import is_adapted

    if is_adapted(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(best_dir / "adapter_model.safetensors")))
    else:
        model.load_state_dict(load_file(str(best_dir / "model.safetensors")), strict=False)


def _merge_adapter_before_saving(accelerator, retriever: GenerativeRetriever, model: Any, output_dir: Path) -> Any:
    """With an adapter: save it to ``output_dir/adapter``, then merge it so ``output_dir/model`` is a plain retriever."""
    from ..modeling.adapters import is_adapted, merge_adapter, save_adapter

    unwrapped = accelerator.unwrap_model(model)
    if not is_adapted(unwrapped):
        return model
    if accelerator.is_main_process:
        save_adapter(retriever.with_model(unwrapped), output_dir / "adapter")
    accelerator.wait_for_everyone()
    # Every process merges (deterministically) so the test evaluation runs the same model everywhere.
    retriever.model = unwrapped
    merge_adapter(retriever)
    return retriever.model


def _save_retriever(accelerator, retriever: GenerativeRetriever, directory: Path, **metadata: Any) -> None:
    from transformers.utils import logging as hf_logging

    # One-file tiny models: the "Writing model shards" bar would only break our own progress bar.
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
            retriever.with_model(accelerator.unwrap_model(retriever.model)).save_pretrained(directory, **metadata)
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _environment() -> dict[str, str]:
    import platform

    import accelerate
    import datasets
    import transformers

    from .. import __version__

    return {"genretrieval": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "accelerate": accelerate.__version__, "python": platform.python_version(),
            "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": str(torch.get_num_threads())}


def format_metrics_table(metrics: dict[str, dict[str, float]], ks: Sequence[int]) -> str:
    """A markdown table: one row per task, Recall/NDCG@ks, MRR, MAP."""
    names = [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"]
    names += sorted(k for m in metrics.values() for k in m if k.startswith("map@"))[:1]
    header = "| task | requests | " + " | ".join(names) + " |"
    lines = [header, "|" + "---|" * (len(names) + 2)]
    for task, m in metrics.items():
        lines.append(f"| {task} | {int(m.get('num_requests', 0))} | " + " | ".join(f"{m.get(n, float('nan')):.4f}" for n in names) + " |")
    return "\n".join(lines)


def show_examples(retriever: GenerativeRetriever, requests: dict[str, list[Request]], n: int, log=print) -> None:
    """Print a few test requests with the titles of the items retrieved for them (✓ marks a relevant item)."""
    if n < 1:
        return
    for task, reqs in requests.items():
        for req in reqs[:n]:
            ranked = rank_requests(retriever, [req], 5)[0]
            if task == "search":
                log(f"\n[search] query: {req.query!r}")
            else:
                recent = ", ".join(retriever.title(i) for i in req.history[-3:])
                log(f"\n[recommend] user's last items: {recent}")
            log(f"  expected: {', '.join(retriever.title(i) for i in sorted(req.relevant))}")
            for rank, item in enumerate(ranked, 1):
                log(f"  {rank}. {'✓' if item in req.relevant else ' '} {retriever.title(item)}")
