"""SESRec (Si et al., SIGIR 2023): search-enhanced sequential recommendation with disentangled search interests.

The head follows Sec. 4 of the paper equation by equation:

* **Embedding (Eq. 1-3).** Rec sequence ``E_r = E_i W_i + P_r`` over ``emb.items(batch.history)``. Search sequence
  ``E_s = E_q W_q + Ẽ_c W_i + P_s + M_s``: one step per earlier search, its query vector is the mean of
  ``emb.encode_text(search_queries)`` over the non-padding terms (the paper's bag-of-words MEAN; our queries have no
  query-ID embedding, so that part of ``e^q`` is dropped) and its clicked-item vector is ``emb.items(search_items)``
  (our data has exactly one click per search step, so "mean of the clicked items" is that item).
* **Encoders (Eq. 4-5).** Two separate post-LN transformer encoders (bidirectional over the history, as in the
  authors' code), padding masked as keys and zeroed in the outputs.
* **Query-item alignment (Eq. 6-8).** ``s(q, i) = tanh(qᵀ W_A i)`` with a learnable temperature; InfoNCE from each
  query to its clicked item against ``align_negatives`` items sampled uniformly from the catalog, and from each
  clicked item to its query against the other queries of the batch (the only query pool a head has).
* **Interest contrast (Eq. 9-16).** Co-attention affinity ``A = tanh(H_s W_l H_rᵀ)``, similarity scores
  ``a^s = softmax(W_r H_rᵀ Aᵀ)``, ``a^r = softmax(W_s H_sᵀ A)``, hard split at ``1/T`` (similar: ``a_j > 1/T``,
  dissimilar: ``a_j <= 1/T``, ``T`` = the row's number of real positions), anchors / positives / negatives of
  Eq. 13-14 and the Euclidean triplet loss with margin ``m`` (Eq. 15), summed over the two behaviours (Eq. 16).
* **Multi-interest extraction and prediction (Eq. 17-21).** Candidate-aware attention ``hᵀ W_d e_v`` over all /
  similar / dissimilar positions of each sequence, then ``MLP(u_r || u_s || e_v || e_u)``.
* **Loss (Eq. 22-23).** ``L = L_rec + α L_ali + β L_con`` with ``L_rec`` the binary cross-entropy of the positive
  and the sampled negatives; the ``λ||Θ||`` term is left to the optimiser's weight decay.

Where the paper is silent (documented in docs/heads.md, "## SESRec"):

* **Search requests.** SESRec is a recommendation model. For rows with ``is_search`` the current query is appended
  to the search sequence as its latest step (query vector only, no click, type embedding 1 = "current query"; past
  searches have type 0) and the same MLP scores the candidates. Recommendation rows are exactly the paper's model.
* **Empty histories.** The paper drops requests without both histories; we keep them: an empty sequence gives zero
  interest vectors, and its co-attention scores are uniform.
* **Degenerate splits.** The similar set is empty when every score equals ``1/T`` (e.g. ``T = 1``). Such rows
  contribute no triplet (the authors' code falls back to the whole sequence, which then gives the constant ``m``
  and no gradient, so the gradients agree) and, for Eq. 18-19 only, the empty set falls back to the whole sequence
  as in the authors' code.
* **Positions.** Learned, aligned on the most recent step (index ``max_len - 1`` is always the latest), because
  the batches are left-padded; longer histories keep the most recent ``max_len`` steps.
* **Details from the authors' code** (github.com/Ethan00Si/SESREC-SIGIR-2023): 1 layer, 4 heads, feed-forward
  width = ``d`` with LeakyReLU, temperature initialised at 0.1, 1024 sampled alignment negatives, MLP 200-80,
  separate ``W_d`` for the two sequences, the positive included in the InfoNCE denominator. The temperature is kept
  positive by learning its logarithm (clamped at 0.01) rather than the raw value.

Ablation (Table 3): ``alignment=False`` drops ``L_ali``, ``contrast=False`` drops ``L_con`` and
``multi_interest=False`` keeps only the aggregated interests; all three off is the paper's "Base".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .base import Head, HeadBatch, HeadConfig, HeadOutput, SharedEmbeddings, pairwise_bce, register_head

CURRENT_QUERY_TYPE = 1  # type embedding of the appended current query (past searches use 0)


@dataclass
class SESRecConfig(HeadConfig):
    """SESRec hyper-parameters; defaults are the paper's Amazon settings (Sec. 5.1.4) or the authors' code."""

    dropout: float = 0.1  # authors' code (config/SESRec_amazon.yaml: dropout 0.1); the paper does not say
    num_layers: int = 1  # transformer layers per encoder: authors' code (num_blocks 1); the paper does not say
    num_heads: int = 4  # attention heads: authors' code (num_heads 4, Amazon); the paper does not say
    hidden_dim: int | None = None  # d of Eq. 1; None = the shared embed_dim (paper: d = d_i = d_q = 32 on Amazon)
    ffn_dim: int | None = None  # feed-forward width; None = d (authors' code: inner_size = hidden size)
    user_dim: int | None = None  # user embedding e_u of Eq. 21; None = d (paper: same size as the item vectors)
    max_rec_len: int = 15  # recommendation history kept: paper Sec. 5.1.4 (15 on Amazon, 150 on Kuaishou)
    max_search_len: int = 15  # search history kept: paper Sec. 5.1.4 (15 on Amazon, 25 on Kuaishou)
    alpha: float = 0.1  # weight of L_ali, Eq. 23: paper Sec. 5.1.4 and Fig. 5
    beta: float = 0.001  # weight of L_con, Eq. 23: paper Sec. 5.1.4 and Fig. 5
    margin: float = 0.1  # triplet margin m, Eq. 15: paper Sec. 5.1.4
    temperature: float = 0.1  # initial learnable τ of Eq. 6-7: authors' code (infoNCE_temp 0.1)
    align_negatives: int = 1024  # |I_neg| of Eq. 6, sampled from the catalog: authors' code (infoNCE_neg_sample)
    mlp_hidden: tuple[int, ...] = (200, 80)  # "two-layer MLP" of Eq. 21: authors' code (pred_hid_units 200, 80)
    alignment: bool = True  # False: no L_ali (Table 3 ablation)
    contrast: bool = True  # False: no L_con (Table 3 ablation)
    multi_interest: bool = True  # False: only the aggregated interests u^all (Table 3 "Base" without MIE)
    score_chunk: int = 65536  # (request, candidate) pairs per chunk in score(): bounds memory on the whole catalog

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if isinstance(self.mlp_hidden, list):  # a config read back from JSON
            self.mlp_hidden = tuple(self.mlp_hidden)
        for key in ("num_layers", "num_heads", "max_rec_len", "max_search_len", "align_negatives", "score_chunk"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}.{key} must be an integer >= 1, got {value!r}")
        for key in ("hidden_dim", "ffn_dim", "user_dim"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}.{key} must be None or an integer >= 1, got {value!r}")
        for key in ("alpha", "beta"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}.{key} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.margin, (int, float)) and math.isfinite(self.margin) and self.margin > 0):
            raise ValueError(f"{name}.margin must be a finite number > 0 (Eq. 15 needs a positive margin), "
                             f"got {self.margin!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise ValueError(f"{name}.temperature must be a finite number > 0, got {self.temperature!r}")
        if not isinstance(self.mlp_hidden, tuple) or not self.mlp_hidden or any(
                isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.mlp_hidden):
            raise ValueError(f"{name}.mlp_hidden must be a non-empty sequence of integers >= 1, "
                             f"got {self.mlp_hidden!r}")
        for key in ("alignment", "contrast", "multi_interest"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{name}.{key} must be a bool, got {getattr(self, key)!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks (module-level so the tests can check them on hand-built inputs)
# ---------------------------------------------------------------------------------------------------------------------

def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over the ``mask``-ed entries; masked entries get 0, and a row with no entry gets all zeros."""
    weights = torch.softmax(logits.masked_fill(~mask, torch.finfo(logits.dtype).min), dim=dim)
    # An all-masked row comes out uniform; multiplying by the mask makes it zero instead of attending to padding.
    return weights * mask.to(weights.dtype)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values [..., T, d]`` over the positions where ``mask [..., T]`` holds (zeros where none does)."""
    weights = mask.to(values.dtype)
    return (values * weights.unsqueeze(-1)).sum(-2) / weights.sum(-1, keepdim=True).clamp(min=1.0)


def similarity_split(scores: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 11-12: ``(similar, dissimilar)`` position masks; similar iff ``score > 1/T``, ``T`` = real positions."""
    length = mask.sum(-1, keepdim=True).clamp(min=1).to(scores.dtype)
    threshold = 1.0 / length
    return mask & (scores > threshold), mask & (scores <= threshold)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq. 15 per row: ``max(d(a, p) - d(a, n) + m, 0)`` with Euclidean ``d`` (``[..., d]`` -> ``[...]``)."""
    # pairwise_distance adds a tiny eps, so the gradient stays finite when a point coincides with the anchor.
    return F.relu(F.pairwise_distance(anchor, positive) - F.pairwise_distance(anchor, negative) + margin)


def alignment_loss(queries: torch.Tensor, items: torch.Tensor, negative_items: torch.Tensor, w_a: torch.Tensor,
                   temperature: torch.Tensor | float, item_ids: torch.Tensor | None = None,
                   negative_item_ids: torch.Tensor | None = None,
                   query_keys: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 6-8: ``½ (L_q2i + L_i2q)`` averaged over the ``P`` (query, clicked item) pairs.

    ``queries``/``items`` are ``[P, d]`` (row j is a pair), ``negative_items`` ``[M, d]`` the sampled ``I_neg``;
    the query-side negatives ``Q_neg`` are the other pairs' queries. ``s(q, i) = tanh(qᵀ W_A i)`` in both directions.
    A sampled item equal to the pair's item (``item_ids`` vs ``negative_item_ids``) and another pair's query with the
    same text (``query_keys``) are not negatives. The positive is part of each softmax (the usual InfoNCE form).
    """
    projected = queries @ w_a  # [P, d]
    positive = torch.tanh((projected * items).sum(-1, keepdim=True))  # [P, 1]
    to_items = torch.tanh(projected @ negative_items.T)  # [P, M]
    logits = torch.cat([positive, to_items], dim=1) / temperature
    fill = torch.finfo(logits.dtype).min
    if item_ids is not None and negative_item_ids is not None:
        false_negative = item_ids.unsqueeze(1) == negative_item_ids.unsqueeze(0)
        logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(false_negative, fill)], dim=1)
    target = torch.zeros(queries.shape[0], dtype=torch.long, device=queries.device)
    q2i = F.cross_entropy(logits, target)

    # Column j of tanh(Q W_A Iᵀ) scores item j against every pair's query; its own query sits on the diagonal.
    logits = torch.tanh(projected @ items.T).T / temperature  # [P items, P queries]
    if query_keys is not None:
        own = torch.eye(queries.shape[0], dtype=torch.bool, device=queries.device)
        logits = logits.masked_fill((query_keys.unsqueeze(0) == query_keys.unsqueeze(1)) & ~own, fill)
    i2q = F.cross_entropy(logits, torch.arange(queries.shape[0], device=queries.device))
    return 0.5 * (q2i + i2q)


