"""JSR (Zamani & Croft, 2018) and JSR-Seq (UnifiedSSR, Xie et al., §4.1.2) joint search-and-recommendation heads.

**JSR** (``"jsr"``, paper §2.2-2.3) scores

* a search request with ``ψ(φ_Q(q) ⊙ φ_I(i))`` -- the paper's retrieval model is query-item only (contexts are "not
  considered in our experiments", §2.3), so search rows ignore the user and the histories;
* a recommendation request with ``ψ′(φ′_U(u) ⊙ φ′_I(i))``.

``φ_Q`` feeds the softmax-weighted average ``Σ_t softmax(W)(t) E(t)`` of the query's term embeddings to a network with
one hidden layer; ``φ_I``/``φ′_I`` do the same over the item's text. ``W`` (one scalar per term) and ``E`` (the term
embeddings, ``emb.encode_text``) are shared by all three. ``φ′_U`` is a user lookup table. ``ψ``/``ψ′`` are two-layer
networks (ReLU hidden layer, sigmoid output) over the Hadamard product; dropout follows every hidden layer. Training
is pairwise with one sampled negative and ``L = L_IR + L_RS``.

Where the paper is open (also in ``docs/heads.md``, section "JSR"):

* **Sizes.** Only the word/user embedding size (200) is reported; hidden widths are not. Here every representation
  has the width ``embed_dim`` of the shared embeddings, and hidden layers default to ``embed_dim`` too.
* **φ_I vs φ′_I.** The paper names two item functions "implemented similarly" sharing ``W``/``E``: by default they
  are two networks with their own weights (``share_item_network=False``).
* **Item embedding.** ``φ_I(i) = MLP(text average) + emb.items(i)`` (``use_item_embedding=True``, not in the
  paper): in auxiliary mode this sends the head's gradient into the generative model's item-token rows. With
  ``use_item_embedding=False`` the item is represented by its text alone, as in the paper.
* **Term weights.** ``W`` is a table of ``vocab_size`` scalars, zero-initialised (a plain average at the start);
  term ids ``>= vocab_size`` fold modulo the table (hash sharing) -- make it at least the vocabulary size to get the
  paper's exact one-weight-per-term. Padding (id 0) never gets weight; an empty text gives a zero vector.
* **Loss.** The paper's Eq. for ``L_IR``/``L_RS`` is ``-log exp(ψ+)/(exp(ψ+)+exp(ψ−)) = -log σ(ψ+ − ψ−)`` with
  ``ψ`` the sigmoid output (``loss="pairwise"``, ``sigmoid_output=True``, the default, taken literally). With
  ``N > 1`` negatives a row's loss is the mean over its ``N`` pairs. ``loss="pointwise"`` is the label-1/label-0
  BCE on ``σ(ψ)`` (``base.pairwise_bce``); ``sigmoid_output=False`` applies the pairwise loss to ψ's logits.
* **Batch normalisation of the loss.** The paper sums over two mini-batches. A mixed batch of ``B`` rows here gives
  ``loss = (Σ_search rows ℓ + Σ_rec rows ℓ) / B`` -- Eq. 3 up to the constant ``1/B`` for any task mix -- and
  ``terms = {"ir": Σ_search ℓ / B, "rs": Σ_rec ℓ / B}`` so that ``loss = ir + rs``. Search-only or rec-only batches
  train one component alone (the paper's "individual training").
* **Scores.** ``forward(...).scores`` and ``score()`` return ψ's *logits*: σ is monotone, so rankings are those of
  the paper, without ties from a saturated sigmoid.
* **User 0** (unknown user) is an ordinary trainable row of the user table.

**JSR-Seq** (``"jsr-seq"``, UnifiedSSR §4.1.2: "JSR where the simple MLPs are replaced with our proposed sequential
encoders; the encoders share the same architecture but have separate parameters"). ``φ_Q`` and ``φ′_U`` become two
Siamese encoders (UnifiedSSR §3.3-3.4: multi-head self-attention, cross-attention, FFN of width ``2d``, residuals,
layer norm, dropout; learned positions; the user embedding added to every step), one for search and one for
recommendation, with separate parameters:

* recommendation: the encoder runs over the rec history (query branch deactivated, Eq. 4); ``φ′_U`` is its last step;
* search: the product branch runs over the items of the earlier searches and the query branch over their queries
  followed by the current query (Eq. 3; product step ``t`` and query step ``t`` share a position); ``φ_Q = w f^p +
  (1 − w) f^q`` with the learnable ``w`` of UnifiedSSR Eq. 11 (initialised to 0.5).

Chosen where UnifiedSSR is silent: a query in a sequence is JSR's softmax-weighted term average (``W``, ``E`` shared),
not a plain mean; sequence steps use ``emb.items`` (not ``φ_I``, which would encode every history item's text); the
item side, ``ψ``/``ψ′`` and the loss stay JSR's; no intent-oriented session module or SSL loss (they are UnifiedSSR's
own, not the "sequential encoders").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .base import Head, HeadBatch, HeadConfig, HeadOutput, SharedEmbeddings, register_head

# Largest [rows, candidates, width] block the pairwise matcher materialises at once (~16 MB of float32).
_CHUNK_ELEMENTS = 1 << 22
# Items whose text is encoded at once in score(): bounds the T5 encoder's activations in auxiliary mode.
_ITEM_CHUNK = 1024


def _check_int(owner: str, name: str, value: object, minimum: int, allow_none: bool = False) -> None:
    """Raise a ValueError naming ``owner.name`` unless ``value`` is an int >= ``minimum`` (or None if allowed)."""
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{owner}.{name} must be an integer >= {minimum}{extra}, got {value!r}")


def _check_bool(owner: str, name: str, value: object) -> None:
    """Raise a ValueError naming ``owner.name`` unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be a bool, got {value!r}")


