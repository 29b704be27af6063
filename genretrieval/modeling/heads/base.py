"""The interface of the joint search-and-recommendation heads (JSR, UnifiedSSR, SESRec) and their registry.

A head is a small ``nn.Module`` that scores (request, item) pairs and has a training loss. It never owns the
representations it shares with the generative model: item vectors and text encodings come from a
:class:`SharedEmbeddings`, which is either

* :class:`OwnEmbeddings` (standalone baseline: the head's own item and word tables), or
* ``genretrieval.modeling.heads.shared.Seq2SeqSharedEmbeddings`` (auxiliary mode: the T5's item-token rows and its
  encoder), so the head's loss trains the generative model's parameters too.

Batches are :class:`HeadBatch` tensors built by ``genretrieval.modeling.heads.data.HeadBatchBuilder`` from the
canonical example tables; one batch may mix search and recommendation rows (``is_search``), as the multi-task
loop does.

Conventions every head follows:

* item indices are catalog positions; ``-1`` pads item sequences (left-padded: the most recent item is last);
* term ids use ``0`` as padding (both vocabularies reserve it);
* ``forward`` returns a :class:`HeadOutput` whose ``scores[:, 0]`` is the positive and ``scores[:, 1:]`` the sampled
  negatives, and whose ``loss`` is what the paper minimises (its components in ``terms``, detached);
* ``score(batch, emb, candidates)`` is the ranking function used at evaluation (higher is better).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import nn

_HEADS: dict[str, type[Head]] = {}


@dataclass
class HeadConfig:
    """Fields every head config has; subclasses add the paper's hyper-parameters (with the paper's defaults)."""

    dropout: float = 0.1  # dropout inside the head
    num_negatives: int = 1  # sampled negatives per positive in training (the papers use 1 unless noted)

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{type(self).__name__}.dropout must be in [0, 1), got {self.dropout!r}")
        if self.num_negatives < 1:
            raise ValueError(f"{type(self).__name__}.num_negatives must be >= 1, got {self.num_negatives!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (saved next to the weights)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class HeadDataConfig:
    """Sizes of the sequences a :class:`HeadBatchBuilder` produces."""

    max_history: int = 20  # rec items kept (most recent last)
    max_searches: int = 10  # earlier searches kept (most recent last)
    max_query_len: int = 12  # terms per query
    max_item_text_len: int = 32  # terms per item text

    def __post_init__(self) -> None:
        for name in ("max_history", "max_searches", "max_query_len", "max_item_text_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HeadDataConfig.{name} must be an integer >= 1, got {value!r}")


@dataclass
class HeadBatch:
    """One batch of requests for a head. ``B`` rows; see the module docstring for the padding conventions."""

    is_search: torch.BoolTensor  # [B] True: search request (query given); False: recommendation request
    users: torch.LongTensor  # [B] user index; 0 = unknown user (index 0 is reserved)
    history: torch.LongTensor  # [B, T] earlier rec interactions (item indices), left-padded with -1
    query: torch.LongTensor  # [B, Lq] term ids of the query; all 0 for recommendation rows
    search_items: torch.LongTensor  # [B, S] items clicked in the user's earlier searches, left-padded with -1
    search_queries: torch.LongTensor  # [B, S, Lq] term ids of those searches' queries (0 = pad)
    target: torch.LongTensor  # [B] the positive item; -1 at inference
    negatives: torch.LongTensor  # [B, N] sampled negative items (never the target); [B, 0] at inference

    def to(self, device: torch.device | str) -> HeadBatch:
        """Copy with every tensor on ``device``."""
        return HeadBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @property
    def size(self) -> int:
        """Number of rows ``B``."""
        return int(self.target.shape[0])

    def candidates(self) -> torch.LongTensor:
        """``[B, 1 + N]``: the target then the negatives (the columns of :attr:`HeadOutput.scores`)."""
        return torch.cat([self.target.unsqueeze(1), self.negatives], dim=1)


@dataclass
class HeadOutput:
    """What a head's ``forward`` returns."""

    loss: torch.Tensor  # scalar training loss (the paper's total loss)
    scores: torch.Tensor  # [B, 1 + N]: positive first, then the negatives
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # detached loss components, for logging


class SharedEmbeddings(nn.Module, ABC):
    """Where a head gets item vectors and text encodings from (its own tables, or the generative model's)."""

    embed_dim: int
    num_items: int

    @abstractmethod
    def items(self, index: torch.LongTensor) -> torch.Tensor:
        """``[..., embed_dim]`` vectors of the items ``index`` (any shape); rows of ``-1`` padding are zeros."""

    @abstractmethod
    def terms(self, ids: torch.LongTensor) -> torch.Tensor:
        """``[..., L, embed_dim]`` context-free embeddings of term ids ``[..., L]``; padding (0) gives zeros."""

    def encode_text(self, ids: torch.LongTensor) -> torch.Tensor:
        """``[..., L, embed_dim]`` encodings of term ids (contextual where an encoder is shared; zeros at padding).

        Standalone heads have no text encoder, so this defaults to :meth:`terms`.
        """
        return self.terms(ids)

    @abstractmethod
    def item_text(self, index: torch.LongTensor) -> torch.LongTensor:
        """``[..., Li]`` term ids of the items' text (title, text, categories), 0-padded."""


