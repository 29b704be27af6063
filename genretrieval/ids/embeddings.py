"""Item embeddings to quantise into semantic IDs (TIGER, Rajput et al. 2023).

Three sources, all returning float32 ``[num_items, dim]`` arrays with L2-normalised rows (all-zero rows stay zero):

* :func:`content_embeddings` - TF-IDF + truncated SVD of item texts (LSA), or any sentence encoder you pass in;
* :func:`collaborative_embeddings` - PPMI of windowed item co-occurrence in training histories + truncated SVD;
* :func:`joint_embeddings` - weighted concatenation of the above.

Only numpy and torch are used: scikit-learn/scipy are optional extras of the project, and the sparse products and
SVDs needed here are a few lines of torch.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import torch

# Up to this many rows/columns on the smaller side the SVD is exact (eigendecomposition of the small dense Gram
# matrix, float64); above it a seeded randomised SVD keeps memory at O((rows + cols) * dim).
_EXACT_SVD_MAX_DIM = 2048
# Singular values below this fraction of the largest are numerical noise of the Gram route: the matrix has no more
# rank, and the remaining output columns are zero padding.
_RANK_RTOL = 1e-5
_TOKEN_RE = re.compile(r"\w+")


def check_embeddings(emb: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """Return ``emb`` as a 2-D real array, or raise ``ValueError`` naming the first row with NaN/inf."""
    arr = np.asarray(emb)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [num_items, dim] array, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        bad_rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        if bad_rows.size:
            raise ValueError(f"{name} row {int(bad_rows[0])} contains NaN or inf ({bad_rows.size} bad rows in total)")
    return arr


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # Zero rows (empty texts, items never seen) must stay zero rather than become NaN.
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _pad_columns(x: np.ndarray, dim: int) -> np.ndarray:
    if x.shape[1] >= dim:
        return x[:, :dim]
    return np.concatenate([x, np.zeros((x.shape[0], dim - x.shape[1]), dtype=x.dtype)], axis=1)


def _sparse(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    indices = torch.from_numpy(np.stack([rows, cols]).astype(np.int64))
    values = torch.from_numpy(vals.astype(np.float64))
    return torch.sparse_coo_tensor(indices, values, shape, check_invariants=False).coalesce()


def _truncated_svd(x: torch.Tensor, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` SVD ``(U [n, r], S [r], Vt [r, m])`` of sparse float64 ``x`` with ``r <= k`` its numerical rank.

    Signs are fixed (see below) so exact and randomised routes, and
    repeated runs, give the same vectors.
    """
    n, m = x.shape
    k = min(k, n, m)
    if k == 0 or x._nnz() == 0:
        return np.zeros((n, 0)), np.zeros(0), np.zeros((0, m))
    xt = x.t().coalesce()
    if min(n, m) <= _EXACT_SVD_MAX_DIM:
        # Gram of the smaller side: sparse @ sparse stays cheap, and eigh of a <=2048^2 matrix takes well under 1 s.
        small_is_rows = n <= m
        with warnings.catch_warnings():
            # torch routes sparse @ sparse through its (beta) CSR kernels and says so on every call.
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            gram = torch.sparse.mm(x, xt) if small_is_rows else torch.sparse.mm(xt, x)
        evals, evecs = torch.linalg.eigh(gram.to_dense())
        order = torch.argsort(evals, descending=True)[:k]
        s = evals[order].clamp_min(0).sqrt()
        keep = s > s[0] * _RANK_RTOL
        s, vecs = s[keep], evecs[:, order[keep]]
        if small_is_rows:
            u = vecs
            vt = (torch.sparse.mm(xt, u) / s).t()
        else:
            vt = vecs.t()
            u = torch.sparse.mm(x, vecs) / s
    else:
        # Halko et al. (2011) randomised range finder with power iterations; written out rather than
        # torch.svd_lowrank so that the random projection comes from our own seeded generator.
        gen = torch.Generator().manual_seed(seed)
        q = min(k + 10, n, m)
        omega = torch.randn(m, q, generator=gen, dtype=torch.float64)
        basis = torch.linalg.qr(torch.sparse.mm(x, omega)).Q
        for _ in range(7):
            basis = torch.linalg.qr(torch.sparse.mm(xt, basis)).Q
            basis = torch.linalg.qr(torch.sparse.mm(x, basis)).Q
        small = torch.sparse.mm(xt, basis).t()  # basis^T x, [q, m]
        ub, s, vt = torch.linalg.svd(small, full_matrices=False)
        keep = s > s[0] * _RANK_RTOL
        keep[k:] = False
        u, s, vt = (basis @ ub)[:, keep], s[keep], vt[keep]
    # Empty rows (empty texts, items without co-occurrences) come out of the randomised route as ~1e-17 noise,
    # which row normalisation would blow up to unit vectors; they are exactly zero by definition.
    empty_rows = torch.bincount(x.indices()[0], minlength=n) == 0
    u[empty_rows] = 0.0
    # Sign convention: the first entry within 0.1% of the column's largest magnitude is positive. "First" rather
    # than argmax because symmetric data gives +-ties whose winner would depend on rounding noise.
    mags = u.abs()
    leader = (mags >= 0.999 * mags.max(0, keepdim=True).values).to(torch.int8).argmax(0, keepdim=True)
    flip = torch.sign(u.gather(0, leader))
    flip[flip == 0] = 1
    return (u * flip).numpy(), s.numpy(), (vt * flip.t()).numpy()


