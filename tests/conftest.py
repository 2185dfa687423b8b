"""Shared fixtures. Tests that need ../shared/data skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import gaussian_blobs

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EQCRYO_SHARED_DATA", REPO.parent / "shared" / "data"))

# two threads; one per worker when pytest-xdist runs the tests in several processes (make test-fast)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads()) // _WORKERS))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not available at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def blob_volume() -> torch.Tensor:
    """An asymmetric smooth volume (no rotational symmetry), 48³, inside the inscribed sphere
    (nothing leaves the box on rotation) and smooth on the voxel scale (blobs σ >= 3.5 px), so
    that the trilinear real-space reference projector is itself accurate to well under 1%."""
    g = torch.Generator().manual_seed(3)
    centres = (torch.rand(6, 3, generator=g) * 8 - 4).tolist()
    sigmas = (torch.rand(6, generator=g) * 1.0 + 3.5).tolist()
    weights = (torch.rand(6, generator=g) + 0.5).tolist()
    v = gaussian_blobs(48, centres, sigmas, weights)
    v.blobs = (centres, sigmas, weights)  # for analytic projections
    return v


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
