"""Item embeddings and residual quantisers for semantic IDs: tiny synthetic arrays only, a few seconds in total."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genretrieval.ids import embeddings as embeddings_module
from genretrieval.ids.embeddings import (
    check_embeddings,
    collaborative_embeddings,
    content_embeddings,
    joint_embeddings,
)
from genretrieval.ids.quantizers import (
    RQVAE,
    RQKMeansConfig,
    RQVAEConfig,
    add_collision_digit,
    code_diagnostics,
    format_diagnostics,
    residual_kmeans,
    train_rqvae,
)


def _clusters(num_clusters: int, per_cluster: int, dim: int, spread: float = 0.05, seed: int = 0):
    """Well-separated Gaussian blobs: returns (points float32 [n, dim], true labels [n]) in shuffled order."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_clusters, dim)) * 5.0
    labels = np.repeat(np.arange(num_clusters), per_cluster)
    points = centres[labels] + spread * rng.normal(size=(labels.size, dim))
    order = rng.permutation(labels.size)
    return points[order].astype(np.float32), labels[order]


def _tiny_rqvae_config(**overrides) -> RQVAEConfig:
    values = dict(num_levels=2, codebook_size=4, latent_dim=4, hidden_dims=[16], epochs=12, batch_size=16, lr=1e-2)
    values.update(overrides)
    return RQVAEConfig(**values)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------------------------------------ residual k-means


def test_residual_kmeans_is_deterministic_with_valid_codes():
    x = np.random.default_rng(1).normal(size=(120, 6))
    config = RQKMeansConfig(num_levels=3, codebook_size=8, max_iter=20, seed=3)
    codes = residual_kmeans(x, config)
    assert codes.shape == (120, 3) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 8
    np.testing.assert_array_equal(codes, residual_kmeans(x, config))
    others = [residual_kmeans(x, RQKMeansConfig(num_levels=3, codebook_size=8, max_iter=20, seed=s)) for s in (4, 5)]
    assert any(not np.array_equal(codes, other) for other in others)


def test_residual_kmeans_level_one_recovers_separated_clusters():
    x, labels = _clusters(num_clusters=5, per_cluster=12, dim=4)
    codes = residual_kmeans(x, RQKMeansConfig(num_levels=2, codebook_size=5, seed=0))
    # Recovered up to permutation: each true cluster maps to one code, different clusters to different codes.
    mapping = {int(c): {int(k) for k in codes[labels == c, 0]} for c in range(5)}
    assert all(len(v) == 1 for v in mapping.values())
    assert len({next(iter(v)) for v in mapping.values()}) == 5


def test_residual_kmeans_second_level_reduces_quantisation_error():
    x = np.random.default_rng(2).normal(size=(200, 5))
    codes = residual_kmeans(x, RQKMeansConfig(num_levels=2, codebook_size=8, seed=0))

    def error(prefix_len: int) -> float:
        # Mean of each code-prefix group is the best reconstruction such a prefix allows.
        _, group = np.unique(codes[:, :prefix_len], axis=0, return_inverse=True)
        group = group.reshape(-1)
        means = np.stack([x[group == g].mean(0) for g in range(group.max() + 1)])
        return float(((x - means[group]) ** 2).sum())

    assert error(2) < 0.8 * error(1)


def test_residual_kmeans_with_codebook_as_large_as_catalog_gives_unique_codes():
    x = np.random.default_rng(3).normal(size=(10, 3))
    codes = residual_kmeans(x, RQKMeansConfig(num_levels=1, codebook_size=10))
    assert len(set(codes[:, 0].tolist())) == 10


# --------------------------------------------------------------------------------------------------------- RQ-VAE


