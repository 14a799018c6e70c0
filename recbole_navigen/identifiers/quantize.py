"""Collaborative codes (CID): item embeddings become `levels` integers per item by residual quantization,
either faiss residual k-means (`rq_kmeans`) or a TIGER-style RQ-VAE (`rq_vae`); then TIGER's collision-free
extra level (`deduplicate`) and code statistics (`code_stats`). `build_cids` is the one entry point.

Input rows are items (no padding row); codes are int64 `[n_items, levels]`, plus one level on collision.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

# faiss logs at INFO every SIMD build it could not load before the one it uses: noise in every run's log.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
import faiss  # noqa: E402


@dataclass
class CIDResult:
    """Unique codes per item (`[n_items, levels]`, or `levels + 1` after de-duplication) and build stats."""

    codes: np.ndarray
    stats: dict


# ---------------------------------------------------------------- residual k-means (faiss)


def _nearest(centroids: np.ndarray, x: np.ndarray) -> np.ndarray:
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids)
    return index.search(x, 1)[1][:, 0].astype(np.int64)


def _kmeans(x: np.ndarray, k: int, seed: int, niter: int) -> np.ndarray:
    """At most `k` centroids of `x`. With `k` or fewer distinct points (faiss needs n >= k) the distinct
    points themselves are the centroids: the exact optimum, using fewer than `k` codes."""
    distinct = np.unique(x, axis=0)
    if len(distinct) <= k:
        return distinct
    kmeans = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False)
    kmeans.train(x)
    return kmeans.centroids


def residual_kmeans(x: np.ndarray, levels: int, codebook_size: int, seed: int, niter: int = 20) -> list[np.ndarray]:
    """One codebook per level: level 1 clusters `x`, each next level clusters what the levels before left
    (`x` minus the nearest centroids). A codebook has fewer than `codebook_size` rows on small data."""
    residual = np.ascontiguousarray(x, dtype=np.float32)
    codebooks = []
    for level in range(levels):
        centroids = _kmeans(residual, codebook_size, seed + level, niter)
        residual = residual - centroids[_nearest(centroids, residual)]
        codebooks.append(centroids)
    return codebooks


def encode(x: np.ndarray, codebooks: Sequence[np.ndarray]) -> np.ndarray:
    """Greedy residual encoding: the nearest centroid per level, of what the levels before left."""
    residual = np.ascontiguousarray(x, dtype=np.float32)
    codes = []
    for centroids in codebooks:
        codes.append(_nearest(centroids, residual))
        residual = residual - centroids[codes[-1]]
    return np.stack(codes, axis=1)


def reconstruct(codes: np.ndarray, codebooks: Sequence[np.ndarray]) -> np.ndarray:
    """The sum of each item's chosen centroids: what its code says about its embedding."""
    return sum(centroids[codes[:, level]] for level, centroids in enumerate(codebooks))


def rq_kmeans(
    x: np.ndarray, levels: int, codebook_size: int, seed: int, *, kmeans_niter: int = 20
) -> tuple[np.ndarray, dict]:
    """Codes by faiss residual k-means; no extra stats."""
    return encode(x, residual_kmeans(x, levels, codebook_size, seed, kmeans_niter)), {}


# ---------------------------------------------------------------- RQ-VAE (TIGER)


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])  # the latent and the reconstruction are unbounded


class RQVAE(nn.Module):
    """MLP encoder, residual quantizer with one codebook per level, MLP decoder."""

    def __init__(self, in_dim: int, hidden_sizes: Sequence[int], latent_dim: int, levels: int, codebook_size: int):
        super().__init__()
        self.encoder = _mlp([in_dim, *hidden_sizes, latent_dim])
        self.decoder = _mlp([latent_dim, *reversed(hidden_sizes), in_dim])
        self.codebooks = nn.Parameter(torch.zeros(levels, codebook_size, latent_dim))

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Codes `[batch, levels]`, the residual entering each level and the codebook row chosen there."""
        codes, residuals, chosen = [], [], []
        residual = z
        for book in self.codebooks:
            index = torch.cdist(residual.detach(), book.detach()).argmin(dim=1)
            codes.append(index)
            residuals.append(residual)
            chosen.append(F.embedding(index, book))  # unlike book[index], a deterministic backward on CPU
            residual = residual - chosen[-1].detach()  # a level's loss must not move the codebooks before it
        return torch.stack(codes, dim=1), residuals, chosen

    def loss(self, x: torch.Tensor, beta: float) -> torch.Tensor:
        """Reconstruction MSE plus, per level, codebook loss and `beta` times commitment loss."""
        z = self.encoder(x)
        _, residuals, chosen = self.quantize(z)
        quantized = z + (torch.stack(chosen).sum(dim=0) - z).detach()  # straight-through estimator
        vq = sum(F.mse_loss(e, r.detach()) + beta * F.mse_loss(r, e.detach()) for r, e in zip(residuals, chosen))
        return F.mse_loss(self.decoder(quantized), x) + vq


@torch.no_grad()
def _encode_all(model: RQVAE, data: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.eval()
    codes, residuals, _ = model.quantize(model.encoder(data))
    return codes, residuals


@torch.no_grad()
def reset_dead_codes(model: RQVAE, data: torch.Tensor, generator: torch.Generator) -> int:
    """Set the codebook rows no item uses to random current residuals at their level; returns how many."""
    codes, residuals = _encode_all(model, data)
    n_reset = 0
    for level, residual in enumerate(residuals):
        used = torch.zeros(model.codebooks.shape[1], dtype=torch.bool)
        used[codes[:, level]] = True
        dead = (~used).nonzero().squeeze(1)
        n, d = len(residual), len(dead)
        # distinct items when there are enough, so two revived rows are not the same point
        pick = torch.randperm(n, generator=generator)[:d] if d <= n else torch.randint(n, (d,), generator=generator)
        model.codebooks[level, dead] = residual[pick]
        n_reset += d
    return n_reset


@torch.no_grad()
def _init_codebooks(model: RQVAE, data: torch.Tensor, seed: int, niter: int, generator: torch.Generator) -> None:
    """TIGER's init: residual k-means on the latents of the untrained encoder."""
    latents = model.encoder(data).numpy()
    levels, codebook_size, _ = model.codebooks.shape
    for level, centroids in enumerate(residual_kmeans(latents, levels, codebook_size, seed, niter)):
        model.codebooks[level, : len(centroids)] = torch.from_numpy(centroids)
    reset_dead_codes(model, data, generator)  # fills rows k-means left empty (fewer distinct latents than codes)