@dataclass
class JSRConfig(HeadConfig):
    """Hyper-parameters of the JSR head (defaults from Zamani & Croft 2018 where it reports them)."""

    # §3.2: dropout keep probability grid-searched in {0.5, 0.8, 1.0}; the chosen value is not reported -> keep 0.8.
    dropout: float = 0.2
    # §2.2: "a positive item ... and a negative item sampled" -> one negative per positive.
    num_negatives: int = 1
    # §2.3: φ_Q/φ_I have "a single hidden layer"; its width is not reported -> None = embed_dim.
    hidden_dim: int | None = None
    # §2.3: ψ/ψ′ are "two layer fully-connected networks"; hidden width not reported -> None = embed_dim.
    match_hidden_dim: int | None = None
    # §2.3: W: V -> R, one weight per term; ids >= vocab_size fold modulo. 2^17 covers T5 (+ item tokens) and
    # catalog word vocabularies of our datasets; the head is not told the vocabulary size, so it over-provisions.
    vocab_size: int = 131072
    # §2.2: φ_I and φ′_I are distinct functions sharing W and E -> separate networks unless this is True.
    share_item_network: bool = False
    # Not in the paper: add the shared item embedding to φ_I so auxiliary training reaches the item-token rows.
    use_item_embedding: bool = True
    # §2.3: the item is represented by its text; False keeps only the item embedding (an ablation).
    use_item_text: bool = True
    # §2.2: L = -log exp(ψ+)/(exp(ψ+)+exp(ψ−)) ("pairwise"); "pointwise" is label-1/label-0 BCE on σ(ψ).
    loss: str = "pairwise"
    # §2.3: "sigmoid as the output activation function" of ψ/ψ′, which the pairwise loss then exponentiates.
    sigmoid_output: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        _check_int(owner, "num_negatives", self.num_negatives, 1)
        _check_int(owner, "hidden_dim", self.hidden_dim, 1, allow_none=True)
        _check_int(owner, "match_hidden_dim", self.match_hidden_dim, 1, allow_none=True)
        _check_int(owner, "vocab_size", self.vocab_size, 2)
        for name in ("share_item_network", "use_item_embedding", "use_item_text", "sigmoid_output"):
            _check_bool(owner, name, getattr(self, name))
        if self.loss not in ("pairwise", "pointwise"):
            raise ValueError(f"{owner}.loss must be 'pairwise' or 'pointwise', got {self.loss!r}")
        if not (self.use_item_embedding or self.use_item_text):
            raise ValueError(f"{owner}: use_item_embedding and use_item_text cannot both be False (no item "
                             f"representation left)")