def test_train_rqvae_is_deterministic_and_loss_decreases():
    x, _ = _clusters(num_clusters=4, per_cluster=16, dim=8)
    before = torch.random.get_rng_state()
    model, codes, history = train_rqvae(x, _tiny_rqvae_config(seed=7))
    assert torch.equal(before, torch.random.get_rng_state()), "train_rqvae must not consume the global torch RNG"
    _, codes_again, history_again = train_rqvae(x, _tiny_rqvae_config(seed=7))
    assert isinstance(model, RQVAE)
    assert codes.shape == (64, 2) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 4
    np.testing.assert_array_equal(codes, codes_again)
    assert history["loss"] == history_again["loss"]
    assert len(history["loss"]) == 12 and len(history["utilisation"]) == 12
    assert all(len(u) == 2 for u in history["utilisation"])
    assert history["loss"][-1] < 0.5 * history["loss"][0]


def test_dead_code_restart_revives_a_collapsed_codebook(monkeypatch):
    x, _ = _clusters(num_clusters=4, per_cluster=16, dim=8)

    def collapsed_init(self, batch, generator, max_iter=50):
        # Identical codewords: argmin always picks code 0, so codes 1..3 never get a gradient on their own.
        with torch.no_grad():
            self.codebooks.zero_()

    monkeypatch.setattr(RQVAE, "init_codebooks", collapsed_init)
    _, codes_plain, hist_plain = train_rqvae(x, _tiny_rqvae_config(dead_code_restart=False, epochs=4))
    _, codes_restart, hist_restart = train_rqvae(x, _tiny_rqvae_config(dead_code_restart=True, epochs=4))
    assert hist_plain["utilisation"][-1] == [0.25, 0.25]
    assert np.unique(codes_plain[:, 0]).size == 1
    assert hist_restart["restarted"][0] == [3, 3]
    assert min(hist_restart["utilisation"][-1]) >= 0.75
    assert np.unique(codes_restart[:, 0]).size >= 3


