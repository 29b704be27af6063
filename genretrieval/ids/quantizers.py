"""Residual quantisers that turn item embeddings into semantic-ID codes (TIGER, Rajput et al. 2023).

Both quantisers give every item ``num_levels`` codes in ``[0, codebook_size)``, coarse to fine: level 1 quantises the
embedding, each further level quantises what the previous levels left over (the residual).

* :func:`residual_kmeans` - plain k-means on the residuals, level by level (RQ-KMeans); no training, deterministic.
* :func:`train_rqvae` - TIGER's RQ-VAE: an MLP autoencoder whose latent goes through residual codebooks.

Items can share all ``num_levels`` codes; :func:`add_collision_digit` appends TIGER's extra digit that makes IDs
unique, and :func:`code_diagnostics` measures codebook use and collisions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import check_embeddings

# Rows per distance block in k-means assignment: bounds memory at _ASSIGN_CHUNK * codebook_size floats.
_ASSIGN_CHUNK = 65536


def _check_k_vs_n(codebook_size: int, num_items: int) -> None:
    if codebook_size > num_items:
        raise ValueError(f"codebook_size ({codebook_size}) is larger than the number of items ({num_items})")


# --------------------------------------------------------------------------------------------------------- k-means


def _sq_dists(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``[n, k]`` (clamped at 0 against cancellation)."""
    d = (x * x).sum(1, keepdim=True) - 2.0 * (x @ centroids.T) + (centroids * centroids).sum(1)
    return d.clamp_min_(0.0)