def _two_layer(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> dropout -> Linear (the paper's networks; dropout "in all hidden layers")."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


@register_head("jsr")
class JSRHead(Head):
    """JSR: bag-of-words query/item networks, a user table, ψ/ψ′ over Hadamard products (see the module docstring)."""

    config_class = JSRConfig

    def __init__(self, config: JSRConfig, embed_dim: int, num_users: int):
        super().__init__(config, embed_dim, num_users)
        d, cfg = embed_dim, config
        hidden = cfg.hidden_dim or d
        match_hidden = cfg.match_hidden_dim or d
        # Zero init: every term starts with the same weight, i.e. a plain average of the term embeddings.
        self.term_weight = nn.Embedding(cfg.vocab_size, 1)
        nn.init.zeros_(self.term_weight.weight)
        self.user_table = nn.Embedding(num_users, d)
        nn.init.normal_(self.user_table.weight, std=d ** -0.5)  # same scale as OwnEmbeddings' tables
        if cfg.use_item_text:
            self.item_net = _two_layer(d, hidden, d, cfg.dropout)
            self.rec_item_net = self.item_net if cfg.share_item_network else _two_layer(d, hidden, d, cfg.dropout)
        self.search_match = _two_layer(d, match_hidden, 1, cfg.dropout)
        self.rec_match = _two_layer(d, match_hidden, 1, cfg.dropout)
        self._init_request_encoders()

    # ---- representations ---------------------------------------------------------------------------------------
    def _init_request_encoders(self) -> None:
        """φ_Q's network (φ′_U is the user table). JSR-Seq replaces this with its sequence encoders."""
        self.query_net = _two_layer(self.embed_dim, self.config.hidden_dim or self.embed_dim, self.embed_dim,
                                    self.config.dropout)

    def term_average(self, ids: torch.LongTensor, emb: SharedEmbeddings) -> torch.Tensor:
        """``[..., d]``: ``Σ_t softmax(W)(t) E(t)`` over the non-padding terms of ``ids [..., L]`` (zeros if empty)."""
        mask = ids > 0
        has_terms = mask.any(dim=-1, keepdim=True)
        logits = self.term_weight(ids % self.config.vocab_size).squeeze(-1)
        # Padding gets -inf; fully padded rows keep finite logits so softmax stays NaN-free, then are zeroed.
        logits = torch.where(has_terms, logits.masked_fill(~mask, float("-inf")), torch.zeros_like(logits))
        weights = torch.softmax(logits, dim=-1) * has_terms.to(logits.dtype)
        encoded = emb.encode_text(ids)
        return (weights.unsqueeze(-1).to(encoded.dtype) * encoded).sum(dim=-2)

    def item_vectors(self, index: torch.LongTensor, emb: SharedEmbeddings, task: str) -> torch.Tensor:
        """``[..., d]`` φ_I (``task="search"``) or φ′_I (``"recommend"``) of the items ``index`` (any shape)."""
        if task not in ("search", "recommend"):
            raise ValueError(f"task must be 'search' or 'recommend', got {task!r}")
        out = None
        if self.config.use_item_text:
            net = self.item_net if task == "search" else self.rec_item_net
            out = net(self.term_average(emb.item_text(index), emb))
        if self.config.use_item_embedding:
            out = emb.items(index) if out is None else out + emb.items(index)
        return out

    def _unique_item_vectors(self, index: torch.LongTensor, emb: SharedEmbeddings, task: str,
                             chunk: int | None = None) -> tuple[torch.Tensor, torch.LongTensor]:
        """φ of each distinct item of ``index`` once: ``(vectors [U, d], positions of index in them)``."""
        unique, inverse = torch.unique(index, return_inverse=True)
        if chunk is None or unique.numel() <= chunk:
            return self.item_vectors(unique, emb, task), inverse
        parts = [self.item_vectors(unique[s:s + chunk], emb, task) for s in range(0, unique.numel(), chunk)]
        return torch.cat(parts), inverse

    def request_vectors(self, batch: HeadBatch, emb: SharedEmbeddings, rows: torch.LongTensor,
                        task: str) -> torch.Tensor:
        """``[R, d]`` φ_Q (search) or φ′_U (recommend) of the batch rows ``rows``."""
        if task == "search":
            return self.query_net(self.term_average(batch.query[rows], emb))
        return self.user_table(batch.users[rows])

    # ---- matching ----------------------------------------------------------------------------------------------
    def _match(self, net: nn.Sequential, requests: torch.Tensor, items: torch.Tensor,
               columns: torch.LongTensor) -> torch.Tensor:
        """``[R, C]`` ψ logits of ``requests [R, d]`` ⊙ ``items[columns]`` (``columns`` [C] shared or [R, C]).

        ψ is non-linear in the Hadamard product, so every pair needs its own pass; the candidates go in column
        chunks so the ``[R, c, hidden]`` activations stay bounded even for the whole catalog.
        """
        rows = requests.shape[0]
        num_columns = columns.shape[-1]
        width = max(self.embed_dim, net[0].out_features)
        step = max(1, _CHUNK_ELEMENTS // max(1, rows * width))
        out = []
        for start in range(0, num_columns, step):
            cols = columns[..., start:start + step]
            vectors = items[cols]  # [c, d] or [R, c, d]
            if vectors.dim() == 2:
                vectors = vectors.unsqueeze(0)
            out.append(net(requests.unsqueeze(1) * vectors).squeeze(-1))
        if not out:
            return requests.new_zeros(rows, 0)
        return torch.cat(out, dim=1)

    def _scores(self, batch: HeadBatch, emb: SharedEmbeddings, candidates: torch.LongTensor,
                item_chunk: int | None) -> torch.Tensor:
        """``[B, C]`` logits: search rows through ψ(φ_Q ⊙ φ_I), recommendation rows through ψ′(φ′_U ⊙ φ′_I)."""
        shared = candidates.dim() == 1
        size = batch.size
        out = None
        for task, flags in (("search", batch.is_search), ("recommend", ~batch.is_search)):
            rows = flags.nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            requests = self.request_vectors(batch, emb, rows, task)
            index = candidates if shared else candidates[rows]
            items, columns = self._unique_item_vectors(index, emb, task, item_chunk)
            net = self.search_match if task == "search" else self.rec_match
            block = self._match(net, requests, items, columns)
            if out is None:
                out = block.new_zeros(size, candidates.shape[-1])
            out = out.index_put((rows,), block)
        if out is None:  # an empty batch
            return torch.zeros(size, candidates.shape[-1], device=candidates.device)
        return out

    # ---- the head interface ------------------------------------------------------------------------------------
    def row_losses(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B]`` per-row loss of logits ``[B, 1 + N]`` (column 0 positive) under ``config.loss``."""
        if self.config.loss == "pointwise":
            labels = torch.zeros_like(logits)
            labels[:, 0] = 1.0
            return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(dim=1)
        psi = torch.sigmoid(logits) if self.config.sigmoid_output else logits
        # -log exp(ψ+)/(exp(ψ+)+exp(ψ−)) = softplus(ψ− − ψ+), averaged over the row's negatives.
        return F.softplus(psi[:, 1:] - psi[:, :1]).mean(dim=1)

    def forward(self, batch: HeadBatch, emb: SharedEmbeddings) -> HeadOutput:
        """Logits of target + negatives per row and ``L = L_IR + L_RS`` (terms ``"ir"``/``"rs"``)."""
        if batch.size == 0:
            raise ValueError("JSR forward needs a non-empty batch")
        if bool((batch.target < 0).any()):
            raise ValueError("JSR forward needs a target for every row (target -1 is inference-only; use score())")
        if batch.negatives.shape[1] < 1:
            raise ValueError("JSR forward needs at least one sampled negative per row (batch.negatives is [B, 0])")
        logits = self._scores(batch, emb, batch.candidates(), item_chunk=None)
        losses = self.row_losses(logits)
        search = batch.is_search.to(losses.dtype)
        ir = (losses * search).sum() / batch.size
        rs = (losses * (1.0 - search)).sum() / batch.size
        return HeadOutput(loss=ir + rs, scores=logits, terms={"ir": ir.detach(), "rs": rs.detach()})

    def score(self, batch: HeadBatch, emb: SharedEmbeddings, candidates: torch.LongTensor) -> torch.Tensor:
        """``[B, C]`` ψ/ψ′ logits of ``candidates`` (``[C]`` shared, or ``[B, C]``); φ_I is computed once per item."""
        if candidates.dim() not in (1, 2) or (candidates.dim() == 2 and candidates.shape[0] != batch.size):
            raise ValueError(f"candidates must be [C] or [B={batch.size}, C], got {tuple(candidates.shape)}")
        if bool((candidates < 0).any()):
            raise ValueError("candidates must be catalog indices >= 0")
        return self._scores(batch, emb, candidates, item_chunk=_ITEM_CHUNK)


# ---- JSR-Seq ---------------------------------------------------------------------------------------------------
@dataclass
class JSRSeqConfig(JSRConfig):
    """JSR-Seq: JSR with UnifiedSSR's sequence encoders in place of φ_Q's MLP and the user table."""

    # UnifiedSSR §4.1.4: L = 2 Siamese Encoder layers on the Amazon datasets.
    num_layers: int = 2
    # UnifiedSSR does not report the number of attention heads -> 2 (must divide embed_dim).
    num_heads: int = 2
    # UnifiedSSR §4.1.1: histories capped at 100 (+1 for the current query); longer inputs keep their last steps.
    max_len: int = 101

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        _check_int(owner, "num_layers", self.num_layers, 1)
        _check_int(owner, "num_heads", self.num_heads, 1)
        _check_int(owner, "max_len", self.max_len, 2)


def _safe_padding(pad: torch.BoolTensor) -> torch.BoolTensor:
    """Key-padding mask with fully padded rows unmasked: attention over no key at all would give NaN."""
    return pad & ~pad.all(dim=-1, keepdim=True)


class SiameseLayer(nn.Module):
    """One UnifiedSSR Siamese Encoder layer (Eq. 3-4): MSA per branch, then cross-attention and FFN, post-norm."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.ffn = _two_layer(dim, 2 * dim, dim, dropout)  # UnifiedSSR §4.1.4: FFN width twice the embedding size
        self.norm_self, self.norm_cross, self.norm_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def _self(self, x: torch.Tensor, pad: torch.BoolTensor) -> torch.Tensor:
        """Residual multi-head self-attention."""
        attended, _ = self.self_attn(x, x, x, key_padding_mask=pad, need_weights=False)
        return self.norm_self(x + self.drop(attended))

    def _cross_ffn(self, x: torch.Tensor, context: torch.Tensor, pad: torch.BoolTensor) -> torch.Tensor:
        """Residual cross-attention to ``context`` then the residual FFN."""
        attended, _ = self.cross_attn(x, context, context, key_padding_mask=pad, need_weights=False)
        y = self.norm_cross(x + self.drop(attended))
        return self.norm_ffn(y + self.drop(self.ffn(y)))

    def forward(self, products: torch.Tensor, product_pad: torch.BoolTensor, queries: torch.Tensor | None = None,
                query_pad: torch.BoolTensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(H^p, H^q)``; without a query branch the cross-attention attends to the product branch (Eq. 4)."""
        hp = self._self(products, product_pad)
        if queries is None:
            return self._cross_ffn(hp, hp, product_pad), None
        hq = self._self(queries, query_pad)
        return self._cross_ffn(hp, hq, query_pad), self._cross_ffn(hq, hp, product_pad)


class SequenceEncoder(nn.Module):
    """A stack of :class:`SiameseLayer` with learned positions counted from the most recent step."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, max_len: int, dropout: float):
        super().__init__()
        self.max_len = max_len
        self.positions = nn.Embedding(max_len + 1, dim)
        self.layers = nn.ModuleList(SiameseLayer(dim, num_heads, dropout) for _ in range(num_layers))
        self.drop = nn.Dropout(dropout)

    def _embed(self, x: torch.Tensor, offset: int) -> torch.Tensor:
        """Add position ``offset + steps-from-the-end`` (left-padded sequences: the last step is the newest)."""
        length = x.shape[1]
        pos = torch.arange(length - 1, -1, -1, device=x.device) + offset
        return self.drop(x + self.positions(pos.clamp(max=self.max_len)))

    def forward(self, products: torch.Tensor, product_pad: torch.BoolTensor, queries: torch.Tensor | None = None,
                query_pad: torch.BoolTensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Last-step representations ``(f^p [R, d], f^q [R, d] or None)``.

        With a query branch, the query sequence is one step longer (the current query), so product step ``t``
        gets position ``1 + steps-from-end`` and meets query step ``t`` at the same position.
        """
        product_pad = _safe_padding(product_pad)
        hp = self._embed(products, 1 if queries is not None else 0)
        hq = None
        if queries is not None:
            query_pad = _safe_padding(query_pad)
            hq = self._embed(queries, 0)
        for layer in self.layers:
            hp, hq = layer(hp, product_pad, hq, query_pad)
        return hp[:, -1], (hq[:, -1] if hq is not None else None)


@register_head("jsr-seq")
class JSRSeqHead(JSRHead):
    """JSR-Seq: φ_Q and φ′_U are separate-parameter sequence encoders (UnifiedSSR §4.1.2); the rest is JSR."""

    config_class = JSRSeqConfig

    def __init__(self, config: JSRSeqConfig, embed_dim: int, num_users: int):
        if isinstance(config, JSRSeqConfig) and embed_dim % config.num_heads:
            raise ValueError(f"JSRSeqConfig.num_heads={config.num_heads} must divide embed_dim={embed_dim}")
        super().__init__(config, embed_dim, num_users)

    def _init_request_encoders(self) -> None:
        """Two encoders of the same architecture, separate parameters (search; recommendation)."""
        cfg = self.config
        self.search_encoder = SequenceEncoder(self.embed_dim, cfg.num_layers, cfg.num_heads, cfg.max_len, cfg.dropout)
        self.rec_encoder = SequenceEncoder(self.embed_dim, cfg.num_layers, cfg.num_heads, cfg.max_len, cfg.dropout)
        self.branch_weight = nn.Parameter(torch.tensor(0.5))  # UnifiedSSR Eq. 11's learnable w

    @staticmethod
    def _nonempty(index: torch.LongTensor) -> torch.LongTensor:
        """Give a ``[R, 0]`` item sequence one padding column (attention needs at least one key)."""
        if index.shape[1] > 0:
            return index
        return torch.full((index.shape[0], 1), -1, dtype=index.dtype, device=index.device)

    def request_vectors(self, batch: HeadBatch, emb: SharedEmbeddings, rows: torch.LongTensor,
                        task: str) -> torch.Tensor:
        """``[R, d]``: the last step of the search (product + query branches) or recommendation encoder."""
        max_len = self.config.max_len
        user = self.user_table(batch.users[rows]).unsqueeze(1)  # UnifiedSSR §3.3: e^u added to every step
        if task == "recommend":
            history = self._nonempty(batch.history[rows][:, -max_len:])
            products = emb.items(history) + user
            return self.rec_encoder(products, history < 0)[0]
        items = self._nonempty(batch.search_items[rows][:, -(max_len - 1):])
        past_queries = batch.search_queries[rows][:, -(max_len - 1):]
        current = batch.query[rows].unsqueeze(1)
        if past_queries.shape[1] != items.shape[1]:  # the [R, 0] case padded above
            past_queries = past_queries.new_zeros(items.shape[0], items.shape[1], current.shape[2])
        length = max(past_queries.shape[2], current.shape[2])  # 0-pad both to one query length
        queries = torch.cat([F.pad(past_queries, (0, length - past_queries.shape[2])),
                             F.pad(current, (0, length - current.shape[2]))], dim=1)
        query_vectors = self.term_average(queries, emb) + user
        f_p, f_q = self.search_encoder(emb.items(items) + user, items < 0, query_vectors, ~(queries > 0).any(-1))
        w = self.branch_weight
        return w * f_p + (1.0 - w) * f_q