def _tfidf(texts: Sequence[str], max_features: int) -> torch.Tensor:
    """Sparse ``[N, V]`` TF-IDF: lower-cased ``\\w+`` tokens, 1+log(tf), smooth idf, L2-normalised rows."""
    docs = [Counter(_TOKEN_RE.findall(text.lower())) for text in texts]
    corpus_counts: Counter[str] = Counter()
    for doc in docs:
        corpus_counts.update(doc)
    # Most frequent terms first, ties alphabetical so the vocabulary does not depend on dict ordering.
    vocab_terms = sorted(corpus_counts, key=lambda t: (-corpus_counts[t], t))[:max_features]
    vocab = {term: j for j, term in enumerate(vocab_terms)}
    rows, cols, tfs = [], [], []
    for i, doc in enumerate(docs):
        for term, count in doc.items():
            j = vocab.get(term)
            if j is not None:
                rows.append(i)
                cols.append(j)
                tfs.append(count)
    rows_a = np.asarray(rows, dtype=np.int64)
    cols_a = np.asarray(cols, dtype=np.int64)
    n_docs = len(docs)
    df = np.bincount(cols_a, minlength=len(vocab))
    idf = np.log((1.0 + n_docs) / (1.0 + df)) + 1.0
    vals = (1.0 + np.log(np.asarray(tfs, dtype=np.float64))) * idf[cols_a]
    row_norms = np.sqrt(np.bincount(rows_a, weights=vals**2, minlength=n_docs))
    if vals.size:
        vals = vals / row_norms[rows_a]
    return _sparse(rows_a, cols_a, vals, (n_docs, len(vocab)))


def content_embeddings(
    texts: Sequence[str],
    dim: int = 64,
    *,
    encoder: Callable[[list[str]], np.ndarray] | None = None,
    max_features: int = 20000,
    seed: int = 0,
) -> np.ndarray:
    """Float32 ``[N, dim]`` text embeddings: TF-IDF + truncated SVD (LSA) by default, or ``encoder(texts)``.

    With an ``encoder`` its output ``[N, d]`` is only validated and L2-normalised; ``dim`` and ``max_features`` are
    then ignored (any ``d`` is accepted). Without one, when the TF-IDF matrix has rank below ``dim`` (few items or a
    small vocabulary) the missing columns are zeros. Empty texts give zero rows.
    """
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}] must be a string, got {type(text).__name__}")
    if encoder is not None:
        out = np.asarray(encoder(texts))
        if out.ndim != 2 or out.shape[0] != len(texts):
            raise ValueError(f"encoder must return a [{len(texts)}, d] array for {len(texts)} texts, got {out.shape}")
        out = check_embeddings(out, "encoder output")
        return _l2_normalise(out.astype(np.float64)).astype(np.float32)
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if max_features < 1:
        raise ValueError(f"max_features must be >= 1, got {max_features}")
    x = _tfidf(texts, max_features)
    u, s, _ = _truncated_svd(x, dim, seed)
    # U*S (= X V) as in LSA: keeps the relative weight of the dominant topics in the distances.
    emb = _pad_columns(u * s, dim)
    return _l2_normalise(emb).astype(np.float32)


