"""Image formation: the slice operator, shifts, the real-space reference projector, volume ops.

Geometry (see :mod:`eqcryo.physics.lattice` and :mod:`eqcryo.physics.rotations`):

- ``P_R[V](x, y) = ∫ V(Rᵀ (x, y, z)ᵀ) dz`` with x = column, y = row, z = volume section,
  all relative to the centre index ``L // 2`` (RELION's particle centre).
- ``S_R[W](k) = W(Rᵀ k)`` for k on the central plane: Fourier coordinates ``lattice @ R``.
- A shift is RELION's *origin* ``o`` (pixels or Å): the particle is displaced by ``-o`` in the
  image, i.e. the image is multiplied in Fourier space by ``exp(+2πi k·o / L)``. RELION's own
  projections (``relion_project``) pin this sign in the tests.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .lattice import (
    Device,
    _crop_or_pad_centered,
    fft2_centered,
    fft3_centered,
    freq_index,
    grid_2d,
    ifft2_centered,
    ifft3_centered,
    plane_coords,
)

__all__ = [
    "shift_phase",
    "apply_shift_2d",
    "prepare_fourier_volume",
    "FourierVolume",
    "gridding_correction",
    "sample_trilinear_complex",
    "slice_fourier_volume",
    "half_dft_factors",
    "half_centered_dft",
    "slice_half_fourier_volume",
    "render_images",
    "shift_phase_at",
    "centered_dft_band",
    "project",
    "project_real_space",
    "rotate_volume",
    "flip_hand",
    "flip_hand_rotations",
    "shift_volume",
]


def shift_phase(L: int, origin_px: torch.Tensor) -> torch.Tensor:
    """Phase ramps (B, L, L) complex that apply RELION origins ``origin_px`` (B, 2) = (ox, oy) px."""
    kx, ky = grid_2d(L, origin_px.dtype if origin_px.is_floating_point() else torch.float64,
                     origin_px.device)
    return shift_phase_at(kx.reshape(-1), ky.reshape(-1), L, origin_px).reshape(-1, L, L)


def shift_phase_at(kx: torch.Tensor, ky: torch.Tensor, L: int, origin_px: torch.Tensor) -> torch.Tensor:
    """:func:`shift_phase` at chosen lattice points ``kx``, ``ky`` (M,) only: (B, M) complex."""
    arg = (kx[None] * origin_px[:, 0, None] + ky[None] * origin_px[:, 1, None]) * (2 * math.pi / L)
    return torch.polar(torch.ones_like(arg), arg)


def apply_shift_2d(images: torch.Tensor, origin_px: torch.Tensor) -> torch.Tensor:
    """Shift real images (B, L, L) by RELION origins (B, 2) px (content moves by ``-origin``)."""
    L = images.shape[-1]
    Fi = fft2_centered(images.to(torch.float64)) * shift_phase(L, origin_px.to(torch.float64))
    return ifft2_centered(Fi).real.to(images.dtype)


class FourierVolume:
    """A real volume's centred 3-D DFT, zero-padded in real space by ``pad`` for interpolation.

    Attributes: ``data`` complex (pL, pL, pL); ``L`` the volume box; ``pad`` the factor.
    Padding 2 keeps trilinear slice interpolation error at a few percent; 4 is closer to
    RELION (see tests and docs).
    """

    def __init__(self, data: torch.Tensor, L: int, pad: int):
        self.data, self.L, self.pad = data, L, pad

    def slice(self, R: torch.Tensor, L_out: int | None = None) -> torch.Tensor:
        """Central slices (B, L_out, L_out) complex at rotations R (B, 3, 3)."""
        L_out = self.L if L_out is None else L_out
        coords = plane_coords(L_out, R.dtype, R.device) @ R  # (B, M, 3), integer-frequency units
        return slice_fourier_volume(self.data, coords * self.pad).reshape(-1, L_out, L_out)


def gridding_correction(L: int, pad: int, dtype: torch.dtype = torch.float64, device: Device = None) -> torch.Tensor:
    """``1 / sinc²(r / (pad·L))`` on the (L, L, L) real-space grid (r in voxels from the centre).

    Trilinear interpolation in Fourier space multiplies the real-space volume by the
    Fourier transform of the triangle kernel, sinc²; dividing by it beforehand undoes that
    attenuation (RELION's ``griddingCorrect`` does the same).
    """
    k = freq_index(L, dtype, device)
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    r = torch.sqrt(x ** 2 + y ** 2 + z ** 2) / (pad * L)
    return 1.0 / torch.sinc(r) ** 2


def prepare_fourier_volume(volume: torch.Tensor, pad: int = 2, gridding: bool = True) -> FourierVolume:
    """Zero-pad a real volume (L, L, L) to pad·L about its centre and take the centred DFT.

    ``gridding`` applies :func:`gridding_correction` first (recommended for projection).
    """
    L = volume.shape[-1]
    if gridding:
        volume = volume * gridding_correction(L, pad, volume.dtype, volume.device)
    vp = _crop_or_pad_centered(volume, pad * L, 3) if pad != 1 else volume
    return FourierVolume(hermitian_lattice(fft3_centered(vp)), L, pad)


def hermitian_lattice(F: torch.Tensor) -> torch.Tensor:
    """A centred DFT (N, N, N) of a real volume with its unpaired Nyquist planes (index 0 of each
    axis, |K| = N/2, whose partners +N/2 are off the lattice) set to zero.

    Trilinear slicing near |K| → N/2 reads index 0 on the negative side and zeros (outside the
    array) on the positive side; with those planes zeroed both sides read zeros, so every slice is
    exactly Hermitian, S(-k) = conj S(k), as the spectrum of a real image must be.
    """
    keep = torch.ones(F.shape[-1], dtype=F.real.dtype, device=F.device)
    keep[0] = 0
    return F * keep[:, None, None] * keep[None, :, None] * keep[None, None, :]


class _TrilinearComplex(torch.autograd.Function):
    """Trilinear reads of a complex lattice (D, H, W) at index points p (P, 3) = (x → W, y → H,
    z → D), read at ``sign·p + origin`` and conjugated where sign = -1 (the Hermitian half's k → -k).
    Zeros outside the array (``grid_sample``'s ``padding_mode="zeros"``, ``align_corners=True``).

    Why not ``grid_sample``: its 3-D CPU kernels run one thread per volume in the batch, and the
    slice operator reads one volume, so they ran single-threaded (~20 ms of a ~100 ms 64 px
    training step on 2 threads). Here every step is a vectorised tensor op: one gather of the
    8 corners, separable weights, and one ``index_add_`` for the volume's gradient.
    """

    @staticmethod
    def _axis(q: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-axis weights (2, P) of the lower/upper corner (0 where that corner is outside
        0 … n-1), their derivatives in q, and the clamped corner indices (2, P)."""
        q0 = q.floor()
        f = q - q0
        i0 = q0.long()
        in0 = ((i0 >= 0) & (i0 < n)).to(q.dtype)
        in1 = ((i0 >= -1) & (i0 < n - 1)).to(q.dtype)
        return (torch.stack([(1 - f) * in0, f * in1]), torch.stack([-in0, in1]),
                torch.stack([i0.clamp(0, n - 1), (i0 + 1).clamp(0, n - 1)]))

    @staticmethod
    def forward(ctx: Any, vol: torch.Tensor, p: torch.Tensor, sign: torch.Tensor,
                origin: torch.Tensor) -> torch.Tensor:
        D, H, W = vol.shape
        q = p * sign[:, None] + origin
        gx, dgx, ix = _TrilinearComplex._axis(q[:, 0], W)
        gy, dgy, iy = _TrilinearComplex._axis(q[:, 1], H)
        gz, dgz, iz = _TrilinearComplex._axis(q[:, 2], D)
        idx = (iz * (W * H))[:, None, None] + (iy * W)[None, :, None] + ix[None, None, :]  # (z, y, x corner, P)
        V = torch.view_as_real(vol.reshape(-1)[idx])  # (2, 2, 2, P, 2): corners first, contiguous per corner
        A = V[:, :, 0] * gx[0, :, None] + V[:, :, 1] * gx[1, :, None]  # along x: (2, 2, P, 2)
        B = A[:, 0] * gy[0, :, None] + A[:, 1] * gy[1, :, None]  # along y: (2, P, 2)
        out = B[0] * gz[0, :, None] + B[1] * gz[1, :, None]  # along z: (P, 2) = (re, im)
        out = torch.stack([out[:, 0], out[:, 1] * sign], -1)
        ctx.save_for_backward(idx, sign, gx, gy, gz, dgx, dgy, dgz, V, A, B)
        ctx.vol_shape = vol.shape
        return torch.view_as_complex(out)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        idx, sign, gx, gy, gz, dgx, dgy, dgz, V, A, B = ctx.saved_tensors
        go = torch.view_as_real(grad_out.contiguous())
        go = torch.stack([go[:, 0], go[:, 1] * sign], -1)  # the gradient of the unconjugated read
        g_vol = g_p = None
        if ctx.needs_input_grad[0]:
            w = gz[:, None, None] * gy[None, :, None] * gx[None, None, :]  # (2, 2, 2, P)
            g_vol = torch.zeros(ctx.vol_shape, dtype=grad_out.dtype, device=grad_out.device)
            g_vol.reshape(-1).index_add_(0, idx.reshape(-1), torch.view_as_complex(w[..., None] * go).reshape(-1))
        if ctx.needs_input_grad[1]:
            # d out / d q_a: the same separable sums with axis a's weights replaced by their derivatives
            dz = B[0] * dgz[0, :, None] + B[1] * dgz[1, :, None]
            Ay = A[:, 0] * dgy[0, :, None] + A[:, 1] * dgy[1, :, None]
            dy = Ay[0] * gz[0, :, None] + Ay[1] * gz[1, :, None]
            Vx = V[:, :, 0] * dgx[0, :, None] + V[:, :, 1] * dgx[1, :, None]
            Bx = Vx[:, 0] * gy[0, :, None] + Vx[:, 1] * gy[1, :, None]
            dx = Bx[0] * gz[0, :, None] + Bx[1] * gz[1, :, None]
            # real coordinates, complex output: dL/dq = Re(conj(grad) · d out/dq)
            g_q = torch.stack([(go * d).sum(-1) for d in (dx, dy, dz)], -1)
            g_p = g_q * sign[:, None]
        return g_vol, g_p, None, None


def _grid_sample_complex(vol: torch.Tensor, coords: torch.Tensor, origin: torch.Tensor,
                         conj: torch.Tensor | None) -> torch.Tensor:
    """:func:`sample_trilinear_complex` through ``grid_sample`` (``vol`` already complex)."""
    D, H, W = vol.shape
    c = coords if conj is None else torch.where(conj[..., None], -coords, coords)
    size = torch.tensor([W, H, D], dtype=coords.dtype, device=coords.device)
    grid = (c + origin) * (2.0 / (size - 1)) - 1.0  # align_corners=True: index 0 -> -1, n-1 -> +1
    vr = torch.view_as_real(vol).permute(3, 0, 1, 2)[None]  # (1, 2, D, H, W), a view: no copy
    out = F.grid_sample(vr, grid.reshape(1, -1, 1, 1, 3), mode="bilinear", padding_mode="zeros",
                        align_corners=True)[0, :, :, 0, 0].reshape(2, *coords.shape[:-1])
    return torch.complex(out[0], out[1] if conj is None else torch.where(conj, -out[1], out[1]))


def sample_trilinear_complex(vol: torch.Tensor, coords: torch.Tensor, origin: tuple[float, float, float],
                             conj: torch.Tensor | None = None) -> torch.Tensor:
    """Trilinear reads of a complex lattice ``vol`` (D, H, W) at ``coords`` (..., 3) = (x, y, z)
    relative to ``origin`` (index units, zeros outside), conjugated and read at -coords where
    ``conj`` (...) is True. Differentiable in the volume and in the coordinates.

    Two implementations, equal to rounding (a test): on CPU when a gradient is needed (training
    steps) :class:`_TrilinearComplex`; otherwise ``grid_sample``."""
    real_dtype = coords.dtype
    vol = vol.to(torch.complex128 if real_dtype == torch.float64 else torch.complex64)
    org = torch.tensor(origin, dtype=real_dtype, device=coords.device)
    needs_grad = torch.is_grad_enabled() and (vol.requires_grad or coords.requires_grad)
    if vol.device.type == "cpu" and needs_grad:
        flat = coords.reshape(-1, 3)
        sign = (torch.ones(len(flat), dtype=real_dtype, device=coords.device) if conj is None
                else 1.0 - 2.0 * conj.reshape(-1).to(real_dtype))
        out: torch.Tensor = _TrilinearComplex.apply(vol, flat, sign, org)  # type: ignore[no-untyped-call]
        return out.reshape(coords.shape[:-1])
    # CUDA: grid_sample's kernel is parallel over points there (and is what the GPU check ran).
    # Reads without gradients (projection matching's search, rendering): its single-threaded CPU
    # forward is still faster than the sampler's forward, which keeps what its backward needs
    # (measured: a projection-matching iteration 0.70x as fast with the sampler).
    return _grid_sample_complex(vol, coords, org, conj)


def slice_fourier_volume(vol_ft: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear evaluation of a centred complex volume (N, N, N) at points ``coords`` (B, M, 3).

    ``coords`` are (kx, ky, kz) in index units relative to the centre N // 2; points outside
    the array read as 0. Differentiable in the volume and in the coordinates.
    """
    N = vol_ft.shape[-1]
    return sample_trilinear_complex(vol_ft, coords, (N // 2, N // 2, N // 2))


def half_dft_factors(L: int, pad: int, dtype: torch.dtype = torch.float64,
                     device: Device = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The two factors of :func:`half_centered_dft` for a box L and padding ``pad`` (N = pad·L
    even): ``pre`` (L, L, L) real, the sign flips (-1)^(z+y) that put the z and y axes of the
    plain FFT in centred order (the shift theorem), and ``post`` (N, N, N/2 + 1) complex, the
    phase of the volume's centred placement, e^{2πi k·(L//2)/N} summed over the three axes, times
    zeros on the unpaired Nyquist planes (:func:`hermitian_lattice`'s)."""
    N = pad * L
    if N % 2:
        raise ValueError(f"the half-volume DFT needs an even padded size, got {N}")
    i = torch.arange(L, device=device)
    s = (1 - 2 * (i % 2)).to(dtype)
    pre = s[:, None, None] * s[None, :, None] * torch.ones(L, device=device, dtype=dtype)
    k = torch.arange(N, device=device, dtype=torch.float64) - N // 2  # centred z and y frequencies
    kx = torch.arange(N // 2 + 1, device=device, dtype=torch.float64)
    ph = 2 * math.pi * (L // 2) / N
    arg = ph * (k[:, None, None] + k[None, :, None] + kx[None, None, :])
    keep = torch.ones(N, N, N // 2 + 1, dtype=torch.float64, device=device)
    keep[0], keep[:, 0], keep[:, :, N // 2] = 0, 0, 0
    ctype = torch.complex128 if dtype == torch.float64 else torch.complex64
    return pre, torch.polar(keep, arg).to(ctype)


def half_centered_dft(volume: torch.Tensor, pad: int, factors: tuple[torch.Tensor, torch.Tensor] | None = None
                      ) -> torch.Tensor:
    """The kx ≥ 0 half (N, N, N/2 + 1) of ``hermitian_lattice(fft3_centered(pad to N))``, N = pad·L.

    Axes (kz, ky, kx): kz and ky centred at index N/2 as in the full array, kx = index (0 … N/2).
    A real volume's spectrum is Hermitian, so the other half is redundant
    (:func:`slice_half_fourier_volume` reads it as conj V̂(-k)). Computed as a pruned real FFT:
    zero padding is the FFTs' ``n`` (the padded rows are never transformed), the x axis by
    ``rfft``; ~1/3 of the operations of the full complex FFT of the padded cube.
    """
    L = volume.shape[-1]
    N = pad * L
    pre, post = half_dft_factors(L, pad, volume.dtype, volume.device) if factors is None else factors
    X = torch.fft.rfft(volume * pre, n=N, dim=-1)
    X = torch.fft.fft(X, n=N, dim=-2)
    return torch.fft.fft(X, n=N, dim=-3) * post


def slice_half_fourier_volume(half_ft: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """:func:`slice_fourier_volume` of a Hermitian volume given by its kx ≥ 0 half (N, N, N/2 + 1)
    (:func:`half_centered_dft`): a point with kx < 0 is read at -k and conjugated. Equal to the
    full volume's trilinear slice (the lattice is symmetric about 0 and the full array exactly
    Hermitian, so interpolation commutes with k → -k). ``coords`` (B, M, 3) as there."""
    N = half_ft.shape[0]
    return sample_trilinear_complex(half_ft, coords, (0, N // 2, N // 2), conj=coords[..., 0] < 0)


def centered_dft_band(volume: torch.Tensor, pad: int, K: int) -> torch.Tensor:
    """The centred 3-D DFT of ``volume`` (L, L, L) zero-padded to ``pad·L``, at indices -K..K only.

    Equal to the central (2K+1)³ block of ``fft3_centered(pad to pad·L)`` (centre at index K),
    computed as three small matrix products instead of a full FFT: when only a low-frequency
    band is needed (frequency marching) this costs O(L³·K) instead of O((pad·L)³ log).
    """
    L = volume.shape[-1]
    N = pad * L
    k = torch.arange(-K, K + 1, device=volume.device, dtype=torch.float64)
    m = torch.arange(L, device=volume.device, dtype=torch.float64) - L // 2  # padded index n - N//2
    ctype = torch.complex64 if volume.dtype == torch.float32 else torch.complex128
    A = torch.polar(torch.ones(2 * K + 1, L, dtype=torch.float64, device=volume.device),
                    -2 * math.pi * k[:, None] * m[None] / N).to(ctype)  # (2K+1, L)
    v = volume.to(ctype)
    v = torch.einsum("km,abm->abk", A, v)
    v = torch.einsum("km,amc->akc", A, v)
    return torch.einsum("km,mbc->kbc", A, v)


def render_images(slices: torch.Tensor, ctf: torch.Tensor | None = None,
                  origin_px: torch.Tensor | None = None) -> torch.Tensor:
    """Real images (B, L, L) from Fourier slices (B, L, L): ``F⁻¹[ĥ · T̂_o · S]``.

    This is the one image model shared by the simulator, backprojection's forward check and
    the decoders. ``ctf`` (B, L, L) real; ``origin_px`` (B, 2) RELION origins in pixels.
    """
    F_img = slices
    if origin_px is not None:
        F_img = F_img * shift_phase(slices.shape[-1], origin_px.to(slices.real.dtype))
    if ctf is not None:
        F_img = F_img * ctf
    return ifft2_centered(F_img).real


def project(volume: torch.Tensor, R: torch.Tensor, origin_px: torch.Tensor | None = None,
            ctf: torch.Tensor | None = None, pad: int = 2,
            fourier_volume: FourierVolume | None = None) -> torch.Tensor:
    """Projections (B, L, L) of a real volume (L, L, L) at rotations R (B, 3, 3).

    Computed by the Fourier slice theorem (trilinear interpolation on a ``pad``-times
    zero-padded DFT), then shifted by RELION origins (B, 2) px and multiplied by the CTF.
    Pass a precomputed ``fourier_volume`` to avoid redoing the 3-D FFT for each batch.
    """
    fv = fourier_volume if fourier_volume is not None else prepare_fourier_volume(volume.to(R.dtype), pad)
    return render_images(fv.slice(R), ctf, origin_px)


def _volume_grid(L: int, dtype: torch.dtype, device: Device) -> torch.Tensor:
    """Voxel coordinates (L, L, L, 3) as (x, y, z) relative to the centre L // 2."""
    k = freq_index(L, dtype, device)
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    return torch.stack([x, y, z], -1)


def _sample_volume(volume: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of a real volume (L, L, L) at (x, y, z) points (..., 3) about L // 2."""
    L = volume.shape[-1]
    grid = (pts + L // 2) * (2.0 / (L - 1)) - 1.0
    shp = pts.shape[:-1]
    out = F.grid_sample(volume[None, None].to(pts.dtype), grid.reshape(1, -1, 1, 1, 3), mode="bilinear",
                        padding_mode="zeros", align_corners=True)
    return out.reshape(shp)


def project_real_space(volume: torch.Tensor, R: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """Reference projector (B, L, L): rotate the volume in real space and sum along z.

    ``P_R[V](x, y) = Σ_z V(Rᵀ (x, y, z))`` with trilinear interpolation. Independent of the
    Fourier code path; slow; used as a test oracle for the slice operator.
    """
    L = volume.shape[-1]
    g = _volume_grid(L, R.dtype, R.device)  # (z, y, x, 3)
    outs = []
    for i in range(0, R.shape[0], chunk):
        Rb = R[i:i + chunk]
        pts = torch.einsum("zyxa,bac->bzyxc", g, Rb)  # row vector @ R == Rᵀ p
        outs.append(_sample_volume(volume, pts).sum(1))
    return torch.cat(outs, 0)


def rotate_volume(volume: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """``V_R(x) = V(Rᵀ x)`` for a volume (L, L, L) and one rotation R (3, 3), trilinear.

    Projections then satisfy ``P_Q[V_R] = P_{Q R}[V]``.
    """
    L = volume.shape[-1]
    g = _volume_grid(L, R.dtype, R.device)
    return _sample_volume(volume, g @ R)


def flip_hand(volume: torch.Tensor) -> torch.Tensor:
    """Mirror a volume (L, L, L) through the z = 0 plane about the centre index L // 2."""
    out = torch.flip(volume, dims=(-3,))
    return torch.roll(out, 1, dims=-3) if volume.shape[-1] % 2 == 0 else out


def flip_hand_rotations(R: torch.Tensor) -> torch.Tensor:
    """The poses (..., 3, 3) of the same images seen in the :func:`flip_hand` map: ``D R D``,
    ``D = diag(1, 1, -1)``."""
    D = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=R.dtype, device=R.device))
    return D @ R @ D


def shift_volume(volume: torch.Tensor, shift_voxels: torch.Tensor) -> torch.Tensor:
    """Translate a volume's content by ``shift_voxels`` = (dx, dy, dz) voxels (Fourier phase ramp)."""
    L = volume.shape[-1]
    k = freq_index(L, torch.float64, volume.device)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    s = torch.as_tensor(shift_voxels, dtype=torch.float64)
    arg = -(kx * s[0] + ky * s[1] + kz * s[2]) * (2 * math.pi / L)
    Fv = fft3_centered(volume.to(torch.float64)) * torch.polar(torch.ones_like(arg), arg)
    return ifft3_centered(Fv).real.to(volume.dtype)
