"""Batched retrieval with a seq2seq model whose outputs are item IDs.

Scores are log-probabilities of the *constrained* distribution (the model's distribution renormalised over the
tokens the trie allows at each step), so one-token and multi-token schemes report comparable numbers and the
atomic fast path equals a one-step beam search.

Sources are formatted model inputs (``"search: ..."``, ``"recommend: <a_1>..."``): the task prefix is part of the
text, so search and recommendation requests mix freely in one batch. Each source is tokenised and encoded once per
batch (``generate`` runs the encoder before expanding to beams); large query sets are consumed lazily,
``batch_size`` at a time (:func:`iter_retrieve`).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessorList

from genretrieval.ids.base import ItemIdScheme

from .logits_process import TrieConstrainedLogitsProcessor
from .trie import ItemTrie, item_token_ids

__all__ = ["RetrievalOutput", "item_token_ids", "iter_retrieve", "retrieve"]


@dataclass
class RetrievalOutput:
    """Per source: retrieved item ids, best first, and their constrained log-probabilities (descending)."""

    item_ids: list[list[str]] = field(default_factory=list)
    scores: list[list[float]] = field(default_factory=list)

    def extend(self, other: RetrievalOutput) -> None:
        """Append ``other``'s rows (e.g. the next batch of a stream)."""
        self.item_ids += other.item_ids
        self.scores += other.scores


def retrieve(
    model: Any,
    tokenizer: Any,
    scheme: ItemIdScheme,
    sources: Iterable[str],
    k: int = 10,
    *,
    num_beams: int | None = None,
    batch_size: int = 64,
    max_source_length: int = 128,
    trie: ItemTrie | None = None,
    exclude: Iterable[Collection[str]] | None = None,
    progress: bool = False,
) -> RetrievalOutput:
    """Top-``k`` distinct catalog items for each formatted source string (e.g. ``"search: red shoes"``).

    One-token schemes score the whole catalog in one decoder step (exact top-k). Longer IDs use trie-constrained beam
    search with ``max(k, num_beams)`` beams (approximate). ``exclude[i]`` lists item ids never to return for source
    ``i`` (e.g. already-seen items); lists can then be shorter than ``k`` if too few items remain. Pass a prebuilt
    ``trie`` to avoid rebuilding it on every call; ``progress`` shows a tqdm bar. See :func:`iter_retrieve` to
    consume results batch by batch.
    """
    out = RetrievalOutput()
    for batch in iter_retrieve(model, tokenizer, scheme, sources, k, num_beams=num_beams, batch_size=batch_size,
                               max_source_length=max_source_length, trie=trie, exclude=exclude, progress=progress):
        out.extend(batch)
    return out


