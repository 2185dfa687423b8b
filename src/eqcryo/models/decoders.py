"""Decoders: the 3-D map, read on central slices.

Both decoders answer ``decoder.slice(R) -> (B, L, L)`` complex Fourier slices on the centred
lattice (rows ``(kx, ky, 0) @ R``, :mod:`eqcryo.physics.lattice`) and export a real volume.

- :class:`FourierNet` (cryoAI): ``V̂(k) = exp(envelope(k)) ⊙ modulant(k)``, two SIRENs
  3 -> 2 read as (real, imag); Hermitian by definition: for k in the "negative" half space
  (kx < 0, ties broken on kx = 0 by ky, then kz) ``V̂(k) = conj(V̂(-k))``, and V̂(0) is real.
  Coordinates are frequencies in units where Nyquist is 1 (``k / (L/2)``).
- :class:`VoxelDecoder`: a learnable real-space volume (L³), Fourier-transformed (2× padded,
  gridding-corrected) and sliced by the same trilinear operator as the simulator. Fast on CPU.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import torch
import torch.nn as nn

from ..physics.lattice import _crop_or_pad_centered, fft3_centered, ifft3_centered, plane_coords
from ..physics.projection import (
    centered_dft_band,
    gridding_correction,
    half_centered_dft,
    half_dft_factors,
    hermitian_lattice,
    slice_fourier_volume,
    slice_half_fourier_volume,
)

__all__ = ["Decoder", "Siren", "FourierNet", "VoxelDecoder"]


class Decoder(nn.Module, abc.ABC):
    """What the image model and training need of a decoder (both below implement it).

    ``accepts_volume``: whether :meth:`set_volume` can replace the map (a voxel grid can; a
    neural field cannot be set to a map without fitting it).
    """

    box: int
    accepts_volume: ClassVar[bool] = False

    @abc.abstractmethod
    def slice(self, R: torch.Tensor) -> torch.Tensor:
        """Complex central slices (B, L, L) at rotations R (B, 3, 3)."""

    @abc.abstractmethod
    def slice_at(self, R: torch.Tensor, pts: torch.Tensor, radius: float | None = None) -> torch.Tensor:
        """Complex values (B, M) at plane points pts (M, 3) (integer frequency units) rotated by R."""

    @abc.abstractmethod
    def volume(self) -> torch.Tensor:
        """The real-space map (L, L, L), detached."""

    @abc.abstractmethod
    def set_volume(self, vol: torch.Tensor) -> None:
        """Replace the map by ``vol`` (L, L, L) (only when ``accepts_volume``)."""


class SineLayer(nn.Module):
    def __init__(self, n_in: int, n_out: int, omega0: float, first: bool):
        super().__init__()
        self.omega0 = omega0
        self.linear = nn.Linear(n_in, n_out)
        with torch.no_grad():
            bound = 1.0 / n_in if first else math.sqrt(6.0 / n_in) / omega0
            self.linear.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.omega0 * self.linear(x))


class Siren(nn.Module):
    """SIREN (Sitzmann et al. 2020): ``hidden_layers`` sine layers of ``width``, then linear."""

    def __init__(self, n_in: int, n_out: int, width: int, hidden_layers: int, omega0: float):
        super().__init__()
        layers = [SineLayer(n_in, width, omega0, True)]
        layers += [SineLayer(width, width, omega0, False) for _ in range(hidden_layers - 1)]
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(width, n_out)
        with torch.no_grad():
            b = math.sqrt(6.0 / width) / omega0
            self.out.weight.uniform_(-b, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(x))


class FourierNet(Decoder):
    """cryoAI's FourierNet. Defaults are the paper's (width 256; modulant 3 hidden layers, ω0 40;
    envelope 2 hidden layers, ω0 30)."""

    accepts_volume: ClassVar[bool] = False
    plane: torch.Tensor

    def __init__(self, box: int, width: int = 256, modulant_layers: int = 3, envelope_layers: int = 2,
                 omega_modulant: float = 40.0, omega_envelope: float = 30.0):
        super().__init__()
        self.box = box
        self.modulant = Siren(3, 2, width, modulant_layers, omega_modulant)
        self.envelope = Siren(3, 2, width, envelope_layers, omega_envelope)
        self.register_buffer("plane", plane_coords(box, torch.float32) / (box / 2))

    def evaluate(self, k: torch.Tensor) -> torch.Tensor:
        """V̂ at coordinates k (..., 3) (Nyquist = 1) -> complex (...)."""
        kx, ky, kz = k[..., 0], k[..., 1], k[..., 2]
        neg = (kx < 0) | ((kx == 0) & ((ky < 0) | ((ky == 0) & (kz < 0))))
        kk = torch.where(neg[..., None], -k, k)
        out = torch.exp(self.envelope(kk)) * self.modulant(kk)
        re, im = out[..., 0], out[..., 1]
        im = torch.where(neg, -im, im)
        im = torch.where((kx == 0) & (ky == 0) & (kz == 0), torch.zeros_like(im), im)
        return torch.complex(re, im)

    def slice(self, R: torch.Tensor) -> torch.Tensor:
        """Slices (B, L, L) complex at rotations R (B, 3, 3)."""
        k = self.plane.to(R.dtype) @ R
        return self.evaluate(k).reshape(-1, self.box, self.box)

    def slice_at(self, R: torch.Tensor, pts: torch.Tensor, radius: float | None = None) -> torch.Tensor:
        """Values (B, M) complex at the plane points ``pts`` (M, 3) (integer frequency units,
        |pts| < radius) rotated by R (B, 3, 3): only the M points are evaluated."""
        return self.evaluate((pts.to(R.dtype) / (self.box / 2)) @ R)

    @torch.no_grad()
    def volume(self, chunk: int = 65536) -> torch.Tensor:
        """The real-space map (L, L, L): V̂ on the lattice points inside the sphere |k| < L/2 (the
        frequencies the loss trains; beyond them the network is unconstrained and is read as 0),
        evaluated on one Hermitian half only and completed by V̂(-k) = conj V̂(k) (~1/3.8 of the
        L³ evaluations), then the inverse FFT."""
        L = self.box
        dt = self.modulant.out.weight.dtype
        dev = self.plane.device
        i = torch.arange(L, device=dev)
        iz, iy, ix = (a.reshape(-1) for a in torch.meshgrid(i, i, i, indexing="ij"))
        kz, ky, kx = iz - L // 2, iy - L // 2, ix - L // 2
        inside = (kx * kx + ky * ky + kz * kz) < (L / 2) ** 2
        half = (kz > 0) | ((kz == 0) & ((ky > 0) | ((ky == 0) & (kx >= 0))))
        sel = (inside & half).nonzero()[:, 0]
        pts = torch.stack([kx, ky, kz], -1)[sel].to(dt) / (L / 2)
        v = torch.cat([self.evaluate(pts[j:j + chunk]) for j in range(0, len(pts), chunk)])
        vals = torch.zeros(L ** 3, dtype=torch.complex128, device=dev)
        vals[sel] = v.to(torch.complex128)
        # the partner of lattice index i is L - i (for i >= 1; inside the sphere no index is 0)
        partner = ((L - iz[sel]) * L + (L - iy[sel])) * L + (L - ix[sel])
        vals[partner] = v.to(torch.complex128).conj()
        return ifft3_centered(vals.reshape(L, L, L)).real.to(dt)

    def set_volume(self, vol: torch.Tensor) -> None:
        raise NotImplementedError("FourierNet is a neural field: it cannot be set to a map (accepts_volume is False)")


class VoxelDecoder(Decoder):
    """A learnable real-space map (L, L, L), read through a 2× padded, gridding-corrected DFT."""

    accepts_volume: ClassVar[bool] = True
    grid_corr: torch.Tensor
    plane: torch.Tensor

    def __init__(self, box: int, pad: int = 2, init: torch.Tensor | None = None):
        super().__init__()
        self.box, self.pad = box, pad
        self.vol = nn.Parameter(torch.zeros(box, box, box) if init is None else init.clone().float())
        self.register_buffer("grid_corr", gridding_correction(box, pad, torch.float32))
        self.register_buffer("plane", plane_coords(box, torch.float32))
        # factors of the kx >= 0 half of the same DFT (physics.projection.half_centered_dft), what
        # full-band slices read; built per (dtype, device) on first use, not as buffers: a float32
        # buffer would keep float32 phases when the module is cast to float64
        self._half_factors: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}

    def fourier(self) -> torch.Tensor:
        """The padded centred DFT (N, N, N), N = pad·L, with its unpaired Nyquist planes (index 0
        of each axis, |K| = N/2) zeroed: trilinear reads near |k| → L/2 then see zeros on both
        sides, so slices are exactly Hermitian (S(-k) = conj S(k)), which the half-plane loss uses.
        Full-band slices read only its kx >= 0 half (:func:`half_centered_dft`) when N is even."""
        v = _crop_or_pad_centered(self.vol * self.grid_corr, self.pad * self.box, 3)
        return hermitian_lattice(fft3_centered(v))

    def slice(self, R: torch.Tensor) -> torch.Tensor:
        """Slices (B, L, L) complex at rotations R (B, 3, 3)."""
        return self.slice_at(R, self.plane).reshape(-1, self.box, self.box)

    def slice_at(self, R: torch.Tensor, pts: torch.Tensor, radius: float | None = None) -> torch.Tensor:
        """Values (B, M) complex at the plane points ``pts`` (M, 3) (integer frequency units,
        all with |k| < ``radius``) rotated by R (B, 3, 3). With ``radius`` the padded DFT is
        computed only on the band trilinear interpolation reads (:func:`centered_dft_band`);
        the values are those of :meth:`slice` to rounding."""
        coords = (pts.to(R.dtype) @ R) * self.pad
        K = None if radius is None else int(math.ceil(radius * self.pad)) + 1
        if K is None or 2 * K + 1 >= self.pad * self.box:
            if self.pad * self.box % 2 == 0:  # one Hermitian half: ~1/3 of the FFT work, half the memory
                key = (self.vol.dtype, self.vol.device)
                if key not in self._half_factors:  # phases computed in float64, then cast
                    self._half_factors[key] = half_dft_factors(self.box, self.pad, *key)
                half = half_centered_dft(self.vol * self.grid_corr, self.pad, self._half_factors[key])
                return slice_half_fourier_volume(half, coords)
            return slice_fourier_volume(self.fourier(), coords)
        return slice_fourier_volume(centered_dft_band(self.vol * self.grid_corr, self.pad, K), coords)

    @torch.no_grad()
    def volume(self) -> torch.Tensor:
        return self.vol.detach().clone()

    @torch.no_grad()
    def set_volume(self, vol: torch.Tensor) -> None:
        self.vol.copy_(vol.to(self.vol.dtype).to(self.vol.device))
