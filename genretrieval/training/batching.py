"""Fast batches for the training loop: pre-tokenised (and cached) examples, length bucketing, dynamic padding.

The per-step cost of a tiny T5 on CPU is dominated by padding and by Python work around the model, so the loop
tokenises the mixed training set once (``datasets.map`` into an Arrow cache file keyed by a fingerprint of the data
and the tokenizer), keeps the token ids as flat arrays, and pads each batch only to its own longest row. With
``group_by_length`` batches are drawn from length-sorted mega-batches so that short search queries and long
recommendation histories rarely share (and pad to) one batch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

CACHE_DIR = "cache"  # under output_dir: tokenised training sets, one Arrow file per fingerprint


# ---------------------------------------------------------------------------------------------------------------
# pre-tokenisation
# ---------------------------------------------------------------------------------------------------------------
def tokenization_fingerprint(dataset: Any, retriever: Any) -> str:
    """A hash of everything the token ids depend on: the rows, the tokenizer and the input/target formatting."""
    from datasets.fingerprint import Hasher

    tok = retriever.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    # The serialised fast tokenizer covers vocabulary, normaliser and pre-tokeniser; a slow one falls back to its vocab.
    if backend is not None:
        tokenizer_state = json.loads(backend.to_str())
        # Transient call state: the last call's truncation/padding settings would change the hash between calls.
        tokenizer_state.pop("truncation", None)
        tokenizer_state.pop("padding", None)
    else:
        tokenizer_state = sorted(tok.get_vocab().items())
    scheme = retriever.id_scheme
    targets = [retriever.format_target(i) for i in scheme.item_ids]
    parts = [getattr(dataset, "_fingerprint", None), len(dataset), tokenizer_state, retriever.max_source_length,
             retriever.max_history, retriever.history_items_kept, type(scheme).__name__, targets]
    return Hasher.hash(parts)[:16]


class _Tokenize:
    """The ``datasets.map`` function: rows → source ids (truncated), label ids (with eos) and source length."""

    def __init__(self, retriever: Any):
        self.retriever = retriever

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        r = self.retriever
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        sources = [r.format_example(row) for row in rows]
        targets = [r.format_target(row["target_item"]) for row in rows]
        src = r.tokenizer(sources, max_length=r.max_source_length, truncation=True)["input_ids"]
        tgt = r.tokenizer(text_target=targets)["input_ids"]
        return {"input_ids": src, "labels": tgt, "length": [len(s) for s in src]}


def tokenize_examples(dataset: Any, retriever: Any, cache_dir: str | Path | None = None,
                      batch_size: int = 1000) -> Any:
    """Tokenise an examples table once: a ``datasets.Dataset`` with ``input_ids``, ``labels`` and ``length``.

    With ``cache_dir`` the result is written to ``cache_dir/tokenized-<fingerprint>.arrow`` and reused by any later
    run (or the other side of a benchmark) on the same rows with the same tokenizer.
    """
    fingerprint = tokenization_fingerprint(dataset, retriever)
    kwargs: dict[str, Any] = {}
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        kwargs["cache_file_name"] = str(Path(cache_dir) / f"tokenized-{fingerprint}.arrow")
    return dataset.map(_Tokenize(retriever), batched=True, batch_size=batch_size,
                       remove_columns=dataset.column_names, new_fingerprint=fingerprint, load_from_cache_file=True,
                       desc="tokenising the training set", **kwargs)


class TokenizedExamples(TorchDataset):
    """Token ids of a tokenised table as flat int64 arrays + offsets (compact; a batch is gathered without Arrow)."""

    def __init__(self, tokenized: Any, with_index: bool = False):
        self.with_index = with_index  # also yield each row's index (auxiliary heads look the raw example up)
        if tokenized._indices is not None:  # a select()ed view: materialise the order the rows are read in
            tokenized = tokenized.flatten_indices()
        table = tokenized.data.table
        self.src, self.src_offsets = _flat(table.column("input_ids"))
        self.tgt, self.tgt_offsets = _flat(table.column("labels"))
        self.lengths = np.diff(self.src_offsets)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> tuple:
        """Source and label ids of one example (and its index with ``with_index``)."""
        item = (self.src[self.src_offsets[index] : self.src_offsets[index + 1]],
                self.tgt[self.tgt_offsets[index] : self.tgt_offsets[index + 1]])
        return item + (index,) if self.with_index else item

    def __getitems__(self, indices: Sequence[int]) -> list[tuple]:
        """A batch of examples (DataLoader calls this once per batch instead of once per row)."""
        return [self[i] for i in indices]


def _flat(column: Any) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.to_numpy().astype(np.int64)
    # A sliced ListArray keeps the parent's values: rebase so offsets index ``values`` from 0.
    values = values[offsets[0] : offsets[-1]]
    return values, offsets - offsets[0]


class PaddingCollator:
    """Pads a batch of ``(source ids, label ids)`` to its own longest row (right padding, labels padded with -100),
    producing the same tensors the tokenizer would with ``padding=True``. Rows of ``(source, labels, index)`` also
    give ``example_index`` (the training loop pops it before the forward pass)."""

    def __init__(self, pad_token_id: int, label_pad_id: int = -100):
        self.pad_token_id = pad_token_id
        self.label_pad_id = label_pad_id

    def __call__(self, rows: list[tuple]) -> dict[str, torch.Tensor]:
        """Padded ``input_ids``, ``attention_mask``, ``labels`` (and ``example_index``) of a batch."""
        src_len = max(len(r[0]) for r in rows)
        tgt_len = max(len(r[1]) for r in rows)
        input_ids = np.full((len(rows), src_len), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), src_len), dtype=np.int64)
        labels = np.full((len(rows), tgt_len), self.label_pad_id, dtype=np.int64)
        for i, (s, t, *_) in enumerate(rows):
            input_ids[i, : len(s)] = s
            attention_mask[i, : len(s)] = 1
            labels[i, : len(t)] = t
        batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask),
                 "labels": torch.from_numpy(labels)}
        if len(rows[0]) == 3:
            batch["example_index"] = torch.tensor([r[2] for r in rows], dtype=torch.long)
        return batch


# ---------------------------------------------------------------------------------------------------------------
# samplers
# ---------------------------------------------------------------------------------------------------------------
class EpochPermutationSampler(Sampler[int]):
    """Shuffles with a permutation that depends only on (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, num_examples: int, seed: int):
        self.num_examples = num_examples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.num_examples).tolist())

    def __len__(self) -> int:
        return self.num_examples