def _train_epoch(
    model: RQVAE,
    data: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    beta: float,
    generator: torch.Generator,
) -> float:
    """One pass over the items in a seeded random order; returns the mean loss per item."""
    model.train()
    total = 0.0
    for batch in torch.randperm(len(data), generator=generator).split(batch_size):
        loss = model.loss(data[batch], beta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    return total / len(data)


def rq_vae(
    x: np.ndarray,
    levels: int,
    codebook_size: int,
    seed: int,
    *,
    rqvae_hidden_sizes: Sequence[int] = (256, 128),
    rqvae_latent_dim: int = 32,
    rqvae_epochs: int = 50,
    rqvae_batch_size: int = 1024,
    rqvae_lr: float = 1e-3,
    rqvae_beta: float = 0.25,
    kmeans_niter: int = 20,
) -> tuple[np.ndarray, dict]:
    """Codes of a trained RQ-VAE (Adam, dead codes reset after each epoch); stats: per-epoch mean loss."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)  # batch order and resets, apart from the global stream
    data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    model = RQVAE(data.shape[1], rqvae_hidden_sizes, rqvae_latent_dim, levels, codebook_size)
    _init_codebooks(model, data, seed, kmeans_niter, generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=rqvae_lr)
    history = []
    progress = tqdm(range(rqvae_epochs), desc="RQ-VAE", disable=None)  # None: silent when not a tty
    for _ in progress:
        history.append(_train_epoch(model, data, optimizer, rqvae_batch_size, rqvae_beta, generator))
        revived = reset_dead_codes(model, data, generator)
        progress.set_postfix(loss=f"{history[-1]:.4f}", revived=revived)
    return _encode_all(model, data)[0].numpy().astype(np.int64), {"rqvae_loss": history}


# ---------------------------------------------------------------- collisions, stats, entry point


def deduplicate(codes: np.ndarray) -> np.ndarray:
    """TIGER's collision-free rule: when items share a full code, one extra level holding each item's rank
    in its group (row order; 0 without collision). The extra level's size is the largest group size, which
    may exceed the codebook size. Codes without collision come back unchanged."""
    _, group, sizes = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    if sizes.max(initial=1) == 1:
        return codes
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")  # stable: ranks follow row order within a group
    ranks = np.empty(len(codes), dtype=np.int64)
    ranks[order] = np.arange(len(codes)) - np.searchsorted(group[order], group[order])
    return np.column_stack([codes, ranks]).astype(np.int64)


def code_stats(codes: np.ndarray, codebook_size: int) -> dict:
    """Per level: utilisation (distinct codes / codebook_size) and perplexity (exp of the usage entropy).
    Over full codes: collision rate (share of items sharing theirs), groups of colliding items, and the
    largest number of items sharing one code (1 when there is no collision)."""
    utilisation, perplexity = [], []
    for column in codes.T:
        counts = np.unique(column, return_counts=True)[1]
        p = counts / counts.sum()
        utilisation.append(len(counts) / codebook_size)
        perplexity.append(float(np.exp(-(p * np.log(p)).sum())))
    sizes = np.unique(codes, axis=0, return_counts=True)[1]
    shared = sizes[sizes > 1]
    return {
        "utilisation": utilisation,
        "perplexity": perplexity,
        "collision_rate": float(shared.sum() / len(codes)),
        "max_collision_group": int(sizes.max()),
        "collision_groups": int(len(shared)),
    }


_METHODS = {"rq_kmeans": rq_kmeans, "rq_vae": rq_vae}


def _option_names(method: Callable) -> set[str]:
    """A method's own settings are its keyword-only parameters."""
    return {p.name for p in inspect.signature(method).parameters.values() if p.kind is p.KEYWORD_ONLY}


def build_cids(
    embeddings: np.ndarray, method: str, levels: int = 3, codebook_size: int = 256, seed: int = 0, **options
) -> CIDResult:
    """Unique codes per item by `method` (`rq_kmeans` or `rq_vae`) with `options` its own settings. On small
    data a level uses at most as many codes as distinct points; utilisation is still against `codebook_size`."""
    start = time.perf_counter()
    if method not in _METHODS:
        raise ValueError(f"unknown CID method {method!r}; valid: {sorted(_METHODS)}")
    valid = _option_names(_METHODS[method])
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for CID method {method!r}; valid: {sorted(valid)}")
    codes, method_stats = _METHODS[method](embeddings, levels, codebook_size, seed, **options)
    unique = deduplicate(codes)
    stats = {
        "method": method,
        "levels": levels,
        "codebook_size": codebook_size,
        "extra_level": unique.shape[1] > levels,
        **code_stats(codes, codebook_size),
        **method_stats,
        "build_seconds": time.perf_counter() - start,
    }
    return CIDResult(unique, stats)
