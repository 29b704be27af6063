"""Turn catalog + interactions into train/validation/test examples per task, and mix the tasks for training.

Recommend (leave-one-out)
    Each user's ``rec`` interactions are sorted by ``(timestamp, row order)``. The last one is the test target, the
    second-last the validation target and the rest the *train part*. Training examples are every prefix of the train
    part (target = item ``t``, history = up to ``max_history`` items before it; ``t = 0`` is skipped because it has
    no history). Validation: history = train part; test: history = train part + validation item (always the last
    ``max_history`` items, most recent last). Users with fewer than ``min_user_interactions`` rec interactions only
    contribute training examples.

Search (query-disjoint, as in JSR; ``search_split="query"``, the default)
    Distinct normalised queries (lower-cased, whitespace collapsed) are shuffled with the seed and split by fraction,
    so a validation or test query string never occurs in training. Each search interaction becomes one example with
    the original query text, and as history the user's rec items strictly before its timestamp (the last
    ``max_history``; kept for personalised search). Training search examples never touch a user's held-out rec
    items: an example whose target is the user's rec validation/test item is dropped, and training histories stop
    before those items (with queries simulated from rec events, each rec test item would otherwise be a search
    training target of the same user).

Search (per-user chronological, for personalised search; ``search_split="user"``)
    Each user's search interactions are sorted by ``(timestamp, row order)``: the last one is the test example, the
    second-last the validation example, the rest train (users with fewer than ``min_user_interactions`` search
    interactions only feed train). Query strings may recur across splits. Examples and histories are built as above.

Mixing (Penha et al. RecSys'24 §7)
    :func:`mix_tasks` optionally caps the training examples per target item of an *added* task, then resamples each
    task to a weight share, then shuffles.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset, DatasetDict, concatenate_datasets

from .schema import EXAMPLE_FEATURES, TASKS, validate_catalog, validate_interactions

SPLITS = ("train", "validation", "test")
SEARCH_SPLITS = ("query", "user")


@dataclass
class SplitConfig:
    """How interactions become examples and splits."""

    max_history: int = 20  # most recent items kept in a history source (most recent last)
    search_valid_fraction: float = 0.1  # share of distinct search queries held out for validation
    search_test_fraction: float = 0.1  # share of distinct search queries held out for test
    min_user_interactions: int = 3  # fewer rec interactions than this: the user only feeds train (LOO needs 3)
    seed: int = 0  # seed of the query shuffle
    search_split: str = "query"  # "query": query-disjoint (JSR); "user": per user, last search test, 2nd-last valid

    def __post_init__(self) -> None:
        if self.search_split not in SEARCH_SPLITS:
            raise ValueError(f"SplitConfig.search_split must be one of {SEARCH_SPLITS}, got {self.search_split!r}")
        if self.max_history < 1:
            raise ValueError(f"SplitConfig.max_history must be >= 1, got {self.max_history!r}")
        for name in ("search_valid_fraction", "search_test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"SplitConfig.{name} must be in [0, 1), got {value!r}")
        total = self.search_valid_fraction + self.search_test_fraction
        if total >= 1.0:
            raise ValueError(f"SplitConfig.search_valid_fraction + search_test_fraction must be < 1, got {total!r}")
        if self.min_user_interactions < 3:
            raise ValueError(
                f"SplitConfig.min_user_interactions must be >= 3 (train, validation and test items), "
                f"got {self.min_user_interactions!r}"
            )
        if self.seed < 0:
            raise ValueError(f"SplitConfig.seed must be >= 0, got {self.seed!r}")


def normalize_query(query: str) -> str:
    """The form under which two queries count as the same string: lower-cased, whitespace collapsed."""
    return " ".join(query.lower().split())


def build_examples(
    catalog: Dataset, interactions: Dataset, config: SplitConfig | None = None
) -> dict[str, DatasetDict]:
    """Build ``{"search": DatasetDict, "recommend": DatasetDict}`` (train/validation/test, ``EXAMPLE_FEATURES``).

    A scenario absent from ``interactions`` yields empty (typed) splits; use :func:`check_tasks` to require it.
    Raises ``ValueError`` if the interactions produce no example at all.
    """
    cfg = config if config is not None else SplitConfig()
    validate_catalog(catalog)
    validate_interactions(interactions, catalog)
    cols = interactions.select_columns(["user_id", "item_id", "timestamp", "scenario", "query"]).to_dict()
    histories = _rec_histories(cols)
    examples = {
        "recommend": _recommend_examples(histories, cfg),
        "search": _search_examples(cols, histories, cfg),
    }
    if all(len(ds) == 0 for task in examples.values() for ds in task.values()):
        raise ValueError(
            f"the interactions ({len(interactions)} rows) produce no examples: recommend needs users with >= 2 rec "
            f"interactions, search needs scenario='search' rows"
        )
    return examples


def check_tasks(
    examples: dict[str, DatasetDict], tasks: tuple[str, ...] | list[str] = TASKS, splits: tuple[str, ...] = SPLITS
) -> None:
    """Raise ``ValueError`` naming the first requested task/split of ``examples`` that has no examples."""
    for task in tasks:
        if task not in examples:
            raise ValueError(f"task {task!r} is missing from the examples (have {sorted(examples)})")
        for split in splits:
            if split not in examples[task] or len(examples[task][split]) == 0:
                raise ValueError(
                    f"task {task!r} has no {split!r} examples; for search check that the interactions have "
                    f"scenario='search' rows (and enough distinct queries), for recommend that users have >= "
                    f"min_user_interactions rec interactions"
                )


def _empty_examples() -> dict[str, list]:
    return {name: [] for name in EXAMPLE_FEATURES}


def _add(rows: dict[str, list], task: str, user: str, query: str, history: list[str], target: str) -> None:
    rows["task"].append(task)
    rows["user_id"].append(user)
    rows["query"].append(query)
    rows["history"].append(history)
    rows["target_item"].append(target)


def _to_dict(splits: dict[str, dict[str, list]]) -> DatasetDict:
    return DatasetDict({name: Dataset.from_dict(splits[name], features=EXAMPLE_FEATURES) for name in SPLITS})


def _rec_histories(cols: dict[str, list]) -> dict[str, tuple[list[int], list[str]]]:
    """Per user (in order of first appearance): rec timestamps and items, sorted by (timestamp, row order)."""
    events: dict[str, list[tuple[int, int, str]]] = {}
    for row, (user, item, ts, scenario) in enumerate(
        zip(cols["user_id"], cols["item_id"], cols["timestamp"], cols["scenario"])
    ):
        bucket = events.setdefault(user, [])
        if scenario == "rec":
            bucket.append((ts, row, item))
    out = {}
    for user, bucket in events.items():
        bucket.sort()
        out[user] = ([ts for ts, _, _ in bucket], [item for _, _, item in bucket])
    return out


def _recommend_examples(histories: dict[str, tuple[list[int], list[str]]], cfg: SplitConfig) -> DatasetDict:
    """Leave-one-out examples (see the module docstring)."""
    h = cfg.max_history
    splits = {name: _empty_examples() for name in SPLITS}
    for user, (_, items) in histories.items():
        held_out = len(items) >= cfg.min_user_interactions
        train_part = items[:-2] if held_out else items
        for t in range(1, len(train_part)):
            _add(splits["train"], "recommend", user, "", train_part[max(0, t - h) : t], train_part[t])
        if held_out:
            _add(splits["validation"], "recommend", user, "", train_part[-h:], items[-2])
            _add(splits["test"], "recommend", user, "", items[:-1][-h:], items[-1])
    return _to_dict(splits)


def _split_count(fraction: float, n: int) -> int:
    """Queries for a held-out split: the rounded share, but at least one if positive and n allows a train query."""
    k = int(round(fraction * n))
    return 1 if k == 0 and fraction > 0 and n >= 3 else k


def _search_examples(
    cols: dict[str, list], histories: dict[str, tuple[list[int], list[str]]], cfg: SplitConfig
) -> DatasetDict:
    """Query-disjoint or per-user search examples (see the module docstring)."""
    rows = [r for r, scenario in enumerate(cols["scenario"]) if scenario == "search"]
    split_of_row = _user_split(cols, rows, cfg) if cfg.search_split == "user" else _query_split(cols, rows, cfg)

    splits = {name: _empty_examples() for name in SPLITS}
    for r in rows:
        user, query = cols["user_id"][r], cols["query"][r]
        times, items = histories.get(user, ([], []))
        split = split_of_row[r]
        end = bisect_left(times, cols["timestamp"][r])  # strictly earlier rec events
        if split == "train" and len(items) >= cfg.min_user_interactions:
            # Neither the input nor the target of a training example may be one of the user's held-out rec items
            # (validation/test targets): with queries simulated from the rec events themselves, every rec test
            # item would otherwise also be a search training target of the same user.
            if cols["item_id"][r] in items[-2:]:
                continue
            end = min(end, len(items) - 2)
        before = items[:end]
        _add(splits[split], "search", user, query, before[-cfg.max_history :], cols["item_id"][r])
    return _to_dict(splits)


def _query_split(cols: dict[str, list], rows: list[int], cfg: SplitConfig) -> dict[int, str]:
    """Split of each search row such that no normalised query string is in two splits."""
    distinct = sorted({normalize_query(cols["query"][r]) for r in rows})  # sorted: independent of row order
    order = np.random.default_rng(cfg.seed).permutation(len(distinct))
    n_test = _split_count(cfg.search_test_fraction, len(distinct))
    n_valid = _split_count(cfg.search_valid_fraction, len(distinct))
    split_of = {}
    for rank, index in enumerate(order):
        split_of[distinct[index]] = "test" if rank < n_test else "validation" if rank < n_test + n_valid else "train"
    return {r: split_of[normalize_query(cols["query"][r])] for r in rows}


def _user_split(cols: dict[str, list], rows: list[int], cfg: SplitConfig) -> dict[int, str]:
    """Split of each search row: per user by (timestamp, row), last -> test, second-last -> validation."""
    by_user: dict[str, list[tuple[int, int]]] = {}
    for r in rows:
        by_user.setdefault(cols["user_id"][r], []).append((cols["timestamp"][r], r))
    split_of_row = {}
    for events in by_user.values():
        events.sort()
        held_out = len(events) >= cfg.min_user_interactions
        for position, (_, r) in enumerate(events):
            from_end = len(events) - position if held_out else 0  # 0: the user only feeds train
            split_of_row[r] = "test" if from_end == 1 else "validation" if from_end == 2 else "train"
    return split_of_row


@dataclass
class MixtureConfig:
    """How the per-task training sets are combined into one training set."""

    tasks: list[str] = field(default_factory=lambda: list(TASKS))  # tasks to train on, e.g. ["search", "recommend"]
    task_weights: dict[str, float] | None = None  # task -> relative weight; None = natural sizes (concatenation)
    added_task: str | None = None  # the task added to a single-task model (Penha et al. §7), whose items are capped
    added_task_item_cap: int | None = None  # keep at most this many training examples per target item of added_task
    seed: int = 0  # seed of the cap, the resampling and the final shuffle

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("MixtureConfig.tasks must name at least one task, got []")
        for task in self.tasks:
            if task not in TASKS:
                raise ValueError(f"MixtureConfig.tasks: unknown task {task!r}; known tasks: {TASKS}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"MixtureConfig.tasks has duplicates: {self.tasks!r}")
        if self.task_weights is not None:
            self._check_weights(self.task_weights)
        if self.added_task is not None and self.added_task not in self.tasks:
            raise ValueError(f"MixtureConfig.added_task {self.added_task!r} is not one of tasks {self.tasks!r}")
        if self.added_task_item_cap is not None:
            if isinstance(self.added_task_item_cap, bool) or not isinstance(self.added_task_item_cap, int):
                raise ValueError(f"MixtureConfig.added_task_item_cap must be an int, got {self.added_task_item_cap!r}")
            if self.added_task_item_cap < 1:
                raise ValueError(f"MixtureConfig.added_task_item_cap must be >= 1, got {self.added_task_item_cap!r}")
            if self.added_task is None:
                raise ValueError(
                    f"MixtureConfig.added_task_item_cap={self.added_task_item_cap!r} needs added_task (got None)"
                )
        if self.seed < 0:
            raise ValueError(f"MixtureConfig.seed must be >= 0, got {self.seed!r}")

    def _check_weights(self, weights: dict[str, float]) -> None:
        for task, weight in weights.items():
            if task not in TASKS:
                raise ValueError(f"MixtureConfig.task_weights: unknown task {task!r}; known tasks: {TASKS}")
            if task not in self.tasks:
                raise ValueError(f"MixtureConfig.task_weights: task {task!r} is not one of tasks {self.tasks!r}")
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"MixtureConfig.task_weights[{task!r}] must be finite and >= 0, got {weight!r}")
        missing = [t for t in self.tasks if t not in weights]
        if missing:
            raise ValueError(f"MixtureConfig.task_weights has no weight for task(s) {missing}; got {weights!r}")
        if sum(weights.values()) <= 0:
            raise ValueError(f"MixtureConfig.task_weights must not all be zero, got {weights!r}")


def mix_tasks(train_sets: dict[str, Dataset], config: MixtureConfig) -> Dataset:
    """Cap the added task per target item, resample tasks to their weight shares, concatenate and shuffle.

    With weights, the total stays the sum of the (capped) sizes and task ``t`` gets ``round(share_t * total)``
    examples: a random subset when it has enough, otherwise every example ``k`` times plus a random subset for the
    remainder (upsampling that never repeats one example more than once beyond the others).
    """
    missing = [t for t in config.tasks if t not in train_sets]
    if missing:
        raise ValueError(f"mix_tasks: no training set for task(s) {missing}; got {sorted(train_sets)}")
    rng = np.random.default_rng(config.seed)
    sets = {task: train_sets[task] for task in config.tasks}
    if config.added_task_item_cap is not None:
        added = config.added_task
        sets[added] = _cap_per_item(sets[added], config.added_task_item_cap, rng)
    if config.task_weights is not None:
        total = sum(len(ds) for ds in sets.values())
        weight_sum = sum(config.task_weights[t] for t in config.tasks)
        for task in config.tasks:
            size = int(round(config.task_weights[task] / weight_sum * total))
            sets[task] = _resample(sets[task], size, rng, task)
    mixed = concatenate_datasets(list(sets.values()))
    return mixed.select(rng.permutation(len(mixed)))


def _cap_per_item(ds: Dataset, cap: int, rng: np.random.Generator) -> Dataset:
    """Keep at most ``cap`` random examples per ``target_item`` (original order preserved)."""
    by_item: dict[str, list[int]] = {}
    for row, item in enumerate(ds["target_item"]):
        by_item.setdefault(item, []).append(row)
    keep = []
    for rows in by_item.values():
        keep.extend(rows if len(rows) <= cap else rng.choice(rows, size=cap, replace=False).tolist())
    return ds.select(sorted(keep))


def _resample(ds: Dataset, size: int, rng: np.random.Generator, task: str) -> Dataset:
    """``size`` examples of ``ds``: a subset if it is large enough, else whole copies plus a subset."""
    if size == 0:
        return ds.select([])
    if len(ds) == 0:
        raise ValueError(f"mix_tasks: task {task!r} needs {size} examples for its weight but its training set is empty")
    copies, rest = divmod(size, len(ds))
    indices = np.concatenate([np.tile(np.arange(len(ds)), copies), rng.choice(len(ds), size=rest, replace=False)])
    return ds.select(indices)