class LengthGroupedSampler(EpochPermutationSampler):
    """A random order in which every run of ``batch_size`` indices has similar lengths.

    Per epoch (seeded by (seed, epoch), like :class:`EpochPermutationSampler`): shuffle, cut into mega-batches of
    ``mega_batch_factor × batch_size``, sort each by length (longest first), cut into batches, then shuffle the
    order of the full batches (a partial last batch stays last, so the DataLoader's own batching lines up with these
    batches). Every index appears exactly once per epoch; only which examples share a batch changes.
    """

    def __init__(self, lengths: Sequence[int] | np.ndarray, batch_size: int, seed: int, mega_batch_factor: int = 50):
        if batch_size < 1:
            raise ValueError(f"LengthGroupedSampler: batch_size must be >= 1, got {batch_size!r}")
        if mega_batch_factor < 1:
            raise ValueError(f"LengthGroupedSampler: mega_batch_factor must be >= 1, got {mega_batch_factor!r}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.ndim != 1:
            raise ValueError(f"LengthGroupedSampler: lengths must be one length per example, got shape {self.lengths.shape}")
        super().__init__(len(self.lengths), seed)
        self.batch_size = batch_size
        self.mega_batch_factor = mega_batch_factor

    def batches(self) -> list[np.ndarray]:
        """The batches of the current epoch, in order (the last one may be partial)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_examples)
        mega = self.mega_batch_factor * self.batch_size
        batches: list[np.ndarray] = []
        for start in range(0, len(order), mega):
            chunk = order[start : start + mega]
            # Stable sort: ties keep their random order, so equal-length examples are not grouped by index.
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        full = [b for b in batches if len(b) == self.batch_size]
        partial = [b for b in batches if len(b) < self.batch_size]
        # Sorted mega-batches alone would feed long-then-short runs of batches; shuffling the batches removes that.
        shuffled = [full[i] for i in rng.permutation(len(full))]
        return shuffled + partial

    def __iter__(self) -> Iterator[int]:
        batches = self.batches()
        return iter(np.concatenate(batches).tolist() if batches else [])


def padding_stats(lengths: np.ndarray, batches: Sequence[np.ndarray]) -> dict[str, float]:
    """Share of source positions that are padding when ``batches`` are padded to their longest row."""
    real = sum(int(lengths[b].sum()) for b in batches)
    padded = sum(int(lengths[b].max()) * len(b) for b in batches if len(b))
    return {"real_tokens": real, "padded_tokens": padded, "padding_fraction": 1 - real / padded if padded else 0.0}