class _TransformerLayer(nn.Module):
    """Post-LN transformer layer (Eq. 4-5) whose attention ignores padded keys and never produces NaN."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.LeakyReLU(), nn.Linear(ffn_dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x [B, T, d]``, ``mask [B, T]`` (True = real position) -> ``[B, T, d]``."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // self.num_heads)  # [B, h, T, T]
        # masked_softmax rather than -inf: an empty history would otherwise give NaN rows.
        weights = masked_softmax(logits, mask[:, None, None, :])
        attended = (weights @ v).transpose(1, 2).reshape(b, t, d)
        x = self.norm1(x + self.dropout(self.out(attended)))
        return self.norm2(x + self.dropout(self.ffn(x)))


class _Encoder(nn.Module):
    """A stack of :class:`_TransformerLayer`; padded positions of the output are zero."""

    def __init__(self, num_layers: int, dim: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(_TransformerLayer(dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x [B, T, d]``, ``mask [B, T]`` -> contextual ``H [B, T, d]`` (zeros at padding)."""
        for layer in self.layers:
            x = layer(x, mask)
        # Zeroing here keeps padding out of the co-attention products and the anchors.
        return x * mask.unsqueeze(-1).to(x.dtype)


@dataclass
class _Sequence:
    """One encoded behaviour sequence and its split."""

    hidden: torch.Tensor  # [B, T, d]
    mask: torch.Tensor  # [B, T] real positions
    similar: torch.Tensor | None = None  # [B, T] P of Eq. 11-12 (None when the split is not needed)
    dissimilar: torch.Tensor | None = None  # [B, T] N
    scores: torch.Tensor | None = None  # [B, T] a^r / a^s of Eq. 10


