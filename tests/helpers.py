"""Helpers shared by the tests (import them: ``from helpers import gaussian_blobs``)."""

from __future__ import annotations

import torch


def gaussian_blobs(L: int, centres, sigmas, weights=None, dtype=torch.float64) -> torch.Tensor:
    """A smooth test volume (L, L, L): sum of isotropic Gaussians, centres in voxels from L//2 (x, y, z)."""
    k = torch.arange(L, dtype=dtype) - L // 2
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    v = torch.zeros(L, L, L, dtype=dtype)
    weights = weights or [1.0] * len(centres)
    for (cx, cy, cz), s, w in zip(centres, sigmas, weights):
        v += w * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s ** 2))
    return v


def analytic_blob_projection(blobs, Rs: torch.Tensor, L: int) -> torch.Tensor:
    """Exact projections (B, L, L) of a sum of isotropic Gaussians at rotations Rs (B, 3, 3):
    each blob projects to w √(2π) σ N2(p; (R c)[:2], σ²)."""
    k = torch.arange(L, dtype=torch.float64) - L // 2
    yy, xx = torch.meshgrid(k, k, indexing="ij")
    out = torch.zeros(len(Rs), L, L, dtype=torch.float64)
    for c, s, w in zip(*blobs):
        pc = (Rs @ torch.tensor(c, dtype=torch.float64))[:, :2]
        out += w * (2 * torch.pi) ** 0.5 * s * torch.exp(
            -((xx - pc[:, 0, None, None]) ** 2 + (yy - pc[:, 1, None, None]) ** 2) / (2 * s * s))
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image relative L2 error ‖a - b‖ / ‖b‖ over the last two axes."""
    return (a - b).norm(dim=(-2, -1)) / b.norm(dim=(-2, -1))


def normalise(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean((-2, -1), keepdim=True)
    return x / x.norm(dim=(-2, -1), keepdim=True)
