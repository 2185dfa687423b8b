"""Fixed-pose reconstruction by Fourier-space backprojection with Wiener-style CTF correction.

For each image (un-shifted in Fourier space by its known origin), every Fourier sample with
``|k| < L/2`` is spread with trilinear weights ``w`` onto a ``pad``-times finer 3-D lattice at
``lattice @ R`` (the adjoint of the slice operator), accumulating

    N(K) = Σ w · CTF · F_img,      D(K) = Σ w · CTF².

The estimate is ``V̂ = N / (D + λ)`` with ``λ = wiener · mean(D over the sampled sphere)``: a
Wiener filter with a flat signal-to-noise prior. ``wiener`` (default 0.01) trades noise
amplification near CTF zeros against a slight damping where few images contribute. The
inverse FFT is then divided by the trilinear kernel's transform (sinc² per axis, the gridding
correction) and cropped to the original box.
"""

from __future__ import annotations

import numpy as np
import torch

from ..physics.lattice import _crop_or_pad_centered, fft2_centered, freq_index, ifft3_centered, plane_coords
from ..physics.projection import shift_phase

__all__ = ["Backprojector"]


class Backprojector:
    """Accumulates images into a Fourier volume; call :meth:`add` per batch, then :meth:`reconstruct`.

    Parameters: ``L`` box (px), ``pad`` oversampling of the 3-D lattice (default 2; pad·L even),
    ``dtype`` of the accumulators (float64; float32 is ~3× faster, for maps that feed a search).
    """

    def __init__(self, L: int, pad: int = 2, dtype: torch.dtype = torch.float64):
        self.L, self.pad, self.dtype = L, pad, dtype
        N = pad * L
        if N % 2:
            raise ValueError(f"backprojection needs an even padded size pad·L, got {pad}·{L}")
        self.N = N
        # accumulators (real, imag, weight) on an (N+1)³ lattice: a sample inside the disc has
        # |K| < N/2, so its 8 trilinear neighbours are indices 0 … N; the extra plane at N (beyond
        # the lattice) takes what would fall off it, so :meth:`add` needs no bounds test, and
        # :meth:`reconstruct` drops it. Three flat arrays: 1-D index_add_ is the fast path (one
        # (P, 3) row-wise index_add_ was slower on CPU)
        self._acc = torch.zeros(3, (N + 1) ** 3, dtype=dtype)
        self.count = 0
        k = plane_coords(L, dtype)
        self._keep = k.norm(dim=-1) < L / 2
        self._plane = k[self._keep]

    @property
    def num(self) -> torch.Tensor:
        """Σ w·CTF·F on the N³ lattice, (2, N³): real and imaginary parts."""
        return self._lattice(self._acc[:2])

    @property
    def den(self) -> torch.Tensor:
        """Σ w·CTF² on the N³ lattice, (N³,)."""
        return self._lattice(self._acc[2:])[0]

    def _lattice(self, a: torch.Tensor) -> torch.Tensor:
        """(c, (N+1)³) -> (c, N³): the lattice without the extra planes."""
        N = self.N
        return a.reshape(-1, N + 1, N + 1, N + 1)[:, :N, :N, :N].reshape(-1, N ** 3)

    def add(self, images: torch.Tensor, R: torch.Tensor, origin_px: torch.Tensor | None = None,
            ctf: torch.Tensor | None = None) -> None:
        """Add images (B, L, L) at rotations R (B, 3, 3), RELION origins (B, 2) px, CTFs (B, L, L)."""
        B, L = images.shape[0], self.L
        F = fft2_centered(images.to(self.dtype))
        if origin_px is not None:
            F = F * shift_phase(L, origin_px.to(self.dtype)).conj()
        c = torch.ones(B, L, L, dtype=self.dtype) if ctf is None else ctf.to(self.dtype)
        F = (F * c).reshape(B, -1)[:, self._keep]
        c2 = (c * c).reshape(B, -1)[:, self._keep]
        pts = (self._plane @ R.to(self.dtype)) * self.pad + self.N // 2  # (B, M, 3) as (x, y, z) indices
        pts = pts.reshape(-1, 3)
        vals = (F.real.reshape(-1), F.imag.reshape(-1), c2.reshape(-1))
        i0 = torch.floor(pts).long()
        f = pts - i0
        N1 = self.N + 1
        base = (i0[:, 2] * N1 + i0[:, 1]) * N1 + i0[:, 0]
        wx, wy, wz = (torch.stack([1 - f[:, i], f[:, i]]) for i in range(3))
        for dx in (0, 1):
            for dy in (0, 1):
                wxy = wx[dx] * wy[dy]
                for dz in (0, 1):
                    idx, w = base + ((dz * N1 + dy) * N1 + dx), wxy * wz[dz]
                    for acc, v in zip(self._acc, vals):
                        acc.index_add_(0, idx, v * w)
        self.count += B

    def absorb(self, other: Backprojector) -> Backprojector:
        """Add ``other``'s images into this accumulator, in place (no third copy of the lattice)."""
        self._acc += other._acc
        self.count += other.count
        return self

    def merged(self, other: Backprojector) -> Backprojector:
        """A new accumulator holding both halves (for the full map)."""
        out = Backprojector(self.L, self.pad, self.dtype)
        out._acc, out.count = self._acc + other._acc, self.count + other.count
        return out

    def reconstruct(self, wiener: float = 0.01) -> torch.Tensor:
        """The real volume (L, L, L)."""
        N, L = self.N, self.L
        den = self.den.reshape(N, N, N)
        sampled = den > 0
        lam = wiener * den[sampled].mean() if sampled.any() else torch.tensor(1.0, dtype=self.dtype)
        num = torch.complex(self.num[0], self.num[1]).reshape(N, N, N)
        Vhat = num / (den + lam)
        v = ifft3_centered(Vhat).real
        k = freq_index(N, self.dtype) / N
        s = torch.sinc(k) ** 2
        v = v / (s[:, None, None] * s[None, :, None] * s[None, None, :])
        return _crop_or_pad_centered(v, L, 3)


def soft_sphere_mask(L: int, radius: float | None = None, width: float = 4.0,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A soft spherical mask (L, L, L) about the centre L // 2: 1 inside ``radius`` px (default
    0.4 L), a raised-cosine edge ``width`` px wide, 0 beyond."""
    from ..physics.lattice import radius_3d

    r0 = 0.4 * L if radius is None else radius
    r = radius_3d(L, dtype)
    edge = 0.5 * (1 + torch.cos(torch.pi * (r - r0).clamp(0, width) / width))
    return torch.where(r <= r0, torch.ones_like(r), edge)


def backproject_halves(batches, L: int, R: torch.Tensor, origin_px: torch.Tensor, half: np.ndarray,
                       ctf_correction: bool = True) -> list[Backprojector]:
    """Two backprojections of a stream of batches (objects with ``ids``, ``images``, ``ctf``, e.g.
    :meth:`ParticleDataset.batches <eqcryo.data.dataset.ParticleDataset.batches>`): particle i goes
    into half ``half[i]`` (0/1) at pose ``R[i]`` (3, 3) and RELION origin ``origin_px[i]`` (2,) px."""
    bps = [Backprojector(L), Backprojector(L)]
    for b in batches:
        imgs = b.images.cpu()
        ctf = b.ctf.cpu() if ctf_correction and b.ctf is not None else None
        for h in (0, 1):
            m = half[b.ids] == h
            if m.any():
                mt, sel = torch.from_numpy(m), b.ids[m]
                bps[h].add(imgs[mt], R[sel], origin_px[sel], None if ctf is None else ctf[mt])
    return bps
