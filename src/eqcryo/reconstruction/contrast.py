"""The sign of the contrast, from the particles alone.

eqcryo's image model (RELION's CTF convention: CTF > 0 at low frequency) takes a particle to be
``CTF * projection of a positive density``. Data extracted with the other sign ("dark" protein,
no ``--invert_contrast`` at extraction) must be multiplied by -1, or ab initio learns a negative
map — cryoDRGN's hollow "thin-shell" maps.

The test: phase-flip each image by its own CTF (multiply its spectrum by sign(CTF), DC removed)
and average a few thousand of them. The CTF's sign changes cancel, the noise averages away, and
what remains is the mean projection: a positive blob in the middle of the box for data in the
model's convention, a negative one for inverted data. The score is the blob's mean (disc of
radius L/4) minus the mean of the rim (beyond 3L/8), in units of the rim's standard deviation;
its sign is the decision. Particle shifts of a few pixels do not matter at this resolution.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..data.dataset import OUTLIER_RANGES, ParticleDataset
from ..physics.lattice import fft2_centered, ifft2_centered, radius_2d

__all__ = ["ContrastCheck", "check_contrast", "decide_inversion", "median_for_outliers", "orient_contrast"]

def median_for_outliers(images: torch.Tensor) -> torch.Tensor:
    """``images`` (B, L, L) float64 with each image's outlier pixels (:func:`pixel_range` of that
    image) set to its median; images without outliers are returned unchanged."""
    flat = images.reshape(len(images), -1)
    q = torch.quantile(flat, torch.tensor([0.01, 0.5, 0.99], dtype=flat.dtype, device=flat.device), dim=1)  # (3, B)
    bound = (OUTLIER_RANGES * (q[2] - q[0]).clamp_min(1e-30))[:, None]
    bad = (flat - q[1][:, None]).abs() > bound
    return torch.where(bad, q[1][:, None].expand_as(flat), flat).reshape(images.shape)


@dataclass
class ContrastCheck:
    """``inverted``: the data have the opposite sign to the image model; ``score``: (centre − rim)
    of the phase-flipped average over the rim's standard deviation (> 0: as expected);
    ``n_images`` used; ``confident``: |score| > 3 (otherwise ``auto`` keeps the images as they are,
    and says so)."""

    inverted: bool
    score: float
    n_images: int
    confident: bool

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def check_contrast(ds: ParticleDataset, n: int = 2000, seed: int = 0, batch: int = 256) -> ContrastCheck:
    """Phase-flipped average of up to ``n`` particles of ``ds`` (a seeded sample); see the module."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(ds.n, size=min(n, ds.n), replace=False))
    L = ds.box
    acc = torch.zeros(L, L, dtype=torch.complex128)
    for s in range(0, len(ids), batch):
        b = ds.batch(ids[s:s + batch])
        F = fft2_centered(median_for_outliers(b.images.double().cpu()))  # one hot pixel must not decide
        if b.ctf is not None:
            F = F * torch.sign(b.ctf.double().cpu())
        F[:, L // 2, L // 2] = 0  # the images' offsets (normalisation) say nothing about the sign
        acc += F.sum(0)
    avg = ifft2_centered(acc / len(ids)).real
    r = radius_2d(L)
    centre, rim = avg[r < L / 4], avg[r >= 3 * L / 8]
    score = float((centre.mean() - rim.mean()) / (rim.std() + 1e-30))
    if ds.scale < 0:  # the dataset already multiplies by -1: report the data's own sign
        score = -score
    return ContrastCheck(inverted=score < 0, score=score, n_images=len(ids), confident=abs(score) > 3)


def decide_inversion(mode: str, ds: ParticleDataset, seed: int = 0) -> tuple[bool, dict]:
    """``mode`` auto|yes|no -> (multiply the images by -1?, evidence for config.yaml and the report)."""
    if mode == "yes":
        return True, {"mode": "yes", "inverted": True}
    if mode == "no":
        return False, {"mode": "no", "inverted": False}
    c = check_contrast(ds, seed=seed)
    return c.inverted and c.confident, {"mode": "auto", **c.to_dict(), "inverted": c.inverted and c.confident}


def orient_contrast(ds: ParticleDataset, mode: str, seed: int = 0) -> dict:
    """Decide (``mode`` auto|yes|no) and, for inverted data, make ``ds`` read its images times -1
    (the sign goes into its scale), saying so on stderr. Returns the evidence."""
    invert, evidence = decide_inversion(mode, ds, seed)
    if mode == "auto" and not evidence["confident"]:
        print(f"warning: {ds.table.source}: the contrast's sign could not be decided from the data (score "
              f"{evidence['score']:.1f}; |score| > 3 decides); the images are kept as they are: check the map's "
              f"sign, or give --invert-contrast yes or no", file=sys.stderr)
    if invert:
        ds.scale = -ds.scale
        if mode == "auto":  # (an inverted data set would give a negative map)
            print(f"note: {ds.table.source}: the particles' contrast is inverted relative to the image model "
                  f"(score {evidence['score']:.1f}); they are multiplied by -1 (--invert-contrast no to keep "
                  f"them)", file=sys.stderr)
    return evidence
