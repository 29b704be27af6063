"""Trie-constrained decoding as a vectorised ``LogitsProcessor`` (plus the per-beam callback it replaces).

The processor keeps no state between steps: every call re-derives each row's trie node from the decoder ids it is
given. Beam search reorders, duplicates and drops rows between steps, so anything cached per row would go stale;
re-walking costs at most ``id_length`` batched ``searchsorted`` calls per step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import LogitsProcessor

from .trie import ItemTrie


class TrieConstrainedLogitsProcessor(LogitsProcessor):
    """Sets the score of every token that would leave the trie of valid item IDs to ``-inf``.

    ``input_ids`` are decoder ids whose first ``prefix_length`` columns (the decoder start token) precede the ID.
    While an ID is incomplete only its trie children are allowed; once complete only ``eos``; rows that left the
    trie (should not happen) or are past ``eos`` may only emit ``eos`` or ``pad``.
    """

    def __init__(self, trie: ItemTrie, pad_token_id: int | None = None, prefix_length: int = 1):
        if prefix_length < 0:
            raise ValueError(f"prefix_length must be >= 0, got {prefix_length}")
        self.trie = trie
        self.pad_token_id = pad_token_id
        self.prefix_length = prefix_length
        self._device_tries: dict[torch.device, ItemTrie] = {trie.device: trie}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Return ``scores`` with the disallowed tokens of every row set to ``-inf``."""
        return scores.masked_fill(~self.allowed_mask(input_ids, scores.shape[-1]), float("-inf"))

    def allowed_mask(self, input_ids: torch.LongTensor, vocab_size: int) -> torch.BoolTensor:
        """``[rows, vocab_size]`` mask of the tokens each row may emit next."""
        trie = self._on(input_ids.device)
        if trie.key_base > vocab_size or trie.eos_token_id >= vocab_size:
            raise ValueError(
                f"scores have {vocab_size} columns but the trie uses token ids up to "
                f"{max(trie.key_base - 1, trie.eos_token_id)}: was the model resized after adding the ID tokens?"
            )
        rows, generated = input_ids.shape[0], input_ids.shape[1] - self.prefix_length
        if generated < 0:
            raise ValueError(
                f"input_ids have {input_ids.shape[1]} columns, fewer than prefix_length={self.prefix_length}"
            )
        allowed = torch.zeros(rows, vocab_size, dtype=torch.bool, device=input_ids.device)
        if generated > trie.id_length:  # past eos: the row is finished, only padding remains
            self._allow_fallback(allowed, torch.ones(rows, dtype=torch.bool, device=input_ids.device))
            return allowed
        nodes = trie.walk(input_ids[:, self.prefix_length :])
        valid = nodes >= 0
        if generated == trie.id_length:
            allowed[valid, trie.eos_token_id] = True
        else:
            node_ids = nodes[valid]
            starts = trie.indptr[node_ids]
            counts = trie.indptr[node_ids + 1] - starts
            # Expand every row's CSR range [start, start + count) into (row, edge) pairs without a Python loop.
            row_of_edge = torch.repeat_interleave(valid.nonzero().squeeze(1), counts)
            first_edge = torch.repeat_interleave(starts - (torch.cumsum(counts, 0) - counts), counts)
            edges = first_edge + torch.arange(len(row_of_edge), device=input_ids.device)
            allowed[row_of_edge, trie.edge_tokens[edges]] = True
        self._allow_fallback(allowed, ~valid)
        return allowed

    def _allow_fallback(self, allowed: torch.BoolTensor, rows: torch.BoolTensor) -> None:
        allowed[rows, self.trie.eos_token_id] = True
        if self.pad_token_id is not None:
            allowed[rows, self.pad_token_id] = True

    def _on(self, device: torch.device) -> ItemTrie:
        if device not in self._device_tries:
            self._device_tries[device] = self.trie.to(device)
        return self._device_tries[device]


def prefix_allowed_tokens_fn(
    trie: ItemTrie, pad_token_id: int | None = None, prefix_length: int = 1
) -> Callable[[int, torch.Tensor], list[int]]:
    """Per-beam Python callback for ``generate(prefix_allowed_tokens_fn=...)`` with the processor's semantics.

    It is the reference implementation (test oracle, speed baseline); use :class:`TrieConstrainedLogitsProcessor`
    for real decoding.
    """
    fallback = [trie.eos_token_id] + ([pad_token_id] if pad_token_id is not None else [])

    def allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        """Allowed next tokens for one beam's decoder ids (``batch_id`` is unused: one trie serves all)."""
        return trie.get(input_ids[prefix_length:].tolist()) or fallback

    return allowed
