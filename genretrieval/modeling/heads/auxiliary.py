"""Heads as auxiliary losses beside the seq2seq loss: ``loss = seq2seq + Σ weight_h · loss_h``.

The heads share the generative model's item-token embeddings and encoder (:class:`Seq2SeqSharedEmbeddings`), so their
losses shape the same parameters the decoder uses. They are saved with the retriever as ``heads.json`` (names,
weights, configs, the user index) + ``heads.safetensors`` (their own weights: user tables, MLPs, attention layers).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import HeadDataConfig, build_head, get_head_class
from .data import HeadBatchBuilder
from .shared import Seq2SeqSharedEmbeddings

HEADS_CONFIG_FILE = "heads.json"
HEADS_WEIGHTS_FILE = "heads.safetensors"


@dataclass
class HeadSpec:
    """One auxiliary head of a training config: ``{name: jsr, weight: 0.1, params: {...}}``."""

    name: str  # a registered head: jsr, jsr-seq, unified-ssr, sesrec (genretrieval.modeling.heads.registered_heads())
    weight: float = 0.1  # multiplies the head's loss before it is added to the seq2seq loss
    params: dict[str, Any] = field(default_factory=dict)  # fields of the head's config dataclass

    def __post_init__(self) -> None:
        get_head_class(self.name)  # names the registered heads if unknown
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or self.weight < 0:
            raise ValueError(f"heads[{self.name}].weight must be a number >= 0, got {self.weight!r}")


def _text_to_ids(tokenizer: Any):
    """Tokenizer ids of a text without special tokens; 0 (T5's pad) never appears inside a text."""
    def to_ids(text: str) -> list[int]:
        """Ids of ``text``."""
        return [i for i in tokenizer(text, add_special_tokens=False)["input_ids"] if i != 0]
    return to_ids


class AuxiliaryHeads(nn.Module):
    """The heads attached to one :class:`~genretrieval.modeling.GenerativeRetriever`, with their batch builder."""

    def __init__(self, specs: Sequence[HeadSpec], retriever: Any, catalog: Any, train: Mapping[str, Any],
                 data: HeadDataConfig | None = None):
        super().__init__()
        from ...decoding.trie import item_token_ids

        if not specs:
            raise ValueError("AuxiliaryHeads needs at least one head spec")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"each head may be attached once, got {names}")
        self.specs = list(specs)
        self.builder = HeadBatchBuilder(catalog, train, _text_to_ids(retriever.tokenizer), data)
        if list(self.builder.item_ids) != list(retriever.id_scheme.item_ids):
            raise ValueError("the catalog's items (order included) must be the retriever's ID scheme items")
        tokens = item_token_ids(retriever.id_scheme, retriever.tokenizer)
        self.embeddings = Seq2SeqSharedEmbeddings(retriever.model, tokens, self.builder.item_text_ids)
        dim = self.embeddings.embed_dim
        num_users = len(self.builder.user_index) + 1
        vocab = len(retriever.tokenizer)
        self.heads = nn.ModuleDict({s.name: build_head(s.name, dim, num_users, vocab_size=vocab, **s.params)
                                    for s in specs})

    def set_model(self, model: nn.Module) -> None:
        """Point the shared embeddings at ``model`` (e.g. the unwrapped model after ``accelerator.prepare``)."""
        object.__setattr__(self.embeddings, "_model", model)

    def forward(self, rows: Sequence[Mapping[str, Any]], generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted sum of the heads' losses on example ``rows``, and each head's (detached) loss and terms."""
        device = next(iter(self.embeddings.model.parameters())).device
        total = torch.zeros((), device=device)
        logs: dict[str, torch.Tensor] = {}
        for spec in self.specs:
            head = self.heads[spec.name]
            batch = self.builder.from_examples(rows, head.config.num_negatives, generator).to(device)
            out = head(batch, self.embeddings)
            total = total + spec.weight * out.loss
            logs[f"{spec.name}/loss"] = out.loss.detach()
            logs.update({f"{spec.name}/{k}": v.detach() for k, v in out.terms.items()})
        return total, logs

    # ---- persistence -------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write ``heads.json`` and ``heads.safetensors`` into ``directory`` (part of a retriever save)."""
        from safetensors.torch import save_file

        from ...fileio import atomic_write_text

        directory = Path(directory)
        meta = {"heads": [{"name": s.name, "weight": s.weight, "config": self.heads[s.name].config.to_dict()}
                          for s in self.specs],
                "embed_dim": self.embeddings.embed_dim, "users": self.builder.user_index}
        state = {k: v.detach().cpu().contiguous() for k, v in self.heads.state_dict().items()}
        tmp = directory / (HEADS_WEIGHTS_FILE + ".tmp")
        save_file(state, str(tmp))
        tmp.replace(directory / HEADS_WEIGHTS_FILE)
        atomic_write_text(directory / HEADS_CONFIG_FILE, json.dumps(meta, indent=2))


def load_heads(directory: str | Path) -> tuple[nn.ModuleDict, dict[str, Any]] | None:
    """The heads saved in a retriever directory (modules with their weights, and ``heads.json``), or ``None``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / HEADS_CONFIG_FILE).is_file():
        return None
    meta = json.loads((directory / HEADS_CONFIG_FILE).read_text(encoding="utf-8"))
    num_users = len(meta["users"]) + 1
    heads = nn.ModuleDict({h["name"]: build_head(h["name"], meta["embed_dim"], num_users, **h["config"])
                           for h in meta["heads"]})
    heads.load_state_dict(load_file(str(directory / HEADS_WEIGHTS_FILE)))
    return heads, meta
