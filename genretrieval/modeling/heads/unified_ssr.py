"""UnifiedSSR (Xie et al., "UnifiedSSR: A Unified Framework of Sequential Search and Recommendation") as a head.

Architecture (paper §3.3-3.7), registered as ``"unified-ssr"``:

* **Embedding module (§3.3).** Product step ``t``: ``e^p_t + e^u + P_t``; query step ``t``: ``e^q_t + e^u + P_t``
  where ``e^q`` is the mean of the query's term encodings (``emb.encode_text``, mean over non-padding terms).
  Item vectors come from ``emb.items`` (shared with the generative model in auxiliary mode); the user table and the
  learned positions ``P`` are the head's own.
* **Siamese encoder (§3.4, Eq. 3-4).** ``L`` layers, each MSA -> MCA -> FFN (width ``2d``, ReLU), every sub-layer with
  a residual connection, layer norm and dropout; the two branches share all parameters. On a search row the product
  branch's MCA attends to the query branch's MSA output and vice versa (Eq. 3); on a recommendation row the query
  branch is deactivated and the product branch's MCA attends to its own MSA output (Eq. 4). The choice is made per
  row, so one batch may mix both scenarios.
* **Intent-oriented session modelling (§3.5, Eq. 5-8).** Each sequence is cut into ``N`` uniform chunks; their mean
  representations give (Eq. 6) ``f(H) = ReLU(Concat[Mean(H_{s_1}); ...; Mean(H_{s_N})]) W``, from which (Eq. 5) the
  centre offsets ``Δx = tanh(·)`` and half-lengths ``s = ReLU(tanh(· + b))`` move session ``i`` to
  ``(x_i + Δx_i − s_i, x_i + Δx_i + s_i)``. Sessions are mean-pooled (Eq. 7) and added to their members (Eq. 8).
* **Losses (Eq. 9, 12, 13).** ``L = L_pred + α L_ssl``; ``L_pred`` is Eq. 12's BCE with sampled negatives;
  ``L_ssl`` is Eq. 9 on search rows and its product-only form on recommendation rows.
* **Predictors (Eq. 10-11).** Recommendation: ``f^p_r · e^p``; search: ``(w f^p_s + (1 − w) f^q_s) · e^p``, ``w``
  learnable. ``f`` is the last step of the session-enhanced sequence ``F``.
* **Two-stage schedule (§3.7).** :meth:`UnifiedSSRHead.training_stages` asks for alternating-scenario joint
  pre-training, then per-task fine-tuning (``pretrain_fraction`` of the epochs go to the first stage).

Where the paper is open (also in ``docs/heads.md``, section "UnifiedSSR"):

* **Product sequences.** As in §3.1, the two scenarios have their own product sequences: a search row's product
  branch is the items clicked in the user's earlier searches (``batch.search_items``, ``S^p_s``), synchronised with
  the query branch (the earlier searches' queries, then the current query: ``T_s + 1`` steps); a recommendation
  row's product branch is the rec history (``batch.history``, ``S^p_r``). Rec items never enter a search row's
  sequence nor vice versa; sharing happens through the parameters, as the paper intends.
* **Positions.** Learned, indexed by the step within the real (unpadded, truncated to ``max_len``) sequence,
  ``1..T``, so product step ``t`` and query step ``t`` share ``P_t`` and the current query gets ``P_{T_s+1}``;
  left padding never shifts positions.
* **Empty product sequence** (a search with no earlier search click, a rec request with no history): the last slot
  becomes a placeholder token ``0 + e^u + P_0`` (the user alone), so ``f^p`` is defined and personalised.
* **Sessions on variable lengths.** Sessions live on the real part of each sequence, ``[0, n)``, with position ``j``
  occupying the cell ``[j, j+1)``; initial centres ``x_i = (i + ½) n/N``. ``Δx`` and ``s`` are in units of the chunk
  length ``n/N`` (as in the deformable patches of the paper's ref. [7] and the authors' code): ``Δx ∈ (−1, 1)``
  moves a centre by less than one chunk, ``s ∈ [0, 1)`` gives half-lengths up to one chunk. ``W`` is zero-initialised
  and ``b = atanh(½)``, so training starts from exactly the paper's uniform sessions ``x ± n/(2N)``. ``W`` maps the
  concatenated chunk means to ``2N`` outputs, split into offsets and lengths (a literally shared ``f(H)`` would tie
  each session's shift to its width). One locator is shared by the two branches and the two scenarios.
* **Membership** (the paper's ``x^left ≤ j < x^right`` is not differentiable in the offsets it is meant to learn):
  ``session_mask="hard"`` (default) uses the paper's indicator, read as "cell centre ``j + ½`` in the range", in
  the forward pass and the gradient of the soft membership (the covered fraction of the cell) in the backward pass
  (straight-through); ``"soft"`` uses the covered fraction in both. The two agree whenever the range ends are
  integers (e.g. the initial sessions when ``N`` divides ``n``). A session's mean divides by ``max(1, Σ membership)``
  so an empty session is the zero vector and sub-position sessions fade out smoothly. In Eq. 9 a session holding
  less than one position (``Σ membership < 1``; in hard mode: no member) is empty: its similarities are 0 with no
  gradient (a cosine against a near-zero vector would send ~1/eps gradients into the locator).
* **Encoder details.** Pre-layer-norm sub-layers ``x + Dropout(Sublayer(LN(x)))`` with a final layer norm (SASRec
  [15] and the authors' code); MCA normalises queries and keys/values with the same layer norm. No causal mask: every
  step is in the past of the predicted one. Attention over an empty key set outputs zeros.
* **Eq. 11's ``w``** is ``sigmoid(logit)``, initialised to 0.5, so it stays a convex weight.
* **Batch reduction.** Eq. 12 sums over a row's negatives; rows are averaged. ``L_ssl`` (Eq. 9, a plain sum over
  sessions) is averaged over rows. ``HeadOutput.terms`` holds ``pred`` (``L_pred``) and ``ssl`` (``α L_ssl``).
* **Unknown user** (index 0) adds a zero user vector.
* **Defaults the paper does not state** (heads 4, dropout 0.5, 4 negatives) are the authors' code defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .base import Head, HeadBatch, HeadConfig, HeadOutput, SharedEmbeddings, register_head

_SESSION_MASKS = ("hard", "soft")


@dataclass
class UnifiedSSRConfig(HeadConfig):
    """UnifiedSSR hyper-parameters; defaults are the paper's Amazon settings (§4.1.4) unless commented otherwise."""

    dropout: float = 0.5  # authors' code default (--dropout 0.5); the paper does not state it
    num_negatives: int = 4  # authors' code default (--train_num_neg 4); the paper does not state it
    num_layers: int = 2  # L, Siamese encoder layers (§4.1.4: 2 on Amazon, 3 on JDsearch)
    num_heads: int = 4  # h, attention heads (authors' code default; the paper does not state it)
    num_sessions: int = 2  # N, intent-oriented sessions (§4.1.4: 2 on Amazon, 4 on JDsearch)
    ssl_weight: float = 0.1  # α in Eq. 13 (§4.1.4, §4.3.1)
    max_len: int = 100  # most recent steps kept per sequence (§4.1.1: maximum sequence length 100)
    ffn_factor: int = 2  # FFN hidden width = ffn_factor * d (§4.1.4: "twice the embedding dimension")
    session_mask: str = "hard"  # "hard" (paper's indicator, straight-through gradient) or "soft" (see module doc)
    pretrain_fraction: float = 0.8  # share of epochs in joint pre-training (paper: 8:2 pre-training/fine-tuning data)
    search_weight_init: float = 0.5  # initial w of Eq. 11 (authors' code initialises it to 0.5)

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        for name, minimum in (("num_layers", 1), ("num_heads", 1), ("num_sessions", 1), ("max_len", 1),
                              ("ffn_factor", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{owner}.{name} must be an integer >= {minimum}, got {value!r}")
        weight = self.ssl_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (0.0 <= weight < math.inf):
            raise ValueError(f"{owner}.ssl_weight must be a finite number >= 0, got {self.ssl_weight!r}")
        if self.session_mask not in _SESSION_MASKS:
            raise ValueError(f"{owner}.session_mask must be one of {_SESSION_MASKS}, got {self.session_mask!r}")
        if not (isinstance(self.pretrain_fraction, (int, float)) and 0.0 <= self.pretrain_fraction <= 1.0):
            raise ValueError(f"{owner}.pretrain_fraction must be in [0, 1], got {self.pretrain_fraction!r}")
        if not (isinstance(self.search_weight_init, (int, float)) and 0.0 < self.search_weight_init < 1.0):
            raise ValueError(f"{owner}.search_weight_init must be in (0, 1), got {self.search_weight_init!r}")


# ----------------------------------------------------------------------------------------------------------------
# Intent-oriented session modelling: pure functions (unit-tested on hand-built inputs)
# ----------------------------------------------------------------------------------------------------------------


def session_ranges(offsets: torch.Tensor, half_lengths: torch.Tensor,
                   lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5's session ranges ``(x + Δx − s, x + Δx + s)`` on sequences of real lengths ``lengths [B]``.

    ``offsets`` (``Δx``) and ``half_lengths`` (``s``) are ``[B, N]`` in units of the chunk length ``n/N``; the
    uniform centres are ``x_i = (i + ½) n/N``. Returns ``(left, right)``, each ``[B, N]``, in positions ``[0, n)``.
    """
    num_sessions = offsets.shape[-1]
    chunk = lengths.to(offsets.dtype).unsqueeze(-1) / num_sessions  # [B, 1]
    centres = (torch.arange(num_sessions, device=offsets.device, dtype=offsets.dtype) + 0.5) * chunk
    centre = centres + offsets * chunk
    half = half_lengths * chunk
    return centre - half, centre + half


def session_membership(left: torch.Tensor, right: torch.Tensor, lengths: torch.Tensor, width: int,
                       mode: str = "hard") -> torch.Tensor:
    """``[B, N, width]`` membership of each (right-aligned, left-padded) slot in each session ``[left, right)``.

    A sequence of real length ``n`` fills the last ``n`` slots; its position ``j`` occupies ``[j, j+1)``. ``"soft"``:
    the covered fraction of that cell; ``"hard"``: the paper's indicator (cell centre ``j + ½`` in the range) in the
    forward pass with the soft membership's gradient (straight-through). Padding slots are never members.
    """
    if mode not in _SESSION_MASKS:
        raise ValueError(f"session membership mode must be one of {_SESSION_MASKS}, got {mode!r}")
    slots = torch.arange(width, device=left.device)
    pos = (slots.unsqueeze(0) - (width - lengths).unsqueeze(1)).to(left.dtype)  # [B, W]; < 0 at padding
    real = (pos >= 0).unsqueeze(1)  # [B, 1, W]
    pos = pos.unsqueeze(1)
    lo, hi = left.unsqueeze(-1), right.unsqueeze(-1)  # [B, N, 1]
    soft = (torch.minimum(pos + 1.0, hi) - torch.maximum(pos, lo)).clamp(0.0, 1.0) * real
    if mode == "soft":
        return soft
    centre = pos + 0.5
    hard = ((centre >= lo) & (centre < hi) & real).to(soft.dtype)
    return hard + soft - soft.detach()


def pool_sessions(membership: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Eq. 7: ``[B, N, d]`` session means of ``hidden [B, W, d]``; dividing by ``max(1, Σ membership)`` makes an
    empty session the zero vector and keeps gradients bounded for sessions narrower than one position."""
    total = membership.sum(-1, keepdim=True).clamp(min=1.0)
    return membership @ hidden / total


def ssl_loss(product_sessions: torch.Tensor, query_sessions: torch.Tensor | None, is_search: torch.BoolTensor,
             product_valid: torch.BoolTensor | None = None,
             query_valid: torch.BoolTensor | None = None) -> torch.Tensor:
    """Eq. 9 per row ``[B]``: adjacent-session similarity within each sequence minus product/query session alignment.

    Recommendation rows (``is_search`` False) keep only the product term, as §3.5.2 prescribes; ``query_sessions``
    may be None when no row is a search. ``Sim`` is the cosine similarity. ``*_valid [B, N]`` mark sessions that hold
    at least one position: a pair with an empty session has ``Sim = 0`` and no gradient (the cosine of a zero vector
    would otherwise send ~1/eps gradients through the straight-through membership).
    """
    def sim(x: torch.Tensor, y: torch.Tensor, valid: torch.BoolTensor | None) -> torch.Tensor:
        """Cosine similarity of ``[B, K, d]`` pairs, 0 where ``valid`` is False."""
        value = F.cosine_similarity(x, y, dim=-1, eps=1e-8)
        return value if valid is None else torch.where(valid, value, torch.zeros_like(value))

    def both(a: torch.BoolTensor | None, b: torch.BoolTensor | None) -> torch.BoolTensor | None:
        """Pairwise validity (None: all valid)."""
        if a is None or b is None:
            return a if b is None else b
        return a & b

    def adjacent(sessions: torch.Tensor, valid: torch.BoolTensor | None) -> torch.Tensor:
        """Σ_i Sim(I_i, I_{i+1}) per row."""
        if sessions.shape[1] < 2:
            return sessions.new_zeros(sessions.shape[0])
        pair = None if valid is None else valid[:, :-1] & valid[:, 1:]
        return sim(sessions[:, :-1], sessions[:, 1:], pair).sum(-1)

    loss = adjacent(product_sessions, product_valid)
    if query_sessions is not None:
        align = sim(product_sessions, query_sessions, both(product_valid, query_valid)).sum(-1)
        search_term = adjacent(query_sessions, query_valid) - align
        loss = loss + torch.where(is_search, search_term, torch.zeros_like(search_term))
    return loss


class _SessionModel(nn.Module):
    """Eq. 5-8: locate ``N`` sessions from the chunk means, pool them and add them to their members."""

    def __init__(self, dim: int, num_sessions: int, mode: str):
        super().__init__()
        self.num_sessions, self.mode = num_sessions, mode
        self.locator = nn.Linear(num_sessions * dim, 2 * num_sessions, bias=False)  # W of Eq. 6
        # Zero W and b = atanh(1/2): the first sessions are exactly the paper's uniform initialisation x ± n/(2N).
        nn.init.zeros_(self.locator.weight)
        self.length_bias = nn.Parameter(torch.full((num_sessions,), math.atanh(0.5)))  # b of Eq. 5

    def forward(self, hidden: torch.Tensor,
                lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.BoolTensor]:
        """``hidden [B, W, d]`` right-aligned with real ``lengths [B]`` -> (enhanced ``F [B, W, d]``, ``I [B, N, d]``,
        ``[B, N]`` True where a session holds at least one position)."""
        batch, width, _ = hidden.shape
        zeros = hidden.new_zeros(batch, self.num_sessions)
        left0, right0 = session_ranges(zeros, zeros + 0.5, lengths)
        chunks = pool_sessions(session_membership(left0, right0, lengths, width, self.mode).detach(), hidden)
        raw = self.locator(F.relu(chunks).flatten(1))  # Eq. 6
        offsets = torch.tanh(raw[:, : self.num_sessions])  # Eq. 5
        half_lengths = F.relu(torch.tanh(raw[:, self.num_sessions:] + self.length_bias))
        left, right = session_ranges(offsets, half_lengths, lengths)
        membership = session_membership(left, right, lengths, width, self.mode)
        sessions = pool_sessions(membership, hidden)  # Eq. 7
        valid = membership.detach().sum(-1) >= 1.0 - 1e-6
        return hidden + membership.transpose(1, 2) @ sessions, sessions, valid  # Eq. 8


# ----------------------------------------------------------------------------------------------------------------
# Siamese encoder
# ----------------------------------------------------------------------------------------------------------------


class _MultiHeadAttention(nn.Module):
    """Eq. 2's multi-head scaled dot-product attention with a key padding mask (an empty key set outputs zeros)."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, key_mask: torch.BoolTensor) -> torch.Tensor:
        """``query [B, Lq, d]`` attends over ``key_value [B, Lk, d]`` where ``key_mask [B, Lk]`` is True."""
        batch, lq, dim = query.shape
        lk = key_value.shape[1]
        q = self.q(query).view(batch, lq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k(key_value).view(batch, lk, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v(key_value).view(batch, lk, self.num_heads, self.head_dim).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        mask = key_mask[:, None, None, :]
        # A finite fill keeps fully masked rows NaN-free (their weights are zeroed just below).
        attn = torch.softmax(scores.masked_fill(~mask, torch.finfo(scores.dtype).min), dim=-1).masked_fill(~mask, 0.0)
        out = (self.dropout(attn) @ v).transpose(1, 2).reshape(batch, lq, dim)
        return self.o(out)


class _SiameseLayer(nn.Module):
    """One Siamese encoder layer (Eq. 3-4), applied to both branches with the same parameters."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.msa = _MultiHeadAttention(dim, num_heads, dropout)
        self.mca = _MultiHeadAttention(dim, num_heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def _self(self, x: torch.Tensor, mask: torch.BoolTensor) -> torch.Tensor:
        """MSA sub-layer with residual, layer norm and dropout."""
        normed = self.norms[0](x)
        return x + self.dropout(self.msa(normed, normed, mask))

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        """FFN sub-layer with residual, layer norm and dropout."""
        return x + self.dropout(self.ffn(self.norms[2](x)))

    def forward(self, xp: torch.Tensor, xq: torch.Tensor | None, p_mask: torch.BoolTensor,
                q_mask: torch.BoolTensor | None,
                is_search: torch.BoolTensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Product ``xp`` and query ``xq`` branches ``[B, W, d]``; ``xq`` None when no row is a search."""
        hp = self._self(xp, p_mask)
        np_ = self.norms[1](hp)
        if xq is None:
            return self._ffn(hp + self.dropout(self.mca(np_, np_, p_mask))), None  # Eq. 4 for every row
        hq = self._self(xq, q_mask)
        nq = self.norms[1](hq)
        # Per row: search rows cross-attend to the other branch (Eq. 3), rec rows to themselves (Eq. 4), so a rec
        # row never reads the (deactivated) query branch.
        rows = is_search[:, None]
        kv = torch.where(rows[..., None], nq, np_)
        kv_mask = torch.where(rows, q_mask, p_mask)
        out_p = self._ffn(hp + self.dropout(self.mca(np_, kv, kv_mask)))
        out_q = self._ffn(hq + self.dropout(self.mca(nq, np_, p_mask)))
        return out_p, out_q


def _left_pad(index: torch.Tensor, width: int, value: int) -> torch.Tensor:
    """``index [B, T, ...]`` left-padded with ``value`` (or left-truncated) along dimension 1 to ``width`` steps."""
    extra = width - index.shape[1]
    if extra <= 0:
        return index[:, index.shape[1] - width:]
    pad = index.new_full((index.shape[0], extra, *index.shape[2:]), value)
    return torch.cat([pad, index], dim=1)


def _check_left_padded(real: torch.BoolTensor, name: str) -> None:
    """Raise unless every row of ``real [B, T]`` is padding then real steps (the HeadBatch convention)."""
    if real.shape[1] > 1 and bool((real[:, :-1] & ~real[:, 1:]).any()):
        raise ValueError(f"UnifiedSSR needs batch.{name} left-padded with -1 (padding before the real steps)")


def _mean_query(emb: SharedEmbeddings, ids: torch.LongTensor) -> torch.Tensor:
    """``[K, d]`` query vectors: the mean of the term encodings over non-padding terms (§3.3); zeros if empty."""
    if ids.shape[0] == 0:
        return torch.zeros(0, emb.embed_dim, device=ids.device)
    enc = emb.encode_text(ids)
    mask = (ids != 0).unsqueeze(-1).to(enc.dtype)
    return (enc * mask).sum(-2) / mask.sum(-2).clamp(min=1.0)


@register_head("unified-ssr")
class UnifiedSSRHead(Head):
    """UnifiedSSR: Siamese product/query encoder, intent-oriented sessions, Eq. 10-13 (see the module docstring)."""

    config_class = UnifiedSSRConfig

    def __init__(self, config: UnifiedSSRConfig, embed_dim: int, num_users: int):
        super().__init__(config, embed_dim, num_users)
        if embed_dim % config.num_heads:
            raise ValueError(f"UnifiedSSRConfig.num_heads={config.num_heads} must divide embed_dim={embed_dim}")
        d = embed_dim
        self.user_table = nn.Embedding(num_users, d, padding_idx=0)
        # Position 0 is the placeholder of an empty product sequence; 1..max_len+1 are steps (queries have T_s + 1).
        self.positions = nn.Embedding(config.max_len + 2, d)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(_SiameseLayer(d, config.num_heads, config.ffn_factor * d, config.dropout)
                                    for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(d)
        self.sessions = _SessionModel(d, config.num_sessions, config.session_mask)
        w0 = config.search_weight_init
        self.search_weight_logit = nn.Parameter(torch.tensor(math.log(w0 / (1.0 - w0))))
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier initialisation (§4.1.4) of the encoder's projections; embeddings at the item tables' scale."""
        for layer in self.layers:
            for module in layer.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)
        std = self.embed_dim ** -0.5  # the scale of OwnEmbeddings' item rows, so e^u and P do not drown e^p
        nn.init.normal_(self.user_table.weight, std=std)
        nn.init.normal_(self.positions.weight, std=std)
        with torch.no_grad():
            self.user_table.weight[0].zero_()

    @property
    def search_weight(self) -> torch.Tensor:
        """Eq. 11's ``w`` in (0, 1)."""
        return torch.sigmoid(self.search_weight_logit)

    def training_stages(self, num_epochs: int) -> list[tuple[int, str]]:
        """§3.7: joint pre-training alternating the scenarios, then per-task fine-tuning (``pretrain_fraction``)."""
        if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
            raise ValueError(f"num_epochs must be an integer >= 1, got {num_epochs!r}")
        fraction = self.config.pretrain_fraction
        pre = int(round(num_epochs * fraction))
        if 0.0 < fraction < 1.0 and num_epochs >= 2:
            pre = min(max(pre, 1), num_epochs - 1)  # both stages get at least one epoch when there is room
        stages = [(pre, "alternate"), (num_epochs - pre, "per-task")]
        return [(n, mode) for n, mode in stages if n > 0]

    def encode(self, batch: HeadBatch, emb: SharedEmbeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: the user/request vector ``[B, d]`` (Eq. 10's ``f^p_r`` or Eq. 11's ``w f^p_s + (1 − w) f^q_s``)
        and ``L_ssl`` ``[B]`` (Eq. 9)."""
        cfg, device = self.config, batch.target.device
        is_search = batch.is_search.bool()
        any_search = bool(is_search.any())
        history = batch.history[:, -cfg.max_len:]
        s_items = batch.search_items[:, -cfg.max_len:]
        s_queries = batch.search_queries[:, -cfg.max_len:]
        _check_left_padded((history >= 0)[~is_search], "history")  # only the rows whose product branch uses it
        _check_left_padded((s_items >= 0)[is_search], "search_items")
        width = max(history.shape[1], s_items.shape[1] + 1)
        slots = torch.arange(width, device=device)
        user = self.user_table(batch.users).unsqueeze(1)

        # Product branch: earlier search clicks on search rows (S^p_s), the rec history on rec rows (S^p_r).
        products = torch.where(is_search[:, None], _left_pad(s_items, width, -1), _left_pad(history, width, -1))
        p_real = products >= 0
        p_len = p_real.sum(1)
        placeholder = (p_len == 0)[:, None] & (slots == width - 1)[None, :]
        p_mask = p_real | placeholder
        p_pos = torch.where(p_real, p_real.cumsum(1), torch.zeros_like(products))
        xp = self.embed_dropout(emb.items(products) + user + self.positions(p_pos))
        p_len = p_len.clamp(min=1)

        xq = q_mask = q_len = None
        if any_search:
            # Query branch: the earlier searches' queries then the current one, on search rows only (off on rec rows:
            # their queries are not even encoded).
            steps = (s_items >= 0) & is_search[:, None]  # [B, S]
            earlier = torch.zeros(*steps.shape, self.embed_dim, device=device)
            earlier = earlier.index_put((steps,), _mean_query(emb, s_queries[steps]))
            current = torch.zeros(steps.shape[0], self.embed_dim, device=device)
            current = current.index_put((is_search,), _mean_query(emb, batch.query[is_search]))
            lead = width - 1 - steps.shape[1]
            q_vecs = torch.cat([earlier.new_zeros(steps.shape[0], lead, self.embed_dim), earlier,
                                current.unsqueeze(1)], dim=1)
            q_mask = torch.cat([steps.new_zeros(steps.shape[0], lead), steps, is_search[:, None]], dim=1)
            q_pos = torch.where(q_mask, q_mask.cumsum(1), torch.zeros_like(products))
            q_len = q_mask.sum(1)
            xq = self.embed_dropout(q_vecs + user + self.positions(q_pos))

        for layer in self.layers:
            xp, xq = layer(xp, xq, p_mask, q_mask, is_search)
        hp = self.final_norm(xp)
        fp, ip, p_valid = self.sessions(hp, p_len)
        request = fp[:, -1]
        iq = q_valid = None
        if any_search:
            fq, iq, q_valid = self.sessions(self.final_norm(xq), q_len)
            w = self.search_weight
            request = torch.where(is_search[:, None], w * request + (1.0 - w) * fq[:, -1], request)
        return request, ssl_loss(ip, iq, is_search, p_valid, q_valid)

    def _dot(self, request: torch.Tensor, emb: SharedEmbeddings, candidates: torch.LongTensor) -> torch.Tensor:
        """``[B, C]`` inner products of the request vectors with the candidates' item vectors (Eq. 10-11)."""
        if candidates.dim() == 1:
            return request @ emb.items(candidates).T
        if candidates.dim() != 2 or candidates.shape[0] != request.shape[0]:
            raise ValueError(f"candidates must be [C] or [B={request.shape[0]}, C], got {tuple(candidates.shape)}")
        return torch.einsum("bd,bcd->bc", request, emb.items(candidates))

    def forward(self, batch: HeadBatch, emb: SharedEmbeddings) -> HeadOutput:
        """Scores of target + negatives; ``L = L_pred (Eq. 12) + α L_ssl (Eq. 9)`` (Eq. 13)."""
        request, ssl = self.encode(batch, emb)
        scores = self._dot(request, emb, batch.candidates())
        # Eq. 12: -[log σ(y+) + Σ_neg log(1 − σ(y−))] per row, averaged over rows.
        pred = -(F.logsigmoid(scores[:, 0]) + F.logsigmoid(-scores[:, 1:]).sum(1)).mean()
        ssl_term = self.config.ssl_weight * ssl.mean()
        # terms sum to the loss ("ssl" is α L_ssl), as the other heads' terms do.
        return HeadOutput(loss=pred + ssl_term, scores=scores,
                          terms={"pred": pred.detach(), "ssl": ssl_term.detach()})

    def score(self, batch: HeadBatch, emb: SharedEmbeddings, candidates: torch.LongTensor) -> torch.Tensor:
        """``[B, C]`` Eq. 10/11 scores; the request is encoded once per row, candidates scored by one product."""
        request, _ = self.encode(batch, emb)
        return self._dot(request, emb, candidates)