def _assign(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each row and the squared distance to it."""
    labels, dists = [], []
    for start in range(0, x.shape[0], _ASSIGN_CHUNK):
        d = _sq_dists(x[start : start + _ASSIGN_CHUNK], centroids)
        best, idx = d.min(1)
        labels.append(idx)
        dists.append(best)
    return torch.cat(labels), torch.cat(dists)


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn with probability ~ D(x)^2."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen))
    centres = [first]
    closest = _sq_dists(x, x[first : first + 1]).squeeze(1)
    for _ in range(1, k):
        total = float(closest.sum())
        if total > 0:
            nxt = int(torch.multinomial(closest / total, 1, generator=gen))
        else:
            # Fewer distinct points than k: any point is as good as another, duplicates get re-seeded later.
            nxt = int(torch.randint(n, (1,), generator=gen))
        centres.append(nxt)
        closest = torch.minimum(closest, _sq_dists(x, x[nxt : nxt + 1]).squeeze(1))
    return x[centres].clone()


def _kmeans(
    x: torch.Tensor, k: int, max_iter: int, num_init: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best of ``num_init`` k-means++ / Lloyd runs: ``(centroids [k, d], labels [n], inertia)``."""
    best: tuple[torch.Tensor, torch.Tensor, float] | None = None
    for _ in range(num_init):
        centroids = _kmeans_pp(x, k, gen)
        labels, dists = _assign(x, centroids)
        for _ in range(max_iter):
            counts = torch.bincount(labels, minlength=k)
            sums = torch.zeros_like(centroids).index_add_(0, labels, x)
            nonempty = counts > 0
            new = centroids.clone()
            new[nonempty] = sums[nonempty] / counts[nonempty].unsqueeze(1).to(x.dtype)
            empty = torch.nonzero(~nonempty).flatten()
            if empty.numel():
                # An empty cluster takes over the points worst served by the current solution, one each.
                far = torch.argsort(dists, descending=True, stable=True)[: empty.numel()]
                new[empty[: far.numel()]] = x[far]
            centroids = new
            new_labels, dists = _assign(x, centroids)
            converged = bool((new_labels == labels).all()) and not empty.numel()
            labels = new_labels
            if converged:
                break
        inertia = float(dists.sum())
        if best is None or inertia < best[2]:
            best = (centroids, labels, inertia)
    assert best is not None
    return best


# ----------------------------------------------------------------------------------------------------- RQ-KMeans


@dataclass
class RQKMeansConfig:
    """Residual k-means: one k-means codebook per level, fitted on the residuals of the levels above."""

    num_levels: int = 3  # codes per item before the collision digit (TIGER uses 3)
    codebook_size: int = 256  # centroids per level; must not exceed the number of items
    max_iter: int = 50  # Lloyd iterations per level (stops earlier once assignments no longer change)
    num_init: int = 1  # k-means++ restarts per level; the lowest-inertia run is kept
    seed: int = 0  # k-means++ sampling; same seed and data give the same codes

    def __post_init__(self) -> None:
        if self.num_levels < 1:
            raise ValueError(f"RQKMeansConfig.num_levels must be >= 1, got {self.num_levels}")
        if self.codebook_size < 2:
            raise ValueError(f"RQKMeansConfig.codebook_size must be >= 2, got {self.codebook_size}")
        if self.max_iter < 1:
            raise ValueError(f"RQKMeansConfig.max_iter must be >= 1, got {self.max_iter}")
        if self.num_init < 1:
            raise ValueError(f"RQKMeansConfig.num_init must be >= 1, got {self.num_init}")


def residual_kmeans(embeddings: np.ndarray, config: RQKMeansConfig) -> np.ndarray:
    """Int64 codes ``[N, num_levels]``: k-means per level on the residuals left by the levels above."""
    emb = check_embeddings(embeddings)
    _check_k_vs_n(config.codebook_size, emb.shape[0])
    gen = torch.Generator().manual_seed(config.seed)
    # float64: deep-level residuals are small differences of large vectors.
    residual = torch.as_tensor(emb, dtype=torch.float64).clone()
    codes = np.empty((emb.shape[0], config.num_levels), dtype=np.int64)
    for level in range(config.num_levels):
        centroids, labels, _ = _kmeans(residual, config.codebook_size, config.max_iter, config.num_init, gen)
        codes[:, level] = labels.numpy()
        residual -= centroids[labels]
    return codes


# -------------------------------------------------------------------------------------------------------- RQ-VAE


@dataclass
class RQVAEConfig:
    """TIGER's residual-quantised variational autoencoder and its training loop."""

    num_levels: int = 3  # codes per item before the collision digit (TIGER uses 3)
    codebook_size: int = 256  # codewords per level (TIGER uses 256); must not exceed the number of items
    latent_dim: int = 32  # size of the quantised latent (TIGER uses 32)
    hidden_dims: list[int] = field(default_factory=lambda: [256, 128])  # encoder MLP widths; decoder mirrors them
    beta: float = 0.25  # commitment weight of ||r - sg[e]||^2 (TIGER, after VQ-VAE)
    epochs: int = 200  # passes over all items
    batch_size: int = 256  # items per optimiser step
    lr: float = 1e-3  # Adam learning rate
    dead_code_restart: bool = True  # reset codewords unused in an epoch to random current residuals
    seed: int = 0  # weight init, codebook init, batch order and restarts
    num_threads: int | None = None  # torch CPU threads during training; None keeps the current setting

    def __post_init__(self) -> None:
        for name in ("num_levels", "latent_dim", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"RQVAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.codebook_size < 2:
            raise ValueError(f"RQVAEConfig.codebook_size must be >= 2, got {self.codebook_size}")
        bad_hidden = [h for h in self.hidden_dims if h < 1]
        if bad_hidden:
            raise ValueError(f"RQVAEConfig.hidden_dims must all be >= 1, got {self.hidden_dims}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"RQVAEConfig.beta must be a finite number >= 0, got {self.beta}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"RQVAEConfig.lr must be > 0, got {self.lr}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"RQVAEConfig.num_threads must be >= 1 or None, got {self.num_threads}")


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """Encoder MLP -> ``num_levels`` residual codebooks (straight-through) -> decoder MLP.

    Loss = MSE(x, x_hat) + sum over levels of MSE(e, sg[r]) + beta * MSE(r, sg[e]), where ``r`` is the level's
    residual and ``e`` its nearest codeword; all terms are means over elements so their scales are comparable.
    """

    def __init__(self, input_dim: int, config: RQVAEConfig):
        super().__init__()
        self.config = config
        dims = [input_dim, *config.hidden_dims, config.latent_dim]
        self.encoder = _mlp(dims)
        self.decoder = _mlp(dims[::-1])
        self.codebooks = nn.Parameter(torch.zeros(config.num_levels, config.codebook_size, config.latent_dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent ``[B, latent_dim]`` before quantisation."""
        return self.encoder(x)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z_q with straight-through gradient, codes [B, L], summed codebook + commitment loss)``."""
        residual = z
        quantized = torch.zeros_like(z)
        codes = []
        rq_loss = z.new_zeros(())
        for level in range(self.config.num_levels):
            codebook = self.codebooks[level]
            with torch.no_grad():
                idx = _sq_dists(residual, codebook).argmin(1)
            e = codebook[idx]
            rq_loss = rq_loss + F.mse_loss(e, residual.detach()) + self.config.beta * F.mse_loss(residual, e.detach())
            quantized = quantized + e
            # Detached so later levels' commitment terms move the encoder, not the earlier codewords.
            residual = residual - e.detach()
            codes.append(idx)
        z_q = z + (quantized - z).detach()
        return z_q, torch.stack(codes, 1), rq_loss

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruction, codes and losses (``loss``, ``recon_loss``, ``rq_loss``) for a batch."""
        z = self.encode(x)
        z_q, codes, rq_loss = self.quantize(z)
        x_hat = self.decoder(z_q)
        recon_loss = F.mse_loss(x_hat, x)
        return {"x_hat": x_hat, "codes": codes, "loss": recon_loss + rq_loss, "recon_loss": recon_loss,
                "rq_loss": rq_loss}

    @torch.no_grad()
    def get_codes(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Int64 codes ``[N, L]`` of ``x`` (no gradients, batched)."""
        return torch.cat([self.quantize(self.encode(x[s : s + batch_size]))[1] for s in range(0, len(x), batch_size)])

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, generator: torch.Generator, max_iter: int = 50) -> None:
        """TIGER's k-means initialisation: each level's codebook = k-means centroids of that level's residuals."""
        _check_k_vs_n(self.config.codebook_size, x.shape[0])
        residual = self.encode(x).double()
        for level in range(self.config.num_levels):
            centroids, labels, _ = _kmeans(residual, self.config.codebook_size, max_iter, 1, generator)
            self.codebooks[level] = centroids.to(self.codebooks.dtype)
            residual = residual - centroids[labels]

    @torch.no_grad()
    def restart_dead_codes(self, x: torch.Tensor, usage: torch.Tensor, generator: torch.Generator) -> list[int]:
        """Reset codewords with ``usage[level, code] == 0`` to residuals of random items of ``x``.

        Levels are processed top-down so a lower level samples residuals left by the *updated* upper codebooks.
        Returns the number of codewords reset per level.
        """
        residual = self.encode(x)
        n = residual.shape[0]
        restarted = []
        for level in range(self.config.num_levels):
            dead = torch.nonzero(usage[level] == 0).flatten()
            if dead.numel():
                if dead.numel() <= n:
                    picks = torch.randperm(n, generator=generator)[: dead.numel()]
                else:
                    picks = torch.randint(n, (dead.numel(),), generator=generator)
                self.codebooks[level, dead] = residual[picks]
            restarted.append(int(dead.numel()))
            idx = _sq_dists(residual, self.codebooks[level]).argmin(1)
            residual = residual - self.codebooks[level, idx]
        return restarted


def train_rqvae(
    embeddings: np.ndarray, config: RQVAEConfig, progress: bool = False
) -> tuple[RQVAE, np.ndarray, dict[str, Any]]:
    """Train an :class:`RQVAE` on ``embeddings`` and return ``(model, codes [N, L] int64, history)``.

    ``history`` holds per-epoch ``loss``, ``recon_loss``, ``rq_loss`` (item-weighted means over the epoch),
    ``utilisation`` (per level: share of codewords used by the epoch's batches) and ``restarted`` (codewords reset
    per level after the epoch). Codebooks are k-means-initialised on the first shuffled batch (at least
    ``codebook_size`` items). Codes come from the final model in eval mode.
    """
    emb = check_embeddings(embeddings)
    n = emb.shape[0]
    _check_k_vs_n(config.codebook_size, n)
    previous_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        gen = torch.Generator().manual_seed(config.seed)
        # nn.Linear draws from the global RNG; fork it so the caller's RNG stream is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = RQVAE(emb.shape[1], config)
        x = torch.as_tensor(emb, dtype=torch.float32)
        first = torch.randperm(n, generator=gen)[: max(config.batch_size, config.codebook_size)]
        model.init_codebooks(x[first], gen)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        history: dict[str, Any] = {"loss": [], "recon_loss": [], "rq_loss": [], "utilisation": [], "restarted": []}
        levels, k = config.num_levels, config.codebook_size
        epochs = range(config.epochs)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(epochs, desc="RQ-VAE", unit="epoch")
            epochs = bar
        for epoch in epochs:
            model.train()
            usage = torch.zeros(levels, k, dtype=torch.long)
            sums = {"loss": 0.0, "recon_loss": 0.0, "rq_loss": 0.0}
            for batch in torch.randperm(n, generator=gen).split(config.batch_size):
                out = model(x[batch])
                optimizer.zero_grad(set_to_none=True)
                out["loss"].backward()
                optimizer.step()
                for key in sums:
                    sums[key] += float(out[key].detach()) * len(batch)
                for level in range(levels):
                    usage[level] += torch.bincount(out["codes"][:, level], minlength=k)
            for key, total in sums.items():
                history[key].append(total / n)
            history["utilisation"].append([float((usage[level] > 0).float().mean()) for level in range(levels)])
            restarted = [0] * levels
            # Not after the last epoch: a reset codeword would then be untrained yet decide final codes.
            if config.dead_code_restart and epoch < config.epochs - 1 and bool((usage == 0).any()):
                restarted = model.restart_dead_codes(x, usage, gen)
                _reset_adam_rows(optimizer, model.codebooks, usage == 0)
            history["restarted"].append(restarted)
            if bar is not None:
                bar.set_postfix(loss=f"{history['loss'][-1]:.4f}", util=min(history["utilisation"][-1]))
        model.eval()
        codes = model.get_codes(x).numpy().astype(np.int64)
    finally:
        torch.set_num_threads(previous_threads)
    return model, codes, history


def _reset_adam_rows(optimizer: torch.optim.Optimizer, param: torch.Tensor, rows: torch.Tensor) -> None:
    """Zero Adam's moments of restarted codewords so stale momentum does not drag them off their new residual."""
    state = optimizer.state.get(param, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][rows] = 0.0


# ------------------------------------------------------------------------------------------ collisions, diagnostics


def _check_codes(codes: np.ndarray) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"codes must be a 2-D integer array [num_items, num_levels], got {arr.dtype} {arr.shape}")
    return arr


def add_collision_digit(codes: np.ndarray) -> np.ndarray:
    """Append TIGER's disambiguation digit: ``[N, L] -> [N, L+1]`` int64 with every row unique.

    Items sharing all ``L`` codes get 0, 1, 2, ... in their original row order; items with a unique tuple get 0.
    The digit can exceed ``codebook_size - 1`` when more than ``codebook_size`` items collide, so it needs its own
    vocabulary of ``max_collisions`` tokens.
    """
    arr = _check_codes(codes).astype(np.int64)
    n = arr.shape[0]
    if n == 0:
        return np.zeros((0, arr.shape[1] + 1), dtype=np.int64)
    _, group = np.unique(arr, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")  # rows of a group stay in their original order
    sorted_groups = group[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    digit = np.empty(n, dtype=np.int64)
    digit[order] = np.arange(n) - group_start
    return np.concatenate([arr, digit[:, None]], axis=1)


def code_diagnostics(codes: np.ndarray, codebook_size: int) -> dict[str, Any]:
    """Codebook use and collisions of ``codes`` ``[N, L]``; pass codes WITHOUT the collision digit.

    Returns JSON-serialisable values: ``utilisation`` (per level, distinct codes used / codebook_size),
    ``collision_rate`` (share of items whose full L-code tuple is shared with another item), ``max_collisions``
    (largest group sharing a tuple, 1 if none), ``num_unique_ids`` and ``items_per_prefix`` (for prefix lengths
    1..L: mean and max items per distinct prefix, and the number of distinct prefixes).
    """
    arr = _check_codes(codes)
    n, levels = arr.shape
    if codebook_size < 1:
        raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
    if n == 0 or levels == 0:
        raise ValueError(f"code_diagnostics needs at least one item and one level, got codes of shape {arr.shape}")
    if arr.min() < 0 or arr.max() >= codebook_size:
        raise ValueError(
            f"codes must lie in [0, {codebook_size}), got values in [{int(arr.min())}, {int(arr.max())}]; "
            "was the collision digit left on?"
        )
    prefixes = []
    group_sizes = np.zeros(0, dtype=np.int64)
    for length in range(1, levels + 1):
        _, group_sizes = np.unique(arr[:, :length], axis=0, return_counts=True)
        prefixes.append(
            {
                "prefix_length": length,
                "mean": float(group_sizes.mean()),
                "max": int(group_sizes.max()),
                "num_prefixes": int(group_sizes.size),
            }
        )
    return {
        "num_items": int(n),
        "num_levels": int(levels),
        "codebook_size": int(codebook_size),
        "utilisation": [float(np.unique(arr[:, level]).size / codebook_size) for level in range(levels)],
        "collision_rate": float(group_sizes[group_sizes > 1].sum() / n),
        "max_collisions": int(group_sizes.max()),
        "num_unique_ids": int(group_sizes.size),
        "items_per_prefix": prefixes,
    }


def format_diagnostics(diag: dict[str, Any]) -> str:
    """A few readable lines summarising :func:`code_diagnostics` output."""
    util = ", ".join(f"L{i + 1} {u:.1%}" for i, u in enumerate(diag["utilisation"]))
    lines = [
        f"items {diag['num_items']}, levels {diag['num_levels']}, codebook size {diag['codebook_size']}",
        f"codebook utilisation: {util}",
        f"collisions: {diag['collision_rate']:.2%} of items share their full code; largest group "
        f"{diag['max_collisions']}; {diag['num_unique_ids']} distinct IDs",
    ]
    for p in diag["items_per_prefix"]:
        lines.append(
            f"prefix length {p['prefix_length']}: {p['num_prefixes']} prefixes, items per prefix "
            f"mean {p['mean']:.2f}, max {p['max']}"
        )
    return "\n".join(lines)