class OwnEmbeddings(SharedEmbeddings):
    """A head's own item table and word table (standalone baselines, and the heads' unit tests)."""

    def __init__(self, num_items: int, vocab_size: int, embed_dim: int, item_text_ids: torch.LongTensor):
        super().__init__()
        if num_items < 1 or vocab_size < 2 or embed_dim < 1:
            raise ValueError(f"OwnEmbeddings needs num_items >= 1, vocab_size >= 2 (0 is padding) and embed_dim >= 1, "
                             f"got {num_items}, {vocab_size}, {embed_dim}")
        if item_text_ids.dim() != 2 or item_text_ids.shape[0] != num_items:
            raise ValueError(f"item_text_ids must be [num_items={num_items}, L], got {tuple(item_text_ids.shape)}")
        self.embed_dim, self.num_items = embed_dim, num_items
        # Row num_items is the padding row: index -1 maps onto it and it stays zero.
        self.item_table = nn.Embedding(num_items + 1, embed_dim, padding_idx=num_items)
        self.word_table = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        nn.init.normal_(self.item_table.weight, std=embed_dim ** -0.5)
        nn.init.normal_(self.word_table.weight, std=embed_dim ** -0.5)
        with torch.no_grad():
            self.item_table.weight[num_items].zero_()
            self.word_table.weight[0].zero_()
        self.register_buffer("item_text_ids", item_text_ids.long(), persistent=True)

    def items(self, index: torch.LongTensor) -> torch.Tensor:
        """Item vectors; -1 gives the zero padding row."""
        return self.item_table(torch.where(index < 0, torch.full_like(index, self.num_items), index))

    def terms(self, ids: torch.LongTensor) -> torch.Tensor:
        """Word vectors; 0 gives zeros."""
        return self.word_table(ids)

    def item_text(self, index: torch.LongTensor) -> torch.LongTensor:
        """Term ids of the items' text; -1 gives an all-padding row."""
        text = self.item_text_ids[index.clamp(min=0)]
        return text.masked_fill((index < 0).unsqueeze(-1), 0)


class Head(nn.Module, ABC):
    """Base class of the registered heads. Subclasses set ``config_class`` and implement ``forward``/``score``."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[HeadConfig]] = HeadConfig
    supported_tasks: ClassVar[tuple[str, ...]] = ("search", "recommend")

    def __init__(self, config: HeadConfig, embed_dim: int, num_users: int):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        if embed_dim < 1 or num_users < 1:
            raise ValueError(f"embed_dim and num_users must be >= 1, got {embed_dim} and {num_users}")
        self.config = config
        self.embed_dim = embed_dim
        self.num_users = num_users  # user indices run 1..num_users-1; 0 is the unknown user

    @abstractmethod
    def forward(self, batch: HeadBatch, emb: SharedEmbeddings) -> HeadOutput:
        """Training step: scores of target + negatives and the paper's loss."""

    @abstractmethod
    def score(self, batch: HeadBatch, emb: SharedEmbeddings, candidates: torch.LongTensor) -> torch.Tensor:
        """``[B, C]`` ranking scores of the candidate items ``[B, C]`` (or ``[C]``, shared by all rows)."""

    def training_stages(self, num_epochs: int) -> list[tuple[int, str]]:
        """How a standalone fit spends ``num_epochs``: ``[(epochs, mode)]``, mode in {"joint", "alternate",
        "per-task"}. ``per-task`` fine-tunes one copy of the head per task (UnifiedSSR's second stage)."""
        return [(num_epochs, "joint")]


def register_head(name: str):
    """Class decorator adding a :class:`Head` subclass to the registry under ``name`` (duplicates rejected)."""

    def wrap(cls: type[Head]) -> type[Head]:
        if name in _HEADS:
            raise ValueError(f"a head named {name!r} is already registered ({_HEADS[name].__name__})")
        if not (isinstance(cls, type) and issubclass(cls, Head)):
            raise TypeError(f"register_head({name!r}) decorates Head subclasses, got {cls!r}")
        cls.name = name
        _HEADS[name] = cls
        return cls

    return wrap


def get_head_class(name: str) -> type[Head]:
    """The head class registered as ``name``."""
    if name not in _HEADS:
        raise ValueError(f"unknown head {name!r}; registered heads: {sorted(_HEADS)}")
    return _HEADS[name]


def registered_heads() -> list[str]:
    """Names of the registered heads."""
    return sorted(_HEADS)


def build_head(name: str, embed_dim: int, num_users: int, vocab_size: int | None = None, **params: Any) -> Head:
    """Instantiate head ``name`` with its config built from ``params`` (unknown keys are named in the error).

    ``vocab_size`` (the term vocabulary, padding included) fills the config's ``vocab_size`` field when the head
    has one and ``params`` does not set it (JSR's per-term weights).
    """
    cls = get_head_class(name)
    known = {f.name for f in fields(cls.config_class)}
    if vocab_size is not None and "vocab_size" in known and "vocab_size" not in params:
        params = dict(params, vocab_size=vocab_size)
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown {name} head parameter(s) {unknown}; known: {sorted(known)}")
    return cls(cls.config_class(**params), embed_dim=embed_dim, num_users=num_users)


def pairwise_bce(scores: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of logits ``[B, 1 + N]``: column 0 positive, the rest negative (mean over entries)."""
    labels = torch.zeros_like(scores)
    labels[:, 0] = 1.0
    return nn.functional.binary_cross_entropy_with_logits(scores, labels)


def padding_mask(index: torch.LongTensor) -> torch.BoolTensor:
    """True where an item index is real (``>= 0``)."""
    return index >= 0
