"""Semantic item IDs: a few learned codes per item, shared by similar items (TIGER, Rajput et al. 2023).

An item's ID is ``L`` codebook codes (one token range per level: ``<a_12><b_7><c_201>``) followed by a collision
digit (``<d_0>``, ``<d_1>``...) that tells apart items whose ``L`` codes coincide, so every item has exactly one
unique ID. Codes come from residual quantisation of item embeddings (:mod:`genretrieval.ids.quantizers`), built from
training data only (:mod:`genretrieval.ids.embeddings`); :func:`build_semantic_ids` runs the whole pipeline.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from .base import ItemIdScheme, register_id_scheme

EMBEDDINGS = ("content", "collaborative", "joint")
QUANTIZERS = ("rq-kmeans", "rq-vae")


@register_id_scheme("semantic")
class SemanticIdScheme(ItemIdScheme):
    """Item at catalog position ``p`` is the token sequence of ``codes[p]``, one token range per column.

    ``codes`` is an integer array ``[num_items, id_length]`` whose rows are unique (the last column is normally the
    collision digit); ``codebook_sizes[j]`` is the number of tokens of column ``j``. ``info`` keeps how the codes were
    made (embedding, quantiser, diagnostics) and is saved with the scheme.
    """

    def __init__(self, item_ids: Sequence[str], codes: Any, codebook_sizes: Sequence[int] | None = None,
                 info: dict[str, Any] | None = None):
        super().__init__(item_ids)
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[0] != len(self.item_ids) or codes.shape[1] < 1:
            raise ValueError(f"codes must be [num_items={len(self.item_ids)}, id_length], got shape {codes.shape}")
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
        if codes.shape[1] > len(string.ascii_lowercase):
            raise ValueError(f"at most {len(string.ascii_lowercase)} code levels are supported, got {codes.shape[1]}")
        codes = codes.astype(np.int64)
        if (codes < 0).any():
            row = int(np.argwhere(codes < 0)[0, 0])
            raise ValueError(f"negative code in row {row} (item {self.item_ids[row]!r}): {codes[row].tolist()}")
        used = (codes.max(axis=0) + 1).tolist()
        sizes = list(used) if codebook_sizes is None else [int(s) for s in codebook_sizes]
        if len(sizes) != codes.shape[1]:
            raise ValueError(f"codebook_sizes has {len(sizes)} entries for {codes.shape[1]} code columns")
        for j, (size, need) in enumerate(zip(sizes, used)):
            if size < need:
                raise ValueError(f"column {j} uses code {need - 1} but codebook_sizes[{j}] is {size}")
        unique, first, counts = np.unique(codes, axis=0, return_index=True, return_counts=True)
        if len(unique) != len(codes):
            dup = unique[counts > 1][0]
            rows = np.flatnonzero((codes == dup).all(axis=1))[:2].tolist()
            raise ValueError(f"items {self.item_ids[rows[0]]!r} and {self.item_ids[rows[1]]!r} share the ID "
                             f"{dup.tolist()}; append a collision digit (quantizers.add_collision_digit)")
        self.codes = codes
        self.codebook_sizes = sizes
        self.info = dict(info or {})
        self._tokens = [[f"<{string.ascii_lowercase[j]}_{c}>" for c in range(size)] for j, size in enumerate(sizes)]

    @property
    def id_length(self) -> int:
        """Codes per item (levels + collision digit)."""
        return int(self.codes.shape[1])

    def item_tokens(self, position: int) -> tuple[str, ...]:
        """One token per code of the item at ``position``."""
        return tuple(self._tokens[j][c] for j, c in enumerate(self.codes[position].tolist()))

    def new_tokens(self) -> list[str]:
        """Every level's token range, level by level (``<a_0>``..``<a_{K-1}>``, ``<b_0>``...)."""
        return [token for level in self._tokens for token in level]

    def to_dict(self) -> dict[str, Any]:
        """Codes, codebook sizes and build info (JSON-serialisable)."""
        return {"codes": self.codes.tolist(), "codebook_sizes": self.codebook_sizes, "info": self.info}

    @classmethod
    def from_dict(cls, item_ids: list[str], state: dict[str, Any]) -> SemanticIdScheme:
        """Rebuild from :meth:`to_dict` output."""
        codes = np.asarray(state["codes"], dtype=np.int64).reshape(len(item_ids), -1)
        return cls(item_ids, codes, state.get("codebook_sizes"), state.get("info"))


