"""Helpers shared by the baselines: catalog access, example columns, seeding, validation and early stopping."""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ..evaluation.evaluator import Request, group_requests
from ..evaluation.metrics import compute_metrics

logger = logging.getLogger("genretrieval.baselines")

VALID_METRICS = ("ndcg@10", "recall@10")
_WORD = re.compile(r"[^\W_]+")  # runs of letters/digits; underscores split words (they are separators in ids)


def words(text: str) -> list[str]:
    """Lower-cased letter/digit runs of ``text``: the simple word tokenizer of the neural baselines."""
    return _WORD.findall(text.lower())


def column(table: Any, name: str) -> list:
    """Column ``name`` of a ``datasets.Dataset`` (or a list of row dicts) as a plain list."""
    if isinstance(table, list):
        return [row[name] for row in table]
    if name not in table.column_names:
        raise ValueError(f"table has no column {name!r} (columns: {table.column_names})")
    return list(table[name])


def catalog_item_ids(catalog: Any) -> list[str]:
    """Item ids in catalog order, checking that there is at least one and that they are unique."""
    ids = [str(i) for i in column(catalog, "item_id")]
    if not ids:
        raise ValueError("the catalog is empty: a retriever needs at least one item")
    if len(set(ids)) != len(ids):
        raise ValueError("the catalog has duplicate item ids; run genretrieval.data.validate_catalog on it")
    return ids


def catalog_texts(catalog: Any) -> list[str]:
    """One text per item: title, free text and categories joined (the content every text model sees)."""
    titles, texts, cats = column(catalog, "title"), column(catalog, "text"), column(catalog, "categories")
    return [" ".join([t or "", x or "", *(c or [])]) for t, x, c in zip(titles, texts, cats)]


def task_table(data: Mapping[str, Any] | None, task: str) -> Any | None:
    """``data[task]`` if present and non-empty, else ``None`` (the model then does not serve that task)."""
    if data is None:
        return None
    table = data.get(task)
    if table is None or len(table) == 0:
        return None
    return table


def to_indices(index: Mapping[str, int], ids: Sequence[str], what: str) -> list[int]:
    """Catalog positions of ``ids``; raises naming the first id that is not in the catalog."""
    out = []
    for item in ids:
        pos = index.get(item)
        if pos is None:
            raise ValueError(f"{what}: item {item!r} is not in the catalog the model was fitted on")
        out.append(pos)
    return out


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global RNG seeded, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run a block with ``num_threads`` intra-op threads (``None``: unchanged), restoring the setting afterwards.

    Small models gain nothing from several threads, and on a machine whose cores are busy they can be tens of times
    slower with them (the threads wait on each other), so the neural baselines let callers pin this.
    """
    if num_threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def validation_requests(validation: Mapping[str, Any] | None, tasks: Sequence[str]) -> list[Request]:
    """Requests of the validation examples of ``tasks`` (grouped like the evaluator does)."""
    out: list[Request] = []
    for task in tasks:
        table = task_table(validation, task)
        if table is not None:
            out += group_requests(table, format_fn=lambda r: r["query"] or " ".join(r["history"]))
    return out


def ranking_quality(score_fn: Callable[[Sequence[Request]], torch.Tensor], requests: Sequence[Request],
                    item_ids: Sequence[str], metric: str, batch_size: int = 256) -> float:
    """Mean ``metric`` (``ndcg@10`` or ``recall@10``) of full-catalog rankings, averaged per task then over tasks.

    Averaging per task first keeps a large task from drowning a small one when one model serves both.
    """
    k = int(metric.split("@")[1])
    per_task: dict[str, tuple[list[list[str]], list[set[str]]]] = {}
    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        top = score_fn(batch).topk(min(k, len(item_ids)), dim=1).indices.tolist()
        for req, row in zip(batch, top):
            ranked, relevant = per_task.setdefault(req.task, ([], []))
            ranked.append([item_ids[i] for i in row])
            relevant.append(req.relevant)
    values = [compute_metrics(r, rel, ks=(k,), map_k=k)[metric] for r, rel in per_task.values()]
    return float(sum(values) / len(values))


class EarlyStopping:
    """Keeps the best model state seen so far and says when ``patience`` evaluations brought no improvement."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = float("-inf")
        self.best_epoch = -1
        self.bad_rounds = 0
        self._state: dict[str, torch.Tensor] | None = None

    def update(self, value: float, epoch: int, model: torch.nn.Module) -> bool:
        """Record one evaluation; ``True`` means stop now."""
        if value > self.best:
            self.best, self.best_epoch, self.bad_rounds = value, epoch, 0
            self._state = copy.deepcopy(model.state_dict())
        else:
            self.bad_rounds += 1
        return self.bad_rounds >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        """Load the best state into ``model`` (no-op if nothing was recorded)."""
        if self._state is not None:
            model.load_state_dict(self._state)


def check_none_or_count(owner: str, **values: int | None) -> None:
    """Raise ``ValueError`` naming the first of ``values`` that is neither ``None`` nor an integer >= 1."""
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{owner}.{name} must be None or an integer >= 1, got {value!r}")


def check_positive(owner: str, **values: float) -> None:
    """Raise ``ValueError`` naming the first of ``values`` that is not > 0."""
    for name, value in values.items():
        if isinstance(value, bool) or not value > 0:
            raise ValueError(f"{owner}.{name} must be > 0, got {value!r}")


def train_with_early_stopping(model: torch.nn.Module, run_epoch: Callable[[], float],
                              validate: Callable[[], float] | None, *, max_epochs: int, patience: int,
                              eval_every: int, name: str) -> list[dict[str, float]]:
    """Run up to ``max_epochs`` epochs, validating every ``eval_every``; leave ``model`` at its best state, in eval mode.

    Without ``validate`` every epoch is run and the last state kept. Returns one log entry per epoch
    (``epoch``, ``loss`` and, when validated, ``valid``).
    """
    from tqdm.auto import tqdm

    stopper = EarlyStopping(patience)
    log: list[dict[str, float]] = []
    # a bar per model: standalone baselines train for minutes per epoch on a CPU, silently otherwise
    bar = tqdm(range(1, max_epochs + 1), desc=name, unit="epoch", leave=False)
    for epoch in bar:
        model.train()
        entry = {"epoch": float(epoch), "loss": float(run_epoch())}
        stop = False
        if validate is not None and epoch % eval_every == 0:
            model.eval()
            with torch.no_grad():
                entry["valid"] = validate()
            stop = stopper.update(entry["valid"], epoch, model)
        log.append(entry)
        shown = {k: round(v, 4) for k, v in entry.items() if k != "epoch"}
        bar.set_postfix({**shown, "best_epoch": stopper.best_epoch} if stopper.best_epoch > 0 else shown)
        logger.info("%s epoch %d: %s", name, epoch, shown)
        if stop:
            logger.info("%s: early stop at epoch %d, best epoch %d (%.4f)", name, epoch, stopper.best_epoch, stopper.best)
            break
    bar.close()
    stopper.restore(model)
    model.eval()
    return log
