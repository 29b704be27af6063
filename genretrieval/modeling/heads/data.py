"""From canonical example tables (and evaluation requests) to :class:`~genretrieval.modeling.heads.base.HeadBatch`.

The heads need more context than one example row carries: the user's earlier searches (SESRec's search sequence,
UnifiedSSR's query branch). Example rows have no timestamps, so earlier searches are found by position in the
user's recommendation sequence: a search example's ``history`` holds the rec items strictly before it, so it happened
after rec item ``history[-1]``; a rec example with target at position ``k`` may see the searches placed before ``k``.
Only *training* search examples ever enter a search history, so validation/test targets never leak into inputs.

Text becomes term ids through a ``text_to_ids`` callable: a word vocabulary built on the catalog and the training
queries for standalone heads (:func:`word_vocabulary`), the T5 tokenizer in auxiliary mode. Id 0 is padding in both.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ...baselines._common import catalog_item_ids, catalog_texts, column, words
from ...evaluation.evaluator import Request
from .base import HeadBatch, HeadDataConfig


def word_vocabulary(texts: Sequence[str], min_count: int = 1) -> dict[str, int]:
    """Word -> id (from 1; 0 is padding) over ``texts``, in first-seen order, keeping words seen ``min_count`` times."""
    counts: dict[str, int] = {}
    for text in texts:
        for word in words(text):
            counts[word] = counts.get(word, 0) + 1
    vocab: dict[str, int] = {}
    for word, count in counts.items():
        if count >= min_count:
            vocab[word] = len(vocab) + 1
    return vocab


def word_ids(vocab: Mapping[str, int]) -> Callable[[str], list[int]]:
    """``text -> [ids]`` over ``vocab``; unknown words are dropped (they carry no trained vector)."""

    def to_ids(text: str) -> list[int]:
        """Ids of the known words of ``text``."""
        return [vocab[w] for w in words(text) if w in vocab]

    return to_ids


def _pad(rows: Sequence[Sequence[int]], length: int, value: int, left: bool) -> torch.LongTensor:
    """``[len(rows), length]``: each row truncated to its last (left) or first (right) ``length`` entries, padded."""
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, row in enumerate(rows):
        row = list(row[-length:]) if left else list(row[:length])
        if row:
            if left:
                out[i, length - len(row):] = torch.tensor(row, dtype=torch.long)
            else:
                out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


class HeadBatchBuilder:
    """Turns example rows or :class:`Request` objects into :class:`HeadBatch` tensors for one catalog."""

    def __init__(self, catalog: Any, train: Mapping[str, Any], text_to_ids: Callable[[str], list[int]],
                 config: HeadDataConfig | None = None):
        self.config = config if config is not None else HeadDataConfig()
        self.text_to_ids = text_to_ids
        self.item_ids = catalog_item_ids(catalog)
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        self.item_text_ids = _pad([text_to_ids(t) for t in catalog_texts(catalog)], self.config.max_item_text_len,
                                  0, left=False)
        users: dict[str, int] = {}
        for task in ("recommend", "search"):
            table = train.get(task) if train else None
            if table is not None and len(table):
                for user in column(table, "user_id"):
                    users.setdefault(str(user), len(users) + 1)
        self.user_index = users  # 0 is the unknown user
        self._positions: dict[str, dict[str, int]] = {}  # user -> item -> position in the user's rec sequence
        rec = train.get("recommend") if train else None
        if rec is not None and len(rec):
            # Rec examples come per user in chronological order (one per target), so the j-th example of a user
            # predicts sequence position j + len(first history); histories are capped, counts are not.
            first_len: dict[str, int] = {}
            seen: dict[str, int] = {}
            for user, history, target in zip(column(rec, "user_id"), column(rec, "history"), column(rec, "target_item")):
                user = str(user)
                j = seen.get(user, 0)
                seen[user] = j + 1
                start = first_len.setdefault(user, len(history))
                positions = self._positions.setdefault(user, {})
                if j == 0:
                    for p, item in enumerate(history):
                        positions.setdefault(item, p)
                positions.setdefault(target, start + j)
        self._searches: dict[str, list[tuple[float, int, list[int], int]]] = {}
        search = train.get("search") if train else None
        if search is not None and len(search):
            for n, (user, query, history, target) in enumerate(zip(column(search, "user_id"), column(search, "query"),
                                                                   column(search, "history"), column(search, "target_item"))):
                if target not in self.index:
                    raise ValueError(f"train['search'] row {n}: target_item {target!r} is not in the catalog")
                time = self._time_after(str(user), list(history))
                self._searches.setdefault(str(user), []).append((time, n, self.text_to_ids(query), self.index[target]))
            for events in self._searches.values():
                events.sort(key=lambda e: (e[0], e[1]))

    # ---- time positions ----------------------------------------------------------------------------------------
    def _time_after(self, user: str, history: Sequence[str]) -> float:
        """Position of an event that happened after the rec items ``history`` (just after its last one)."""
        if not history:
            return -0.5
        positions = self._positions.get(user, {})
        last = positions.get(history[-1])
        return (last if last is not None else len(history) - 1) + 0.5

    def _earlier_searches(self, user: str, time: float | None) -> list[tuple[float, int, list[int], int]]:
        """The user's training searches strictly before ``time`` (all of them when ``time`` is None)."""
        events = self._searches.get(user, [])
        if time is None:
            return events[-self.config.max_searches:]
        end = bisect_left([e[0] for e in events], time)
        return events[:end][-self.config.max_searches:]

    # ---- batches -----------------------------------------------------------------------------------------------
    def _batch(self, is_search: list[bool], users: list[str], histories: list[Sequence[str]], queries: list[str],
               searches: list[list[tuple[float, int, list[int], int]]], targets: list[int],
               negatives: torch.LongTensor) -> HeadBatch:
        cfg = self.config
        hist = [[self.index[i] for i in h if i in self.index] for h in histories]
        search_items = [[e[3] for e in s] for s in searches]
        search_queries = torch.zeros(len(users), cfg.max_searches, cfg.max_query_len, dtype=torch.long)
        for row, s in enumerate(searches):
            s = s[-cfg.max_searches:]
            if s:
                search_queries[row, cfg.max_searches - len(s):] = _pad([e[2] for e in s], cfg.max_query_len, 0, False)
        query = _pad([self.text_to_ids(q) if flag else [] for q, flag in zip(queries, is_search)],
                     cfg.max_query_len, 0, left=False)
        return HeadBatch(
            is_search=torch.tensor(is_search, dtype=torch.bool),
            users=torch.tensor([self.user_index.get(u, 0) for u in users], dtype=torch.long),
            history=_pad(hist, cfg.max_history, -1, left=True),
            query=query,
            search_items=_pad(search_items, cfg.max_searches, -1, left=True),
            search_queries=search_queries,
            target=torch.tensor(targets, dtype=torch.long),
            negatives=negatives,
        )

    def from_examples(self, rows: Sequence[Mapping[str, Any]], num_negatives: int,
                      generator: torch.Generator | None = None) -> HeadBatch:
        """Training batch from example rows (``task, user_id, query, history, target_item``) + uniform negatives.

        Negatives are drawn uniformly from the catalog minus the target (a shift by 1..n-1 modulo n), as JSR and
        SESRec sample them.
        """
        targets, searches = [], []
        for n, row in enumerate(rows):
            if row["target_item"] not in self.index:
                raise ValueError(f"example {n}: target_item {row['target_item']!r} is not in the catalog")
            targets.append(self.index[row["target_item"]])
            user = str(row["user_id"])
            if row["task"] == "search":
                time = self._time_after(user, list(row["history"]))
            else:
                pos = self._positions.get(user, {}).get(row["target_item"])
                time = float(pos) if pos is not None else None
            searches.append(self._earlier_searches(user, time))
        target = torch.tensor(targets, dtype=torch.long)
        num_items = len(self.item_ids)
        if num_items < 2:
            raise ValueError("negative sampling needs at least 2 catalog items")
        shift = torch.randint(1, num_items, (len(rows), num_negatives), generator=generator)
        negatives = (target.unsqueeze(1) + shift) % num_items
        return self._batch([r["task"] == "search" for r in rows], [str(r["user_id"]) for r in rows],
                           [list(r["history"]) for r in rows], [r["query"] for r in rows], searches, targets,
                           negatives)

    def from_requests(self, requests: Sequence[Request]) -> HeadBatch:
        """Inference batch from evaluation requests (target -1, no negatives).

        Search requests are grouped per query across users by the evaluator, so they carry no user: the head sees
        the query alone (no user, no earlier searches), like the generative model's ``search: <query>`` input.
        """
        searches = [[] if r.task == "search" else self._earlier_searches(r.user_id, None) for r in requests]
        return self._batch([r.task == "search" for r in requests],
                           ["" if r.task == "search" else r.user_id for r in requests],
                           [[] if r.task == "search" else r.history for r in requests], [r.query for r in requests],
                           searches, [-1] * len(requests), torch.zeros(len(requests), 0, dtype=torch.long))
