"""Auxiliary mode: the generative model's own parameters as a head's item vectors and text encoder.

An item's vector is the mean of its ID tokens' rows in the T5's shared embedding matrix (exactly the item token's row
for atomic IDs; the mean of its code tokens' rows for semantic IDs), so a head's loss moves the same rows the
decoder emits. Text is encoded by the T5 encoder itself (its hidden states, ``encode_text``), or looked up in the
shared embedding matrix (``terms``).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import SharedEmbeddings


class Seq2SeqSharedEmbeddings(SharedEmbeddings):
    """Item vectors and text encodings taken from a T5-style seq2seq model (no parameters of its own).

    ``item_token_ids [num_items, id_length]`` are tokenizer ids of each item's ID (catalog order);
    ``item_text_ids [num_items, Li]`` are tokenizer ids of each item's text, 0-padded (T5's pad id is 0).
    """

    def __init__(self, model: nn.Module, item_token_ids: torch.LongTensor, item_text_ids: torch.LongTensor,
                 use_encoder: bool = True):
        super().__init__()
        if item_token_ids.dim() != 2 or item_text_ids.dim() != 2 or item_token_ids.shape[0] != item_text_ids.shape[0]:
            raise ValueError(f"item_token_ids [N, L] and item_text_ids [N, Li] must have the same N, got "
                             f"{tuple(item_token_ids.shape)} and {tuple(item_text_ids.shape)}")
        pad = getattr(getattr(model, "config", None), "pad_token_id", 0)
        if pad not in (0, None):
            raise ValueError(f"the heads use 0 as the text padding id, but the model's pad_token_id is {pad}")
        # A plain attribute (not a submodule): the model is registered and saved by its owner, not by the heads.
        object.__setattr__(self, "_model", model)
        self.use_encoder = use_encoder
        self.num_items = int(item_token_ids.shape[0])
        self.embed_dim = int(model.get_input_embeddings().embedding_dim)
        self.register_buffer("item_token_ids", item_token_ids.long(), persistent=False)
        self.register_buffer("item_text_ids", item_text_ids.long(), persistent=False)

    @property
    def model(self) -> nn.Module:
        """The shared seq2seq model."""
        return self._model

    def items(self, index: torch.LongTensor) -> torch.Tensor:
        """Mean shared-embedding row of each item's ID tokens; -1 gives zeros."""
        table = self._model.get_input_embeddings()
        tokens = self.item_token_ids.to(index.device)[index.clamp(min=0)]  # [..., id_length]
        vectors = table(tokens).mean(dim=-2)
        return vectors * (index >= 0).unsqueeze(-1).to(vectors.dtype)

    def terms(self, ids: torch.LongTensor) -> torch.Tensor:
        """Shared-embedding rows of the term ids; padding (0) gives zeros."""
        vectors = self._model.get_input_embeddings()(ids)
        return vectors * (ids != 0).unsqueeze(-1).to(vectors.dtype)

    def encode_text(self, ids: torch.LongTensor) -> torch.Tensor:
        """T5 encoder hidden states of each 0-padded row of ``ids [..., L]`` (zeros at padding and empty rows)."""
        if not self.use_encoder:
            return self.terms(ids)
        shape = ids.shape
        flat = ids.reshape(-1, shape[-1])
        out = torch.zeros(*flat.shape, self.embed_dim, device=ids.device,
                          dtype=self._model.get_input_embeddings().weight.dtype)
        rows = (flat != 0).any(dim=1)
        if rows.any():
            mask = (flat[rows] != 0).long()
            hidden = self._model.get_encoder()(input_ids=flat[rows], attention_mask=mask).last_hidden_state
            out = out.index_put((rows.nonzero().squeeze(1),), hidden * mask.unsqueeze(-1).to(hidden.dtype))
        return out.reshape(*shape, self.embed_dim)

    def item_text(self, index: torch.LongTensor) -> torch.LongTensor:
        """Tokenizer ids of the items' text; -1 gives an all-padding row."""
        text = self.item_text_ids.to(index.device)[index.clamp(min=0)]
        return text.masked_fill((index < 0).unsqueeze(-1), 0)