@dataclass
class SemanticIdConfig:
    """How semantic IDs are learned (``ids.semantic`` in a training config; ``recipes/build_item_ids.py``)."""

    embedding: Literal["content", "collaborative", "joint"] = "joint"  # which item signal is quantised (see docs)
    embedding_dim: int = 64  # SVD dimensions of each embedding part
    encoder: str | None = None  # content from a local sentence-transformers model path instead of TF-IDF + SVD
    window: int = 5  # co-occurrence window over training histories (collaborative part)
    weights: dict[str, float] = field(default_factory=lambda: {"text": 1.0, "queries": 1.0, "collaborative": 1.0})
    # ^ joint: weight of each part (item text, training queries that led to the item, co-occurrence)
    quantizer: Literal["rq-kmeans", "rq-vae"] = "rq-kmeans"  # residual k-means or TIGER's RQ-VAE
    num_levels: int = 3  # codes per item before the collision digit
    codebook_size: int = 256  # codes per level (TIGER: 3 x 256)
    kmeans_max_iter: int = 50  # Lloyd iterations per level (rq-kmeans)
    rqvae_epochs: int = 200  # RQ-VAE training epochs
    rqvae_latent_dim: int = 32  # RQ-VAE code vector size
    rqvae_beta: float = 0.25  # commitment weight (TIGER)
    seed: int = 0  # seed of SVD, k-means and RQ-VAE

    def __post_init__(self) -> None:
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"ids.semantic.embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"ids.semantic.quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        for name in ("embedding_dim", "window", "num_levels", "kmeans_max_iter", "rqvae_epochs", "rqvae_latent_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"ids.semantic.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.codebook_size < 2:
            raise ValueError(f"ids.semantic.codebook_size must be >= 2, got {self.codebook_size!r}")
        unknown = set(self.weights) - {"text", "queries", "collaborative"}
        if unknown:
            raise ValueError(f"ids.semantic.weights has unknown parts {sorted(unknown)}; "
                             "use text, queries, collaborative")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError(f"ids.semantic.weights must be non-negative, got {self.weights!r}")


def training_sequences(rec_train: Any) -> list[list[str]]:
    """Each user's training item sequence, rebuilt from leave-one-out training examples (held-out items excluded).

    Examples of one user come in time order with targets ``items[1..]`` and the first history starting at
    ``items[0]`` (see :func:`~genretrieval.data.builders.build_examples`).
    """
    sequences: dict[str, list[str]] = {}
    for user, history, target in zip(rec_train["user_id"], rec_train["history"], rec_train["target_item"]):
        if user not in sequences:
            sequences[user] = list(history[:1])
        sequences[user].append(target)
    return list(sequences.values())


def item_embeddings(catalog: Any, examples: dict[str, Any], config: SemanticIdConfig) -> np.ndarray:
    """The embedding ``config.embedding`` of every catalog item, from catalog text and *training* examples only."""
    from .embeddings import collaborative_embeddings, content_embeddings, joint_embeddings

    items = list(catalog["item_id"])
    encoder = None
    if config.encoder:
        encoder = _sentence_encoder(config.encoder)
    parts: list[np.ndarray] = []
    weights: list[float] = []
    if config.embedding in ("content", "joint"):
        texts = [" ".join(p for p in (title, text, " ".join(cats)) if p)
                 for title, text, cats in zip(catalog["title"], catalog["text"], catalog["categories"])]
        parts.append(content_embeddings(texts, config.embedding_dim, encoder=encoder, seed=config.seed))
        weights.append(config.weights.get("text", 1.0))
    if config.embedding == "joint" and "search" in examples and config.weights.get("queries", 1.0) > 0:
        position = {item: i for i, item in enumerate(items)}
        queries = [[] for _ in items]
        for query, target in zip(examples["search"]["train"]["query"], examples["search"]["train"]["target_item"]):
            if target in position:
                queries[position[target]].append(query)
        parts.append(content_embeddings([" ".join(q) for q in queries], config.embedding_dim, seed=config.seed))
        weights.append(config.weights.get("queries", 1.0))
    if config.embedding in ("collaborative", "joint") and "recommend" in examples:
        sequences = training_sequences(examples["recommend"]["train"])
        parts.append(collaborative_embeddings(sequences, items, config.embedding_dim, window=config.window,
                                              seed=config.seed))
        weights.append(config.weights.get("collaborative", 1.0))
    if not parts:
        raise ValueError(f"embedding {config.embedding!r} needs recommendation examples, and there are none")
    return parts[0] if len(parts) == 1 else joint_embeddings(parts, weights)


def quantize(embeddings: np.ndarray, config: SemanticIdConfig, progress: bool = False) -> tuple[np.ndarray, dict]:
    """Codes ``[N, num_levels]`` of ``embeddings`` under ``config.quantizer``, and the quantiser's history."""
    from .quantizers import RQKMeansConfig, RQVAEConfig, residual_kmeans, train_rqvae

    if config.quantizer == "rq-kmeans":
        kcfg = RQKMeansConfig(num_levels=config.num_levels, codebook_size=config.codebook_size,
                              max_iter=config.kmeans_max_iter, seed=config.seed)
        return residual_kmeans(embeddings, kcfg), {}
    vcfg = RQVAEConfig(num_levels=config.num_levels, codebook_size=config.codebook_size,
                       latent_dim=config.rqvae_latent_dim, epochs=config.rqvae_epochs, beta=config.rqvae_beta,
                       seed=config.seed)
    _, codes, history = train_rqvae(embeddings, vcfg, progress=progress)
    return codes, history


def build_semantic_ids(catalog: Any, examples: dict[str, Any], config: SemanticIdConfig | None = None, *,
                       progress: bool = False) -> SemanticIdScheme:
    """Embeddings → residual codes → collision digit → :class:`SemanticIdScheme` with diagnostics in ``info``."""
    from .quantizers import add_collision_digit, code_diagnostics

    config = config or SemanticIdConfig()
    embeddings = item_embeddings(catalog, examples, config)
    codes, history = quantize(embeddings, config, progress=progress)
    diagnostics = code_diagnostics(codes, config.codebook_size)
    full = add_collision_digit(codes)
    diagnostics["collision_digit_size"] = int(full[:, -1].max()) + 1
    sizes = [config.codebook_size] * config.num_levels + [diagnostics["collision_digit_size"]]
    info = {"config": asdict(config), "diagnostics": diagnostics}
    if history:
        info["quantizer_history"] = {k: v for k, v in history.items() if k != "loss"}
        info["quantizer_final_loss"] = history["loss"][-1] if history.get("loss") else None
    return SemanticIdScheme(list(catalog["item_id"]), full, sizes, info)


def _sentence_encoder(path: str):
    """A callable embedding texts with a local sentence-transformers model (mean-pooled transformer states)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    def encode(texts: list[str]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), 64):
                enc = tokenizer(texts[start : start + 64], padding=True, truncation=True, max_length=128,
                                return_tensors="pt")
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
        return np.concatenate(out).astype(np.float32)

    return encode
