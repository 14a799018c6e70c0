"""CID quantization: residual k-means, RQ-VAE, the collision-free extra level, code stats, the entry point."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recbole_navigen.identifiers.quantize import (
    RQVAE,
    build_cids,
    code_stats,
    deduplicate,
    encode,
    reconstruct,
    reset_dead_codes,
    residual_kmeans,
)

K = 16
VAE = {"rqvae_hidden_sizes": [32], "rqvae_latent_dim": 8, "rqvae_epochs": 5, "rqvae_batch_size": 32, "rqvae_lr": 1e-2}


@pytest.fixture(scope="module")
def clustered() -> np.ndarray:
    """300 items x 16 dims: 12 clusters with noise."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 16))
    return (centres[rng.integers(12, size=300)] + rng.normal(scale=0.3, size=(300, 16))).astype(np.float32)


def _assert_valid(codes: np.ndarray, n: int, levels: int) -> None:
    assert codes.dtype == np.int64 and codes.shape[0] == n and codes.shape[1] in (levels, levels + 1)
    assert codes[:, :levels].min() >= 0 and codes[:, :levels].max() < K
    assert len(np.unique(codes, axis=0)) == n


def test_rq_kmeans_codes_are_valid_and_seeded(clustered):
    first = build_cids(clustered, "rq_kmeans", levels=3, codebook_size=K, seed=1)
    again = build_cids(clustered, "rq_kmeans", levels=3, codebook_size=K, seed=1)
    other = build_cids(clustered, "rq_kmeans", levels=3, codebook_size=K, seed=2)
    _assert_valid(first.codes, 300, 3)
    np.testing.assert_array_equal(first.codes, again.codes)
    assert not np.array_equal(first.codes, other.codes)
    stats = first.stats
    assert stats["method"] == "rq_kmeans" and stats["levels"] == 3 and stats["codebook_size"] == K
    assert stats["extra_level"] == (first.codes.shape[1] == 4)
    assert len(stats["utilisation"]) == len(stats["perplexity"]) == 3
    assert stats["utilisation"][0] == 1.0 and 1.0 < stats["perplexity"][0] <= K
    assert stats["build_seconds"] > 0


def test_each_residual_level_reduces_the_reconstruction_error(clustered):
    codebooks = residual_kmeans(clustered, levels=3, codebook_size=K, seed=0)
    errors = [
        float(((reconstruct(encode(clustered, codebooks[:n]), codebooks[:n]) - clustered) ** 2).mean())
        for n in (1, 2, 3)
    ]
    assert errors[1] < 0.9 * errors[0] and errors[2] < errors[1]


def test_fewer_items_than_codes_uses_the_distinct_points():
    x = np.random.default_rng(3).normal(size=(20, 8)).astype(np.float32)
    x[5] = x[0]  # one duplicate: 19 distinct points for 256 codes
    result = build_cids(x, "rq_kmeans", levels=2, codebook_size=256, seed=0)
    assert result.codes.shape == (20, 3) and result.stats["extra_level"]
    assert len(np.unique(result.codes, axis=0)) == 20
    np.testing.assert_array_equal(result.codes[0, :2], result.codes[5, :2])
    assert list(result.codes[[0, 5], 2]) == [0, 1]
    assert result.stats["utilisation"] == [19 / 256, 1 / 256]  # the points are the centroids: zero residual
    assert result.stats["collision_rate"] == pytest.approx(2 / 20)
    assert result.stats["max_collision_group"] == 2 and result.stats["collision_groups"] == 1


def test_deduplicate_appends_ranks_within_collision_groups():
    codes = np.array([[1, 2], [3, 4], [1, 2], [5, 6], [1, 2], [3, 4]], dtype=np.int64)
    unique = deduplicate(codes)
    np.testing.assert_array_equal(unique[:, :2], codes)
    np.testing.assert_array_equal(unique[:, 2], [0, 0, 1, 0, 2, 1])
    assert len(np.unique(unique, axis=0)) == len(codes)


def test_deduplicate_leaves_collision_free_codes_unchanged():
    codes = np.array([[1, 2], [2, 1], [1, 1]], dtype=np.int64)
    assert deduplicate(codes) is codes


def test_deduplicate_groups_larger_than_the_codebook():
    codes = np.zeros((5, 2), dtype=np.int64)
    np.testing.assert_array_equal(deduplicate(codes)[:, 2], [0, 1, 2, 3, 4])


def test_code_stats_on_hand_made_codes():
    codes = np.array([[0, 7], [1, 7], [2, 7], [3, 7], [0, 7], [1, 7]], dtype=np.int64)
    stats = code_stats(codes, codebook_size=8)
    assert stats["utilisation"] == [4 / 8, 1 / 8]
    assert stats["perplexity"][1] == pytest.approx(1.0)  # one code: no uncertainty
    uniform = code_stats(np.arange(8)[:, None], codebook_size=8)
    assert uniform["perplexity"] == [pytest.approx(8.0)] and uniform["collision_rate"] == 0.0
    assert uniform["max_collision_group"] == 1 and uniform["collision_groups"] == 0
    assert stats["collision_rate"] == pytest.approx(4 / 6)  # [0,7] and [1,7] each twice
    assert stats["max_collision_group"] == 2 and stats["collision_groups"] == 2


def test_rq_vae_trains_deterministically_to_unique_codes(clustered):
    first = build_cids(clustered, "rq_vae", levels=2, codebook_size=K, seed=4, **VAE)
    again = build_cids(clustered, "rq_vae", levels=2, codebook_size=K, seed=4, **VAE)
    _assert_valid(first.codes, 300, 2)
    np.testing.assert_array_equal(first.codes, again.codes)
    losses = first.stats["rqvae_loss"]
    assert losses == again.stats["rqvae_loss"] and len(losses) == VAE["rqvae_epochs"]
    assert losses[-1] < 0.8 * losses[0]  # the total, though its VQ terms grow while the latent spreads
    assert first.stats["utilisation"][0] > 0.5  # dead-code resets keep the codebook in use


def test_dead_code_reset_revives_an_unused_code(clustered):
    torch.manual_seed(0)
    model = RQVAE(16, [32], 8, levels=2, codebook_size=K)
    data = torch.from_numpy(clustered)
    with torch.no_grad():
        latents = model.encoder(data)
        model.codebooks[:] = latents[:K].unsqueeze(0)
        model.codebooks[0, 3] = 1e3  # far from every latent: no item picks it
    assert reset_dead_codes(model, data, torch.Generator().manual_seed(0)) >= 1
    revived = model.codebooks[0, 3].detach()
    assert (latents == revived).all(dim=1).any()  # now a current level-1 residual: an item's latent
    codes, _, _ = model.quantize(model.encoder(data))
    assert (codes[:, 0] == 3).any()


def test_unknown_method_or_option_is_named():
    x = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=r"'kmeans'.*rq_kmeans.*rq_vae"):
        build_cids(x, "kmeans", levels=1, codebook_size=2, seed=0)
    with pytest.raises(ValueError, match=r"rqvae_epochs.*rq_kmeans.*kmeans_niter"):
        build_cids(x, "rq_kmeans", levels=1, codebook_size=2, seed=0, rqvae_epochs=3)