def collaborative_embeddings(
    histories: Sequence[Sequence[str]],
    item_ids: Sequence[str],
    dim: int = 64,
    *,
    window: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Float32 ``[len(item_ids), dim]`` item embeddings from co-occurrence in training histories.

    Two occurrences at most ``window`` positions apart in one history count once for the (symmetric) pair; an item
    next to itself is ignored. The counts are PPMI-weighted and factorised by truncated SVD, embedding = U * sqrt(S)
    over the components of positive eigenvalue (Levy & Goldberg 2014). Items with no co-occurrence get a zero row; missing SVD rank is zero padding.
    Pass training histories only, or the embeddings leak held-out interactions into the IDs.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    index: dict[str, int] = {}
    for p, item in enumerate(item_ids):
        if item in index:
            raise ValueError(f"item_ids contains {item!r} twice (positions {index[item]} and {p})")
        index[item] = p
    n_items = len(index)
    left_parts, right_parts = [], []
    for h, history in enumerate(histories):
        if isinstance(history, str):
            raise ValueError(f"history {h} is a string; expected a sequence of item ids")
        try:
            seq = np.fromiter((index[item] for item in history), dtype=np.int64)
        except KeyError as err:
            raise ValueError(f"history {h} contains item {err.args[0]!r}, which is not in item_ids") from None
        for offset in range(1, min(window, len(seq) - 1) + 1):
            left_parts.append(seq[:-offset])
            right_parts.append(seq[offset:])
    if not left_parts:
        return np.zeros((n_items, dim), dtype=np.float32)
    left = np.concatenate(left_parts)
    right = np.concatenate(right_parts)
    distinct = left != right
    left, right = left[distinct], right[distinct]
    # Both directions make the count matrix symmetric; unique over the flat key sums duplicate pairs.
    keys = np.concatenate([left * n_items + right, right * n_items + left])
    keys, counts = np.unique(keys, return_counts=True)
    rows, cols = keys // n_items, keys % n_items
    counts = counts.astype(np.float64)
    marginals = np.bincount(rows, weights=counts, minlength=n_items)
    total = counts.sum()
    if total == 0:
        return np.zeros((n_items, dim), dtype=np.float32)
    pmi = np.log(counts * total / (marginals[rows] * marginals[cols]))
    positive = pmi > 0
    x = _sparse(rows[positive], cols[positive], pmi[positive], (n_items, n_items))
    u, s, vt = _truncated_svd(x, dim, seed)
    # The PPMI matrix is symmetric but indefinite: a singular pair with v = -u is a *negative* eigenvalue, which
    # U*sqrt(S) would count as similarity. Keep the positive part only (u . v > 0).
    positive = np.einsum("ik,ki->k", u, vt) > 0
    emb = _pad_columns(u[:, positive] * np.sqrt(s[positive]), dim)
    return _l2_normalise(emb).astype(np.float32)


def joint_embeddings(parts: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Concatenate row-L2-normalised ``parts`` scaled by ``sqrt(weight)`` (default: equal weights of 1).

    A row's squared distance is then the weighted sum of the parts' squared distances. Rows are not renormalised:
    a row whose parts are all non-zero has squared norm ``sum(weights)``.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("joint_embeddings needs at least one part")
    if weights is None:
        weights = [1.0] * len(parts)
    weights = [float(w) for w in weights]
    if len(weights) != len(parts):
        raise ValueError(f"got {len(weights)} weights for {len(parts)} parts")
    for i, w in enumerate(weights):
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weights[{i}] must be a finite number >= 0, got {w}")
    checked = [check_embeddings(p, f"parts[{i}]") for i, p in enumerate(parts)]
    n_rows = checked[0].shape[0]
    for i, p in enumerate(checked):
        if p.shape[0] != n_rows:
            raise ValueError(f"parts[{i}] has {p.shape[0]} rows but parts[0] has {n_rows}")
    scaled = [_l2_normalise(p.astype(np.float64)) * math.sqrt(w) for p, w in zip(checked, weights)]
    return np.concatenate(scaled, axis=1).astype(np.float32)