def test_restart_dead_codes_resets_only_unused_codewords_to_residuals():
    x = torch.as_tensor(_clusters(num_clusters=4, per_cluster=8, dim=6)[0])
    config = _tiny_rqvae_config(num_levels=1, codebook_size=4, latent_dim=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = RQVAE(6, config)
    gen = torch.Generator().manual_seed(0)
    model.init_codebooks(x, gen)
    with torch.no_grad():
        model.codebooks[0, 2] = 1e3  # far from every latent, so unused
    usage = torch.bincount(model.get_codes(x)[:, 0], minlength=4).unsqueeze(0)
    assert usage[0, 2] == 0 and (usage[0, [0, 1, 3]] > 0).all()
    before = model.codebooks.detach().clone()
    assert model.restart_dead_codes(x, usage, gen) == [1]
    after = model.codebooks.detach()
    torch.testing.assert_close(after[0, [0, 1, 3]], before[0, [0, 1, 3]])
    latents = model.encode(x).detach()
    assert (latents - after[0, 2]).norm(dim=1).min() < 1e-6, "restarted codeword must be some item's residual"


# -------------------------------------------------------------------------------------------- collisions, diagnostics

# Groups: (1,2,0) x3 at rows 0,2,6; (0,1,2) x2 at rows 1,4; singletons (0,1,3), (0,2,0), (2,0,1).
HAND_CODES = np.array(
    [[1, 2, 0], [0, 1, 2], [1, 2, 0], [0, 1, 3], [0, 1, 2], [0, 2, 0], [1, 2, 0], [2, 0, 1]], dtype=np.int64
)


def test_add_collision_digit_numbers_duplicates_in_row_order():
    out = add_collision_digit(HAND_CODES)
    assert out.shape == (8, 4) and out.dtype == np.int64
    np.testing.assert_array_equal(out[:, :3], HAND_CODES)
    np.testing.assert_array_equal(out[:, 3], [0, 0, 1, 0, 1, 0, 2, 0])
    assert len({tuple(row) for row in out.tolist()}) == 8


def test_code_diagnostics_on_hand_built_codes():
    diag = code_diagnostics(HAND_CODES, codebook_size=4)
    assert diag["utilisation"] == [0.75, 0.75, 1.0]
    assert diag["collision_rate"] == pytest.approx(5 / 8)
    assert diag["max_collisions"] == 3
    assert diag["num_unique_ids"] == 5
    expected = [(1, 8 / 3, 4, 3), (2, 2.0, 3, 4), (3, 1.6, 3, 5)]
    for got, (length, mean, most, count) in zip(diag["items_per_prefix"], expected):
        assert got["prefix_length"] == length
        assert got["mean"] == pytest.approx(mean)
        assert got["max"] == most and got["num_prefixes"] == count
    assert json.loads(json.dumps(diag)) == diag
    text = format_diagnostics(diag)
    assert "62.50%" in text and "75.0%" in text and len(text.splitlines()) >= 3


def test_code_diagnostics_without_collisions_and_rejects_collision_digit():
    diag = code_diagnostics(np.array([[0, 1], [1, 0], [1, 1]]), codebook_size=2)
    assert diag["collision_rate"] == 0.0 and diag["max_collisions"] == 1
    with pytest.raises(ValueError, match="collision digit"):
        code_diagnostics(add_collision_digit(np.array([[0], [0], [0]])), codebook_size=2)


# ------------------------------------------------------------------------------------------------------ validation


def test_nan_row_is_named():
    x = np.random.default_rng(0).normal(size=(20, 3))
    x[17, 1] = np.nan
    x[19, 0] = np.inf
    with pytest.raises(ValueError, match="embeddings row 17 contains NaN or inf"):
        check_embeddings(x)
    with pytest.raises(ValueError, match="row 17"):
        residual_kmeans(x, RQKMeansConfig(codebook_size=2))
    with pytest.raises(ValueError, match="row 17"):
        train_rqvae(x, _tiny_rqvae_config(codebook_size=2))
    with pytest.raises(ValueError, match="2-D"):
        check_embeddings(np.zeros(5))


def test_codebook_larger_than_catalog_is_rejected():
    x = np.zeros((40, 3))
    message = r"codebook_size \(256\) is larger than the number of items \(40\)"
    with pytest.raises(ValueError, match=message):
        residual_kmeans(x, RQKMeansConfig())
    with pytest.raises(ValueError, match=message):
        train_rqvae(x, RQVAEConfig())


@pytest.mark.parametrize(
    "cls, field, value",
    [
        (RQKMeansConfig, "codebook_size", 1),
        (RQKMeansConfig, "num_levels", 0),
        (RQKMeansConfig, "max_iter", 0),
        (RQKMeansConfig, "num_init", 0),
        (RQVAEConfig, "codebook_size", 1),
        (RQVAEConfig, "latent_dim", 0),
        (RQVAEConfig, "hidden_dims", [8, 0]),
        (RQVAEConfig, "beta", -0.1),
        (RQVAEConfig, "epochs", 0),
        (RQVAEConfig, "batch_size", 0),
        (RQVAEConfig, "lr", 0.0),
        (RQVAEConfig, "num_threads", 0),
    ],
)
def test_bad_config_values_name_the_field(cls, field, value):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field} must"):
        cls(**{field: value})


# ------------------------------------------------------------------------------------------------------ embeddings

TOPIC_TEXTS = [
    "red apple fruit sweet",
    "green apple fruit juicy",
    "sweet fruit salad with apple",
    "fast red car engine",
    "car engine turbo fast",
    "vintage car with a loud engine",
    "",
]


def test_content_embeddings_put_similar_texts_closer():
    emb = content_embeddings(TOPIC_TEXTS, dim=2)
    assert emb.shape == (7, 2) and emb.dtype == np.float32
    assert _cos(emb[0], emb[1]) > _cos(emb[0], emb[4]) + 0.5
    assert _cos(emb[3], emb[5]) > _cos(emb[3], emb[2]) + 0.5
    np.testing.assert_allclose(np.linalg.norm(emb[:6], axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb[6], 0.0)  # empty text
    np.testing.assert_array_equal(emb, content_embeddings(TOPIC_TEXTS, dim=2))


def test_content_embeddings_pad_when_dim_exceeds_rank():
    emb = content_embeddings(["alpha beta", "beta gamma", "delta"], dim=16)
    assert emb.shape == (3, 16)
    assert np.linalg.matrix_rank(emb) == 3
    np.testing.assert_array_equal(emb[:, 3:], 0.0)  # 3 documents: at most rank 3
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0)


