"""Contrast transfer function with RELION's sign convention.

``CTF(k) = -sin(χ(k))`` with RELION's ``χ = -π λ Δf(α) |k|² + (π/2) Cs λ³ |k|⁴ - φ - atan(w/√(1-w²))``,
i.e. positive at low frequency (contrast-inverted, white particles), where

- ``Δf(α) = (dU + dV)/2 + (dU - dV)/2 · cos(2(α - α_ast))`` (Å, positive = underfocus),
  ``α = atan2(ky, kx)`` with kx along image columns,
- λ is the relativistic electron wavelength (Å) at the voltage (kV),
- Cs in mm, w the amplitude contrast, φ the phase shift (degrees),
- an optional envelope ``exp(-B |k|² / 4)`` (B in Å²).

cryoDRGN's ``compute_ctf`` returns exactly the negative of this (tested).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .lattice import Device, freq_index

#: a number, or one per particle (a tensor or array)
ArrayLike = float | torch.Tensor | np.ndarray

__all__ = ["electron_wavelength_angstrom", "compute_ctf", "ctf_2d"]


def electron_wavelength_angstrom(voltage_kv: torch.Tensor | float) -> torch.Tensor:
    """Relativistic electron wavelength (Å) at accelerating voltage ``voltage_kv`` (kV)."""
    v = torch.as_tensor(voltage_kv, dtype=torch.float64) * 1e3
    return 12.2643247 / torch.sqrt(v * (1.0 + v * 0.978466e-6))


def compute_ctf(kx: torch.Tensor, ky: torch.Tensor, defocus_u_angstrom: ArrayLike, defocus_v_angstrom: ArrayLike,
                defocus_angle_degrees: ArrayLike, voltage_kv: ArrayLike, cs_mm: ArrayLike,
                amplitude_contrast: ArrayLike, phase_shift_degrees: ArrayLike = 0.0,
                bfactor_angstrom2: ArrayLike = 0.0) -> torch.Tensor:
    """CTF at physical frequencies ``kx, ky`` (1/Å, shape (..., M)) for per-particle params (...,).

    Every parameter is broadcast as (..., 1) against the frequency arrays, so a batch of B
    particles takes params of shape (B,) and frequencies of shape (B, M) or (1, M).
    """
    def p(x: ArrayLike) -> torch.Tensor:
        return torch.as_tensor(x, dtype=kx.dtype, device=kx.device).unsqueeze(-1)

    dU, dV, ang = p(defocus_u_angstrom), p(defocus_v_angstrom), torch.deg2rad(p(defocus_angle_degrees))
    lam = electron_wavelength_angstrom(torch.as_tensor(voltage_kv)).to(kx.dtype).to(kx.device).unsqueeze(-1)
    cs = p(cs_mm) * 1e7
    w = p(amplitude_contrast)
    phase = torch.deg2rad(p(phase_shift_degrees))
    s2 = kx ** 2 + ky ** 2
    alpha = torch.atan2(ky, kx)
    df = 0.5 * (dU + dV) + 0.5 * (dU - dV) * torch.cos(2.0 * (alpha - ang))
    k3 = torch.atan(w / torch.sqrt(1.0 - w ** 2))
    chi = -math.pi * lam * df * s2 + 0.5 * math.pi * cs * lam ** 3 * s2 ** 2 - phase - k3
    ctf = -torch.sin(chi)
    b = p(bfactor_angstrom2)
    return ctf * torch.exp(-b * s2 / 4.0)


def ctf_2d(L: int, apix: float, params: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
           device: Device = None) -> torch.Tensor:
    """CTF images (B, L, L) on the centred Fourier lattice for a batch of particles.

    ``params`` holds tensors (B,) with keys ``defocus_u_angstrom``, ``defocus_v_angstrom``,
    ``defocus_angle_degrees``, ``voltage_kv``, ``cs_mm``, ``amplitude_contrast`` and optionally
    ``phase_shift_degrees``, ``bfactor_angstrom2``.
    """
    k = freq_index(L, dtype, device) / (L * apix)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    kx, ky = kx.reshape(1, -1), ky.reshape(1, -1)
    B = len(params["defocus_u_angstrom"])
    out = compute_ctf(kx, ky, params["defocus_u_angstrom"], params["defocus_v_angstrom"],
                      params["defocus_angle_degrees"], params["voltage_kv"], params["cs_mm"],
                      params["amplitude_contrast"], params.get("phase_shift_degrees", torch.zeros(B)),
                      params.get("bfactor_angstrom2", torch.zeros(B)))
    return out.reshape(B, L, L)
