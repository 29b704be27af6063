"""Trie-constrained decoding as a vectorised ``LogitsProcessor`` (plus the per-beam callback it replaces).

The processor keeps no state between steps: every call re-derives each row's trie node from the decoder ids it is
given. Beam search reorders, duplicates and drops rows between steps, so anything cached per row would go stale
(matching rows to the previous call's would cost more than the lookup). With the compiled trie the lookup is O(1)
per step anyway: one gather for the dense top levels and one ``searchsorted`` per deeper level, batched over
batch x beams; the allowed set is then one gather (dense levels) or one scatter (CSR levels) into the token range of
the current level, so no ``[rows, vocab]`` mask is ever built, and ``scores`` are edited in place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import LogitsProcessor

from .trie import ItemTrie


class TrieConstrainedLogitsProcessor(LogitsProcessor):
    """Sets the score of every token that would leave the trie of valid item IDs to ``-inf`` (in place).

    ``input_ids`` are decoder ids whose first ``prefix_length`` columns (the decoder start token) precede the ID.
    While an ID is incomplete only its trie children are allowed; once complete only ``eos``; rows that left the
    trie (should not happen) or are past ``eos`` may only emit ``eos`` or ``pad``. With ``renormalize=True`` the
    allowed scores are log-softmaxed among themselves (scores become constrained log-probabilities); that is much
    cheaper than a following full-vocabulary ``LogitNormalization``.
    """

    def __init__(self, trie: ItemTrie, pad_token_id: int | None = None, prefix_length: int = 1, *,
                 renormalize: bool = False):  # fmt: skip
        if prefix_length < 0:
            raise ValueError(f"prefix_length must be >= 0, got {prefix_length}")
        self.trie = trie
        self.pad_token_id = pad_token_id
        self.prefix_length = prefix_length
        self.renormalize = renormalize
        self._device_tries: dict[torch.device, ItemTrie] = {trie.device: trie}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Set the disallowed tokens of every row of ``scores`` to ``-inf``, in place, and return ``scores``.

        In place because a fresh ``[rows, vocab]`` tensor per step costs more than everything else here (large
        allocations are page-faulted anew on every call); ``generate`` hands each step's scores over for this.
        """
        trie, depth = self._prepare(input_ids, scores.shape[-1])
        eos, pad = trie.eos_token_id, self.pad_token_id
        neg_inf = float("-inf")
        if depth > trie.id_length:  # past eos: the row is finished, only padding remains
            keep = [eos] if pad is None else [eos, pad]
            kept = scores[:, keep].clone()
            scores.fill_(neg_inf)[:, keep] = kept
            return self._normalise(scores) if self.renormalize else scores
        node, valid = trie.locate(input_ids[:, self.prefix_length :])
        all_valid = bool(valid.all())  # the normal case: lets the fallback ops and the full normalisation be skipped
        if not all_valid:
            fallback = {token: scores[:, token].clone() for token in ([eos] if pad is None else [eos, pad])}
        if depth == trie.id_length:
            eos_scores = scores[:, eos].clone()
            scores.fill_(neg_inf)[:, eos] = 0.0 if self.renormalize and all_valid else eos_scores
        else:
            lo, width = trie.lo[depth], trie.width[depth]
            allowed = trie.children_mask(node, depth)  # dead ids (rows that left the trie) have no children
            scores[:, :lo] = neg_inf
            scores[:, lo + width :] = neg_inf
            block = scores[:, lo : lo + width].masked_fill_(~allowed, neg_inf)
            if self.renormalize and all_valid:
                # Normalising only the level's block is exact when every row has children (all-inf rows: NaN).
                scores[:, lo : lo + width] = torch.log_softmax(block, -1)
        if not all_valid:
            # Rows that left the trie fall back to eos/pad (a valid row never allows eos: no ID contains it).
            for token, original in fallback.items():
                if token != eos or depth < trie.id_length:
                    scores[:, token] = torch.where(valid, scores[:, token], original)
            if self.renormalize:
                return self._normalise(scores)
        return scores

    def allowed_mask(self, input_ids: torch.LongTensor, vocab_size: int) -> torch.BoolTensor:
        """``[rows, vocab_size]`` mask of the tokens each row may emit next (for inspection and tests)."""
        probe = torch.zeros(input_ids.shape[0], vocab_size, device=input_ids.device)
        renormalize, self.renormalize = self.renormalize, False
        try:
            return torch.isfinite(self(input_ids, probe))
        finally:
            self.renormalize = renormalize

    def _prepare(self, input_ids: torch.LongTensor, vocab_size: int) -> tuple[ItemTrie, int]:
        trie = self._on(input_ids.device)
        if trie.key_base > vocab_size or trie.eos_token_id >= vocab_size:
            raise ValueError(
                f"scores have {vocab_size} columns but the trie uses token ids up to "
                f"{max(trie.key_base - 1, trie.eos_token_id)}: was the model resized after adding the ID tokens?"
            )
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < vocab_size:
            raise ValueError(f"pad_token_id={self.pad_token_id} is outside the {vocab_size} score columns")
        depth = input_ids.shape[1] - self.prefix_length
        if depth < 0:
            raise ValueError(
                f"input_ids have {input_ids.shape[1]} columns, fewer than prefix_length={self.prefix_length}"
            )
        return trie, depth

    @staticmethod
    def _normalise(out: torch.FloatTensor) -> torch.FloatTensor:
        return torch.log_softmax(out, -1)

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
