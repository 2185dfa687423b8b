"""The resolution of two independent half-maps, and the checks that keep it honest.

- :func:`auto_mask`: a soft mask around the particle, made from the map itself (low-pass
  filtered, thresholded, dilated, a raised-cosine edge), as RELION's and cryoSPARC's
  refinements do. A tight mask raises the FSC by removing solvent noise, and can raise it
  falsely by correlating the two halves through the mask's own shape.
- :func:`gold_standard_fsc`: the masked FSC corrected for that effect by the high-resolution
  noise substitution test (Chen et al. 2013, Ultramicroscopy 135: 24-35): the half-maps' phases
  are randomised beyond the shell where their unmasked FSC falls below 0.8, the masked FSC of
  the randomised maps measures what the mask alone contributes, and
  ``FSC_true = (FSC_masked − FSC_random) / (1 − FSC_random)`` beyond that shell (+2, as RELION).
- :func:`fsc_weighted`: a map filtered by ``sqrt(2·FSC / (1 + FSC))`` per shell (the expected
  correlation of the full map with the truth), zero where the FSC is not positive.

Shapes: volumes (L, L, L) real, centred at L // 2; ``apix`` in Å per voxel; shells are integer
Fourier radii in voxels of the box (0 … L/2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..physics.fsc import FSCResult, fsc
from ..physics.lattice import fft3_centered, ifft3_centered, radius_3d

__all__ = ["auto_mask", "lowpass", "randomise_phases_beyond", "gold_standard_fsc", "GoldStandardFSC", "fsc_weighted"]


def lowpass(volume: torch.Tensor, resolution_angstrom: float, apix: float, edge_shells: float = 2.0) -> torch.Tensor:
    """``volume`` low-pass filtered at ``resolution_angstrom`` with a raised-cosine edge
    ``edge_shells`` wide (Fourier shells of the box)."""
    L = volume.shape[-1]
    r = radius_3d(L, torch.float64)
    r0 = L * apix / resolution_angstrom
    w = 0.5 * (1 + torch.cos(torch.pi * ((r - r0) / edge_shells).clamp(0, 1)))
    return ifft3_centered(fft3_centered(volume.double()) * w).real


def auto_mask(volume: torch.Tensor, apix: float, lowpass_angstrom: float = 15.0, threshold: float = 0.1,
              dilate_angstrom: float = 6.0, soft_angstrom: float = 12.0) -> torch.Tensor:
    """A soft mask (L, L, L) in [0, 1] around the density of ``volume``.

    The map is low-pass filtered at ``lowpass_angstrom`` (at least 2.5 voxels), thresholded at
    ``threshold`` × its maximum, the largest connected region kept, dilated by ``dilate_angstrom``
    and given a raised-cosine edge ``soft_angstrom`` wide (both at least 1 voxel); it is kept
    inside the sphere of radius L/2 − 1 voxels so that it never touches the box's edge.
    """
    from scipy import ndimage

    L = volume.shape[-1]
    v = lowpass(volume, max(lowpass_angstrom, 2.5 * apix), apix).numpy()
    core = v > threshold * v.max()
    labels, n = ndimage.label(core)
    if n > 1:  # one particle: specks of noise above the threshold are not part of it
        sizes = ndimage.sum(core, labels, index=np.arange(1, n + 1))
        core = labels == 1 + int(np.argmax(sizes))
    if not core.any():  # (a flat map): the sphere of the whole box
        core = radius_3d(L).numpy() <= 0.4 * L
    dist = ndimage.distance_transform_edt(~core) * apix  # Å from the core
    d0, w = max(dilate_angstrom, apix), max(soft_angstrom, apix)
    m = np.where(dist <= d0, 1.0, 0.5 * (1 + np.cos(np.pi * np.clip((dist - d0) / w, 0, 1))))
    m *= radius_3d(L).numpy() <= L / 2 - 1
    return torch.from_numpy(m)


def randomise_phases_beyond(volume: torch.Tensor, shell: float, generator: torch.Generator) -> torch.Tensor:
    """``volume`` with the phases of its Fourier components at radius > ``shell`` replaced by
    random ones, amplitudes kept. The phases are those of white noise's spectrum, which are
    odd (φ(−k) = −φ(k)) as a real volume's are, so the result is real."""
    L = volume.shape[-1]
    F = fft3_centered(volume.double())
    noise = fft3_centered(torch.randn(F.shape, generator=generator, dtype=torch.float64))
    beyond = radius_3d(L, torch.float64) > shell
    F = torch.where(beyond, F.abs() * torch.sgn(noise), F)
    return ifft3_centered(F).real


@dataclass
class GoldStandardFSC:
    """The FSC curves of two half-maps; ``corrected`` is the one to read the resolution from."""

    unmasked: FSCResult
    masked: FSCResult
    randomised: FSCResult  # masked FSC of the phase-randomised half-maps
    corrected: FSCResult
    randomise_from_shell: int

    @property
    def resolution(self) -> float | None:
        """Å at FSC 0.143 of the corrected masked curve (None: no crossing can be read)."""
        return self.corrected.resolution(0.143)

    def to_dict(self) -> dict[str, Any]:
        return {"unmasked": self.unmasked.to_dict(), "masked": self.masked.to_dict(),
                "phase_randomised": self.randomised.to_dict(), "corrected": self.corrected.to_dict(),
                "randomise_from_shell": self.randomise_from_shell,
                "randomise_from_angstrom": (None if self.randomise_from_shell == 0 else
                                            self.unmasked.box * self.unmasked.apix / self.randomise_from_shell)}


def gold_standard_fsc(half1: torch.Tensor, half2: torch.Tensor, apix: float, mask: torch.Tensor,
                      seed: int = 0) -> GoldStandardFSC:
    """Unmasked, masked, phase-randomised and corrected FSC of two independent half-maps."""
    unmasked = fsc(half1, half2, apix)
    masked = fsc(half1, half2, apix, mask)
    below = np.nonzero(unmasked.fsc[1:] < 0.8)[0]
    start = int(below[0]) + 1 if len(below) else len(unmasked.fsc) - 1
    g = torch.Generator().manual_seed(seed)
    r1, r2 = randomise_phases_beyond(half1, start, g), randomise_phases_beyond(half2, start, g)
    rand = fsc(r1, r2, apix, mask)
    c = masked.fsc.copy()
    beyond = np.arange(len(c)) > start + 2
    denom = np.clip(1 - rand.fsc, 1e-6, None)
    c[beyond] = ((masked.fsc - rand.fsc) / denom)[beyond]
    corrected = FSCResult(masked.freq_inv_angstrom, c, apix, masked.box)
    return GoldStandardFSC(unmasked, masked, rand, corrected, start)


def fsc_weighted(volume: torch.Tensor, curve: FSCResult) -> torch.Tensor:
    """``volume`` times ``sqrt(2·FSC / (1 + FSC))`` of the half-maps' ``curve`` on each shell
    (0 where the FSC is not positive, and beyond the curve's last shell)."""
    L = volume.shape[-1]
    f = np.clip(curve.fsc, 0.0, 1.0)
    w = torch.from_numpy(np.sqrt(2 * f / (1 + f)))
    shell = torch.round(radius_3d(L, torch.float64)).long()
    inside = shell < len(w)
    weight = torch.where(inside, w[shell.clamp_max(len(w) - 1)], torch.zeros((), dtype=torch.float64))
    return ifft3_centered(fft3_centered(volume.double()) * weight).real