def test_content_embeddings_use_and_check_a_custom_encoder():
    calls = []

    def encoder(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return np.arange(len(texts) * 3, dtype=np.float64).reshape(len(texts), 3) + 1.0

    emb = content_embeddings(["a", "b"], dim=64, encoder=encoder)
    assert calls == [["a", "b"]]
    assert emb.shape == (2, 3) and emb.dtype == np.float32
    np.testing.assert_allclose(emb[0], np.array([1, 2, 3]) / np.sqrt(14), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[2, d\]"):
        content_embeddings(["a", "b"], encoder=lambda texts: np.zeros((3, 4)))
    with pytest.raises(ValueError, match="row 1"):
        content_embeddings(["a", "b"], encoder=lambda texts: np.array([[1.0], [np.nan]]))


def test_content_embeddings_randomised_svd_matches_exact(monkeypatch):
    texts = TOPIC_TEXTS * 3  # duplicated rows give +-ties in the singular vectors: the sign convention must hold
    exact = content_embeddings(texts, dim=3)
    monkeypatch.setattr(embeddings_module, "_EXACT_SVD_MAX_DIM", 1)
    randomised = content_embeddings(texts, dim=3)
    np.testing.assert_allclose(randomised, exact, atol=1e-4)
    np.testing.assert_array_equal(randomised[6], 0.0)


ITEMS = [f"i{j}" for j in range(16)] + ["never"]


def _group_histories(seed: int = 0) -> list[list[str]]:
    """Items 0-7 and 8-15 form two groups; every history stays inside one group, item "never" appears nowhere."""
    rng = np.random.default_rng(seed)
    return [[f"i{j}" for j in rng.choice(8, 5, replace=False) + 8 * g] for g in (0, 1) for _ in range(20)]


def test_collaborative_embeddings_follow_co_occurrence():
    histories = _group_histories()
    emb = collaborative_embeddings(histories, ITEMS, dim=4, window=2)
    assert emb.shape == (17, 4) and emb.dtype == np.float32
    sim = emb @ emb.T
    within = np.concatenate([sim[:8, :8][~np.eye(8, dtype=bool)], sim[8:16, 8:16][~np.eye(8, dtype=bool)]])
    across = sim[:8, 8:16]
    assert within.mean() > 0.5 and np.abs(across).max() < 0.1
    neighbours = np.argsort(-(sim[:16, :16] - 10 * np.eye(16)), axis=1)[:, 0]
    assert all((n < 8) == (i < 8) for i, n in enumerate(neighbours))
    np.testing.assert_array_equal(emb[16], 0.0)
    np.testing.assert_allclose(np.linalg.norm(emb[:16], axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb, collaborative_embeddings(histories, ITEMS, dim=4, window=2))


def test_collaborative_embeddings_reject_unknown_items():
    with pytest.raises(ValueError, match=r"history 1 contains item 'zzz'"):
        collaborative_embeddings([["i0", "i1"], ["i2", "zzz"]], ITEMS)


def test_joint_embeddings_weight_and_validate_parts():
    a = np.array([[3.0, 4.0], [0.0, 0.0]])
    b = np.array([[2.0], [5.0]])
    out = joint_embeddings([a, b], weights=[0.25, 1.0])
    np.testing.assert_allclose(out, [[0.3, 0.4, 1.0], [0.0, 0.0, 1.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="rows"):
        joint_embeddings([a, np.zeros((3, 1))])
    with pytest.raises(ValueError, match="weights"):
        joint_embeddings([a, b], weights=[1.0])