def iter_retrieve(
    model: Any,
    tokenizer: Any,
    scheme: ItemIdScheme,
    sources: Iterable[str],
    k: int = 10,
    *,
    num_beams: int | None = None,
    batch_size: int = 64,
    max_source_length: int = 128,
    trie: ItemTrie | None = None,
    exclude: Iterable[Collection[str]] | None = None,
    progress: bool = False,
) -> Iterator[RetrievalOutput]:
    """:func:`retrieve`, one :class:`RetrievalOutput` per batch of ``batch_size`` sources, read from ``sources`` lazily.

    ``sources`` (and ``exclude``, aligned with it) may be any iterable, e.g. a generator over a file too large to
    hold in memory. The model is in eval mode until the iterator is exhausted or closed.
    """
    if isinstance(sources, str):
        raise ValueError("sources must be a list of strings, got a single string")
    _validate(scheme, k, num_beams, batch_size)
    total = len(sources) if isinstance(sources, Sized) else None
    if exclude is not None and total is not None and isinstance(exclude, Sized) and len(exclude) != total:
        raise ValueError(f"exclude has {len(exclude)} entries but there are {total} sources")
    if total == 0:
        raise ValueError("sources is empty: nothing to retrieve for")
    if trie is None:
        trie = ItemTrie.from_scheme(scheme, tokenizer)
    elif len(trie) != len(scheme) or trie.id_length != scheme.id_length:
        raise ValueError(
            f"trie ({len(trie)} items x {trie.id_length} tokens) does not match the scheme "
            f"({len(scheme)} items x {scheme.id_length} tokens)"
        )
    trie = trie.to(model.device)  # once, not per batch
    processor = TrieConstrainedLogitsProcessor(trie, pad_token_id=model.config.pad_token_id, renormalize=True)
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    bar = tqdm(total=total, unit="query", desc="retrieve", disable=not progress)
    try:
        seen = 0
        for batch, batch_exclude in _batches(sources, exclude, batch_size):
            _check_sources(batch, seen)
            excluded = None if batch_exclude is None else [
                _positions(scheme, items, seen + i) for i, items in enumerate(batch_exclude)
            ]
            with torch.inference_mode():  # entered per batch: the caller's code between batches keeps autograd
                enc = tokenizer(
                    batch, padding=True, truncation=True, max_length=max_source_length, return_tensors="pt"
                ).to(model.device)
                if scheme.id_length == 1:
                    positions, batch_scores = _top_k_atomic(model, enc, trie, k, excluded)
                else:
                    positions, batch_scores = _top_k_beam(model, enc, trie, k, num_beams, excluded, processor)
            seen += len(batch)
            bar.update(len(batch))
            yield RetrievalOutput([[scheme.item_ids[p] for p in row] for row in positions], batch_scores)
        if seen == 0:
            raise ValueError("sources is empty: nothing to retrieve for")
    finally:
        bar.close()
        model.train(was_training)


def _batches(
    sources: Iterable[str], exclude: Iterable[Collection[str]] | None, batch_size: int
) -> Iterator[tuple[list[str], list[Collection[str]] | None]]:
    source_iter = iter(sources)
    exclude_iter = None if exclude is None else iter(exclude)
    consumed = 0
    while True:
        batch = list(itertools.islice(source_iter, batch_size))
        if not batch:
            if exclude_iter is not None and next(exclude_iter, _END) is not _END:
                raise ValueError(f"exclude has more entries than the {consumed} sources")
            return
        batch_exclude = None
        if exclude_iter is not None:
            batch_exclude = list(itertools.islice(exclude_iter, len(batch)))
            if len(batch_exclude) != len(batch):
                raise ValueError(
                    f"exclude has {consumed + len(batch_exclude)} entries but there are more sources "
                    f"(at least {consumed + len(batch)})"
                )
        consumed += len(batch)
        yield batch, batch_exclude


_END = object()


def _top_k_atomic(
    model: Any, enc: Any, trie: ItemTrie, k: int, excluded: list[set[int]] | None
) -> tuple[list[list[int]], list[list[float]]]:
    start = _decoder_start_token_id(model)
    decoder_input_ids = torch.full((enc["input_ids"].shape[0], 1), start, dtype=torch.long, device=model.device)
    logits = model(**enc, decoder_input_ids=decoder_input_ids).logits[:, 0, :]
    item_columns = trie.codes[:, 0].to(logits.device)
    log_probs = torch.log_softmax(logits[:, item_columns].float(), dim=-1)
    if excluded is not None:
        rows = [r for r, items in enumerate(excluded) for _ in items]
        cols = [p for items in excluded for p in items]
        log_probs[rows, cols] = float("-inf")
    top_scores, top_positions = torch.topk(log_probs, k, dim=-1)
    positions, scores = [], []
    for row_pos, row_scores in zip(top_positions.tolist(), top_scores.tolist()):
        keep = [i for i, s in enumerate(row_scores) if s != float("-inf")]  # only excluded items score -inf
        positions.append([row_pos[i] for i in keep])
        scores.append([row_scores[i] for i in keep])
    return positions, scores


