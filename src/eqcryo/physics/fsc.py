"""Fourier shell correlation and resolution estimates.

Shells: shell ``s`` holds the Fourier voxels with ``round(|k|) == s`` (|k| in integer frequency
units of the centred lattice, :mod:`eqcryo.physics.lattice`), for s = 0 .. L//2. Shell s sits
at spatial frequency ``s / (L · apix)`` 1/Å, i.e. resolution ``L · apix / s`` Å; the last shell
is Nyquist (``2 · apix``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .lattice import fft3_centered, radius_3d

__all__ = ["FSCResult", "fsc", "resolution_at", "format_resolution"]


@dataclass
class FSCResult:
    """An FSC curve. ``freq_inv_angstrom`` (S,), ``fsc`` (S,), ``apix``, ``box``."""

    freq_inv_angstrom: np.ndarray
    fsc: np.ndarray
    apix: float
    box: int

    def resolution(self, threshold: float) -> float | None:
        """Resolution (Å) where the curve first drops below ``threshold`` (see :func:`resolution_at`);
        None when the curve starts below it (no resolution can be read; see :meth:`diagnosis`)."""
        return resolution_at(self.freq_inv_angstrom, self.fsc, threshold)

    def low_frequency_correlation(self) -> float:
        """Mean FSC over the low shells 1 .. max(2, L/8): ~1 for the same map, ~0 for unrelated
        maps, ~-1 for a map and its contrast-inverted copy."""
        n = max(2, self.box // 8)
        return float(np.mean(self.fsc[1:n + 1]))

    def diagnosis(self, threshold: float = 0.143) -> str | None:
        """Why no resolution can be read from this curve, or None when one can."""
        if self.resolution(threshold) is not None:
            return None
        low = self.low_frequency_correlation()
        if low < -0.2:
            return (f"the maps are anticorrelated at low resolution (mean FSC {low:.2f} over the first shells): "
                    f"is the contrast of one of them inverted?")
        return (f"the maps do not correlate even at low resolution (mean FSC {low:.2f} over the first shells): "
                f"are they in the same hand, orientation and position, and of the same structure?")

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": self.box,
            "apix": self.apix,
            "freq_inv_angstrom": [float(x) for x in self.freq_inv_angstrom],
            "fsc": [float(x) for x in self.fsc],
            "resolution_0.5": self.resolution(0.5),
            "resolution_0.143": self.resolution(0.143),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FSCResult:
        """The inverse of :meth:`to_dict` (extra keys, e.g. a diagnosis, are ignored)."""
        return cls(np.array(d["freq_inv_angstrom"]), np.array(d["fsc"]), d["apix"], d["box"])


def format_resolution(r: float | None, digits: int = 2, none: str = "none") -> str:
    """A resolution for people: ``"13.20 Å"``, or ``none`` when the curve gives no crossing."""
    return none if r is None else f"{r:.{digits}f} Å"


def fsc(vol_a: torch.Tensor, vol_b: torch.Tensor, apix: float = 1.0,
        mask: torch.Tensor | None = None) -> FSCResult:
    """FSC between two real volumes (L, L, L), optionally after multiplying both by ``mask``."""
    if vol_a.shape != vol_b.shape or vol_a.ndim != 3 or len(set(vol_a.shape)) != 1:
        raise ValueError(f"fsc: volumes must be cubic and the same size, got {tuple(vol_a.shape)} "
                         f"and {tuple(vol_b.shape)}")
    a, b = vol_a.to(torch.float64), vol_b.to(torch.float64)
    if mask is not None:
        a, b = a * mask, b * mask
    L = a.shape[-1]
    Fa, Fb = fft3_centered(a), fft3_centered(b)
    shell = torch.round(radius_3d(L)).long().reshape(-1)
    n = L // 2 + 1
    keep = shell < n
    shell = shell[keep]

    def ssum(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.float64).index_add_(0, shell, x.reshape(-1)[keep])

    num = ssum((Fa * Fb.conj()).real)
    den = torch.sqrt(ssum(Fa.abs() ** 2) * ssum(Fb.abs() ** 2))
    curve = torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))
    freqs = np.arange(n) / (L * apix)
    return FSCResult(freqs, curve.numpy(), apix, L)


def resolution_at(freq: np.ndarray, curve: np.ndarray, threshold: float) -> float | None:
    """Resolution (Å) at the first crossing of ``threshold`` after the DC shell, linearly
    interpolated in frequency between the shells on either side. If the curve never drops
    below the threshold, returns the Nyquist resolution ``1 / freq[-1]`` (a bound, not a
    measurement). If it is already below at the first shell after DC there is no crossing to
    read: None (never a number finer than Nyquist from an extrapolation).
    """
    if len(curve) < 2 or curve[1] < threshold:
        return None
    for i in range(2, len(curve)):
        if curve[i] < threshold:
            f0, f1, c0, c1 = freq[i - 1], freq[i], curve[i - 1], curve[i]
            f = f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0) if c0 != c1 else f1
            return float(1.0 / f) if f > 0 else float("inf")
    return float(1.0 / freq[-1])