@dataclass
class _UserState:
    """Everything about the requests that does not depend on the candidate."""

    rec: _Sequence
    search: _Sequence
    user: torch.Tensor  # [B, user_dim]


@register_head("sesrec")
class SESRecHead(Head):
    """SESRec (Si et al., SIGIR 2023); see the module docstring for the equations and the documented choices."""

    config_class = SESRecConfig
    supported_tasks = ("search", "recommend")
    config: SESRecConfig

    def __init__(self, config: SESRecConfig, embed_dim: int, num_users: int):
        super().__init__(config, embed_dim, num_users)
        c = config
        d = c.hidden_dim or embed_dim
        if d % c.num_heads:
            raise ValueError(f"SESRecConfig.num_heads={c.num_heads} must divide the hidden size d={d} "
                             f"(hidden_dim={c.hidden_dim!r}, embed_dim={embed_dim})")
        self.dim = d
        self.item_proj = nn.Linear(embed_dim, d, bias=False)  # W_i of Eq. 1
        self.query_proj = nn.Linear(embed_dim, d, bias=False)  # W_q of Eq. 1
        self.rec_position = nn.Embedding(c.max_rec_len, d)  # P_r of Eq. 2
        self.search_position = nn.Embedding(c.max_search_len + 1, d)  # P_s of Eq. 3 (+1: the current query)
        self.search_type = nn.Embedding(2, d)  # M_s of Eq. 3: past search / current query
        self.rec_encoder = _Encoder(c.num_layers, d, c.num_heads, c.ffn_dim or d, c.dropout)
        self.search_encoder = _Encoder(c.num_layers, d, c.num_heads, c.ffn_dim or d, c.dropout)
        if c.alignment:
            self.align_w = nn.Parameter(torch.empty(d, d))  # W_A of s(p, q)
            nn.init.xavier_normal_(self.align_w)
            # log τ keeps the learnable temperature positive.
            self.log_temperature = nn.Parameter(torch.tensor(math.log(c.temperature)))
        if c.contrast or c.multi_interest:
            self.coatt_w = nn.Parameter(torch.empty(d, d))  # W_l of Eq. 9
            self.coatt_rec = nn.Parameter(torch.empty(d))  # W_r of Eq. 10
            self.coatt_search = nn.Parameter(torch.empty(d))  # W_s of Eq. 10
            nn.init.xavier_normal_(self.coatt_w)
            nn.init.normal_(self.coatt_rec, std=d ** -0.5)
            nn.init.normal_(self.coatt_search, std=d ** -0.5)
        self.rec_attention = nn.Parameter(torch.empty(d, embed_dim))  # W_d of Eq. 17-19 (rec)
        self.search_attention = nn.Parameter(torch.empty(d, embed_dim))  # its twin for u_s
        nn.init.xavier_normal_(self.rec_attention)
        nn.init.xavier_normal_(self.search_attention)
        user_dim = c.user_dim or d
        self.user_table = nn.Embedding(num_users, user_dim, padding_idx=0)  # e_u; user 0 (unknown) stays zero
        nn.init.normal_(self.user_table.weight, std=user_dim ** -0.5)
        with torch.no_grad():
            self.user_table.weight[0].zero_()
        interests = 3 if c.multi_interest else 1
        layers: list[nn.Module] = []
        width = 2 * interests * d + embed_dim + user_dim
        for hidden in c.mlp_hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(c.dropout)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)  # Eq. 21
        # Xavier-normal linears as in the authors' code; position / type vectors on the item vectors' scale, since
        # PyTorch's N(0, 1) embedding init would drown the items they are added to.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for table in (self.rec_position, self.search_position, self.search_type):
            nn.init.normal_(table.weight, std=d ** -0.5)

    # -- encoding ------------------------------------------------------------------------------------------------

    @property
    def temperature(self) -> torch.Tensor:
        """The current InfoNCE temperature τ (only with ``alignment``)."""
        return self.log_temperature.clamp(min=math.log(0.01)).exp()

    @staticmethod
    def _pool_query(encoded: torch.Tensor, ids: torch.LongTensor) -> torch.Tensor:
        """Mean of the term encodings over the non-padding terms (the paper's MEAN of term embeddings)."""
        return masked_mean(encoded, ids != 0)

    def _query_vectors(self, emb: SharedEmbeddings,
                       queries: torch.LongTensor) -> tuple[torch.Tensor, torch.LongTensor]:
        """``W_q`` times the pooled encoding of each query row of ``queries [B, S, L]`` -> ``[B, S, d]``, and each
        row's index among the distinct rows ``[B, S]`` (equal indices = same query text; L_ali masks those pairs).

        Each distinct row is encoded once: search histories repeat queries (a user's own, and popular queries
        across users), and with the shared T5 encoder the B x (S + 1) rows were 4x the seq2seq model's own cost on
        ML-100K. Exact in eval mode; in training, copies of one query share their encoder dropout mask.
        """
        unique, inverse = torch.unique(queries.reshape(-1, queries.shape[-1]), dim=0, return_inverse=True)
        vectors = self.query_proj(self._pool_query(emb.encode_text(unique), unique))
        inverse = inverse.reshape(queries.shape[:-1])
        return vectors[inverse], inverse

    def _positions(self, table: nn.Embedding, length: int, max_len: int, device: torch.device) -> torch.Tensor:
        """Position vectors of the last ``length`` slots of a ``max_len`` table (the latest step gets the last slot)."""
        return table(torch.arange(max_len - length, max_len, device=device))

    def _encode(self, batch: HeadBatch, emb: SharedEmbeddings,
                with_alignment: bool = False) -> tuple[_UserState, torch.Tensor | None]:
        """Eq. 1-5 and 9-12 for the requests; with ``with_alignment`` also L_ali (Eq. 6-8) of their searches."""
        c = self.config
        history = batch.history[:, -c.max_rec_len:]
        rec_mask = history >= 0
        rec_in = self.item_proj(emb.items(history))
        rec_in = rec_in + self._positions(self.rec_position, history.shape[1], c.max_rec_len, rec_in.device)
        rec_hidden = self.rec_encoder(rec_in, rec_mask)

        search_items = batch.search_items[:, -c.max_search_len:]
        search_queries = batch.search_queries[:, -c.max_search_len:]
        # Past queries and the current one go through a single encode_text call (one encoder pass when shared).
        width = max(search_queries.shape[-1], batch.query.shape[-1])
        all_queries = torch.cat([F.pad(search_queries, (0, width - search_queries.shape[-1])),
                                 F.pad(batch.query, (0, width - batch.query.shape[-1])).unsqueeze(1)], dim=1)
        all_vec, query_keys = self._query_vectors(emb, all_queries)  # Ê_q: [B, S + 1, d]
        query_vec = all_vec[:, :-1]
        click_vec = self.item_proj(emb.items(search_items))  # Ê_c (one click per step, so also Ẽ_c)
        past_mask = (search_items >= 0) | (search_queries != 0).any(-1)
        current_mask = batch.is_search & (batch.query != 0).any(-1)
        steps = torch.cat([query_vec + click_vec, all_vec[:, -1:]], dim=1)  # [B, S + 1, d]
        search_mask = torch.cat([past_mask, current_mask.unsqueeze(1)], dim=1)
        types = torch.zeros(search_mask.shape[1], dtype=torch.long, device=steps.device)
        types[-1] = CURRENT_QUERY_TYPE
        steps = steps + self.search_type(types) + self._positions(
            self.search_position, steps.shape[1], c.max_search_len + 1, steps.device)
        search_hidden = self.search_encoder(steps, search_mask)

        rec = _Sequence(rec_hidden, rec_mask)
        search = _Sequence(search_hidden, search_mask)
        if c.contrast or c.multi_interest:
            self._co_attention(rec, search)
        user = self.user_table(batch.users)

        align = None
        if with_alignment and c.alignment:
            pairs = (search_items >= 0) & (search_queries != 0).any(-1)
            align = self._alignment(emb, query_vec[pairs], click_vec[pairs], search_items[pairs],
                                    query_keys[:, :-1][pairs])
        return _UserState(rec, search, user), align

    def _co_attention(self, rec: _Sequence, search: _Sequence) -> None:
        """Eq. 9-12: similarity scores of both sequences and their similar / dissimilar split (in place)."""
        both = search.mask.unsqueeze(2) & rec.mask.unsqueeze(1)  # [B, Ts, Tr]
        # Padded pairs must not contribute to Eq. 10's sums: zero affinity there.
        affinity = torch.tanh(search.hidden @ self.coatt_w @ rec.hidden.transpose(1, 2)) * both.to(rec.hidden.dtype)
        rec_logits = rec.hidden @ self.coatt_rec  # W_r H_rᵀ: [B, Tr]
        search_logits = search.hidden @ self.coatt_search  # W_s H_sᵀ: [B, Ts]
        search.scores = masked_softmax(torch.einsum("br,bsr->bs", rec_logits, affinity), search.mask)  # a^s
        rec.scores = masked_softmax(torch.einsum("bs,bsr->br", search_logits, affinity), rec.mask)  # a^r
        for seq in (rec, search):
            seq.similar, seq.dissimilar = similarity_split(seq.scores, seq.mask)

    def _alignment(self, emb: SharedEmbeddings, queries: torch.Tensor, items: torch.Tensor,
                   item_ids: torch.LongTensor, query_keys: torch.LongTensor) -> torch.Tensor:
        """L_ali over the batch's (query, clicked item) pairs; zero (graph kept) when there are none.

        ``query_keys`` label each pair's query text (from :meth:`_query_vectors`), so that pairs of one query are not
        each other's negatives.
        """
        if queries.shape[0] == 0:
            return (self.align_w.sum() + self.log_temperature) * 0.0
        num = min(self.config.align_negatives, emb.num_items)
        negative_ids = torch.randint(0, emb.num_items, (num,), device=queries.device)
        negatives = self.item_proj(emb.items(negative_ids))
        return alignment_loss(queries, items, negatives, self.align_w, self.temperature, item_ids=item_ids,
                              negative_item_ids=negative_ids, query_keys=query_keys)

    def _contrast(self, state: _UserState) -> torch.Tensor:
        """Eq. 13-16: the two triplet losses, each averaged over the rows where both subsets are non-empty."""
        total = state.rec.hidden.new_zeros(())
        for seq in (state.rec, state.search):
            anchor = (seq.scores.unsqueeze(-1) * seq.hidden).sum(1)  # Eq. 13-14 anchors
            loss = triplet_loss(anchor, masked_mean(seq.hidden, seq.similar), masked_mean(seq.hidden, seq.dissimilar),
                                self.config.margin)
            valid = (seq.similar.any(-1) & seq.dissimilar.any(-1)).to(loss.dtype)
            # Rows without a triplet count zero; the sum keeps their graph (and the co-attention's) connected.
            total = total + (loss * valid).sum() / valid.sum().clamp(min=1.0)
        return total

    # -- prediction -------------------------------------------------------------------------------------------------

    def _interest_weights(self, seq: _Sequence, weight: torch.Tensor, items: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights of Eq. 17-19 (all, similar, dissimilar; or all only): each ``[B, C, T]``."""
        keys = seq.hidden @ weight  # hᵀ W_d: [B, T, d_item]
        if items.dim() == 2:
            logits = torch.einsum("btk,ck->bct", keys, items)
        else:
            logits = torch.einsum("btk,bck->bct", keys, items)
        masks = [seq.mask]
        if self.config.multi_interest:
            # An empty subset (all scores equal 1/T) falls back to the whole sequence, as in the authors' code.
            masks += [torch.where(subset.any(-1, keepdim=True), subset, seq.mask)
                      for subset in (seq.similar, seq.dissimilar)]
        return [masked_softmax(logits, m.unsqueeze(1)) for m in masks]

    def _predict(self, state: _UserState, items: torch.Tensor) -> torch.Tensor:
        """Eq. 17-21: logits ``[B, C]`` of the candidate vectors ``items`` (``[B, C, d_item]`` or ``[C, d_item]``).

        The MLP's first layer is linear, so it is applied to the hidden states before the attention pooling
        (``W·Σ_t w_t h_t = Σ_t w_t (W h_t)``): the same function as on ``u_r || u_s || e_v || e_u``, with far fewer
        operations per (request, candidate) pair when a whole catalog is scored.
        """
        first, d = self.mlp[0], self.dim
        blocks = first.weight.split(d, dim=1)  # column blocks of u_r^all, [u_r^sim, u_r^diff,] u_s^..., then the rest
        interests = 3 if self.config.multi_interest else 1
        item_w, user_w = first.weight[:, 2 * interests * d:].split([items.shape[-1], state.user.shape[-1]], dim=1)
        attention, values = [], []
        for seq, weight in ((state.rec, self.rec_attention), (state.search, self.search_attention)):
            for w in self._interest_weights(seq, weight, items):
                attention.append(w)  # [B, C, T]
                values.append(seq.hidden @ blocks[len(values)].T)  # [B, T, h1]
        # One matmul over all six poolings: small per-interest matmuls are memory-bound on a whole catalog.
        hidden = torch.cat(attention, -1) @ torch.cat(values, 1)  # [B, C, h1]
        hidden = hidden + (items @ item_w.T) + (state.user @ user_w.T + first.bias).unsqueeze(1)
        return self.mlp[1:](hidden).squeeze(-1)

    # -- Head API -----------------------------------------------------------------------------------------------------

    def forward(self, batch: HeadBatch, emb: SharedEmbeddings) -> HeadOutput:
        """Scores of target + negatives and ``L_rec + α L_ali + β L_con`` (Eq. 23 without the L2 term)."""
        c = self.config
        state, align = self._encode(batch, emb, with_alignment=True)
        scores = self._predict(state, emb.items(batch.candidates()))
        rec = pairwise_bce(scores)
        loss, terms = rec, {"rec": rec.detach()}
        if align is not None:
            loss = loss + c.alpha * align
            terms["ali"] = align.detach()
        if c.contrast:
            con = self._contrast(state)
            loss = loss + c.beta * con
            terms["con"] = con.detach()
        return HeadOutput(loss=loss, scores=scores, terms=terms)

    def score(self, batch: HeadBatch, emb: SharedEmbeddings, candidates: torch.LongTensor) -> torch.Tensor:
        """``[B, C]`` logits of Eq. 21; the candidates are scored in chunks of about ``score_chunk`` pairs."""
        if candidates.dim() not in (1, 2) or (candidates.dim() == 2 and candidates.shape[0] != batch.size):
            raise ValueError(f"candidates must be [C] or [B={batch.size}, C], got {tuple(candidates.shape)}")
        state, _ = self._encode(batch, emb)
        chunk = max(1, self.config.score_chunk // max(1, batch.size))
        out = [self._predict(state, emb.items(candidates[..., start:start + chunk]))
               for start in range(0, candidates.shape[-1], chunk)]
        if not out:
            return state.user.new_zeros(batch.size, 0)
        return torch.cat(out, dim=-1)