def _top_k_beam(
    model: Any,
    enc: Any,
    trie: ItemTrie,
    k: int,
    num_beams: int | None,
    excluded: list[set[int]] | None,
    processor: TrieConstrainedLogitsProcessor | None = None,
) -> tuple[list[list[int]], list[list[float]]]:
    extra = 0 if excluded is None else max(len(items) for items in excluded)
    # More beams than items cannot help and would fill the spare beams with -inf junk.
    beams = min(len(trie), max(k + extra, num_beams or k))
    if processor is None:
        processor = TrieConstrainedLogitsProcessor(trie, pad_token_id=model.config.pad_token_id, renormalize=True)
    # The processor renormalises over the allowed tokens itself: cheaper than a full-vocabulary LogitNormalization.
    processors = LogitsProcessorList([processor])
    search_kwargs: dict[str, Any] = {"num_beams": beams, "num_return_sequences": beams}
    if beams > 1:  # beam-only flags make generate warn when it runs greedy search
        search_kwargs.update(early_stopping=True, length_penalty=0.0)  # 0: scores are plain sums of log-probs
    out = model.generate(
        **enc,
        logits_processor=processors,
        max_new_tokens=trie.id_length + 1,
        do_sample=False,
        eos_token_id=trie.eos_token_id,
        output_scores=True,
        return_dict_in_generate=True,
        **search_kwargs,
    )
    sequences = out.sequences
    if beams > 1:
        seq_scores = out.sequences_scores
    else:  # greedy search reports per-step scores only; ours are already normalised log-probs
        steps = torch.stack(out.scores, dim=1)  # [batch, steps, vocab]
        chosen = sequences[:, 1 : 1 + steps.shape[1]]
        seq_scores = steps.gather(2, chosen.unsqueeze(-1)).squeeze(-1).sum(1)
    ids = sequences[:, 1 : 1 + trie.id_length]
    found = trie.lookup(ids) if ids.shape[1] == trie.id_length else torch.full((len(ids),), -1)
    found, seq_scores = found.view(-1, beams).tolist(), seq_scores.view(-1, beams).tolist()

    positions, scores = [], []
    for row, (row_found, row_scores) in enumerate(zip(found, seq_scores)):
        skip = set() if excluded is None else set(excluded[row])
        row_pos, row_sc = [], []
        for pos, score in zip(row_found, row_scores):
            # Beam order is score order; invalid rows (pos -1) and repeats come from spare beams, not from real IDs.
            if pos < 0 or pos in skip or score == float("-inf"):
                continue
            skip.add(pos)
            row_pos.append(pos)
            row_sc.append(score)
            if len(row_pos) == k:
                break
        positions.append(row_pos)
        scores.append(row_sc)
    return positions, scores


def _decoder_start_token_id(model: Any) -> int:
    for config in (getattr(model, "generation_config", None), model.config):
        start = getattr(config, "decoder_start_token_id", None)
        if start is not None:
            return int(start)
    raise ValueError("the model has no decoder_start_token_id in its config or generation_config")


def _positions(scheme: ItemIdScheme, items: Collection[str], index: int) -> set[int]:
    unknown = [item for item in items if item not in scheme]
    if unknown:
        raise ValueError(f"exclude[{index}] has item(s) not in the scheme's catalog: {unknown[:5]!r}")
    return {scheme.position(item) for item in items}


def _validate(scheme: ItemIdScheme, k: int, num_beams: int | None, batch_size: int) -> None:
    if not 1 <= k <= len(scheme):
        raise ValueError(f"k must be between 1 and the number of items ({len(scheme)}), got {k}")
    if num_beams is not None and num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _check_sources(batch: list[str], offset: int) -> None:
    for i, source in enumerate(batch, start=offset):
        if not isinstance(source, str):
            raise ValueError(f"sources[{i}] must be a string, got {type(source).__name__}")
        if not source.strip():
            raise ValueError(f"sources[{i}] is empty or whitespace-only: {source!r}")
