"""The Fourier lattice and centred FFTs: the one place that defines eqcryo's Fourier conventions.

Conventions
-----------
- Arrays are indexed ``[..., y, x]`` for images and ``[z, y, x]`` for volumes (as ``mrcfile``
  returns them): row = y, column = x.
- "Centred" arrays hold the origin at index ``L // 2`` along every axis, in real space (the
  particle centre, as in RELION) and in Fourier space (DC after ``fftshift``).
- Integer frequencies along an axis are ``fftshift(fftfreq(L)) * L``: ``-L/2 .. L/2-1`` for even
  L (the Nyquist sample sits at index 0, with no ``+L/2`` partner), ``-(L-1)/2 .. (L-1)/2``
  for odd L. Physical frequency = index / (L * apix) in 1/Å.
- The forward DFT is unnormalised and the inverse divides by the number of samples (numpy's
  "backward" norm), so a projection computed through a central slice is the sum of voxels
  along z (a line integral in voxel units).
"""

from __future__ import annotations

import torch

#: where a tensor is made: a torch.device, "cpu", "cuda:0", or None (the default device)
Device = torch.device | str | None

__all__ = [
    "freq_index",
    "freq_angstrom",
    "grid_2d",
    "plane_coords",
    "radius_2d",
    "radius_3d",
    "nyquist_mask_2d",
    "disc_mask_2d",
    "fft2_centered",
    "ifft2_centered",
    "fft3_centered",
    "ifft3_centered",
    "fourier_crop_2d",
    "fourier_crop_3d",
    "fourier_resize_2d",
    "fourier_resize_3d",
]


def freq_index(L: int, dtype: torch.dtype = torch.float64, device: Device = None) -> torch.Tensor:
    """Integer frequencies of a centred axis of length L, shape (L,); DC at index L // 2."""
    return torch.arange(-(L // 2), L - L // 2, dtype=dtype, device=device)


def freq_angstrom(L: int, apix: float, dtype: torch.dtype = torch.float64, device: Device = None) -> torch.Tensor:
    """Frequencies in 1/Å of a centred axis of length L with pixel size ``apix`` Å."""
    return freq_index(L, dtype, device) / (L * apix)


def grid_2d(L: int, dtype: torch.dtype = torch.float64, device: Device = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred frequency grids ``(kx, ky)``, each (L, L), in integer units; ``kx`` varies along columns."""
    k = freq_index(L, dtype, device)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    return kx, ky


def plane_coords(L: int, dtype: torch.dtype = torch.float64, device: Device = None) -> torch.Tensor:
    """Rows ``(kx, ky, 0)`` of the central plane, shape (L*L, 3), in integer frequency units."""
    kx, ky = grid_2d(L, dtype, device)
    return torch.stack([kx.reshape(-1), ky.reshape(-1), torch.zeros(L * L, dtype=dtype, device=device)], -1)


def radius_2d(L: int, dtype: torch.dtype = torch.float64, device: Device = None) -> torch.Tensor:
    """|k| on the centred 2-D lattice, (L, L), integer frequency units."""
    kx, ky = grid_2d(L, dtype, device)
    return torch.sqrt(kx ** 2 + ky ** 2)


def radius_3d(L: int, dtype: torch.dtype = torch.float64, device: Device = None) -> torch.Tensor:
    """|k| on the centred 3-D lattice, (L, L, L), integer frequency units."""
    k = freq_index(L, dtype, device)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    return torch.sqrt(kx ** 2 + ky ** 2 + kz ** 2)


def nyquist_mask_2d(L: int, dtype: torch.dtype = torch.float64, device: Device = None) -> torch.Tensor:
    """1 everywhere except the unpaired Nyquist row and column of an even L (index 0), (L, L).

    Zeroing them makes the set of kept frequencies symmetric under the 8 lattice symmetries
    (D4), which is needed for the image model to be *exactly* D4-equivariant.
    """
    m = torch.ones(L, L, dtype=dtype, device=device)
    if L % 2 == 0:
        m[0, :] = 0
        m[:, 0] = 0
    return m


def disc_mask_2d(L: int, dtype: torch.dtype = torch.float64, device: Device = None) -> torch.Tensor:
    """1 where |k| < L/2, else 0, (L, L): D4-symmetric, excludes the unpaired Nyquist samples and
    the corners a 3-D map on the L³ lattice cannot represent for every rotation."""
    return (radius_2d(L, dtype, device) < L / 2).to(dtype)


def fft2_centered(x: torch.Tensor) -> torch.Tensor:
    """Centred 2-D DFT over the last two axes (origin and DC at L // 2)."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1))), dim=(-2, -1))


def ifft2_centered(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2_centered` (complex output)."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(x, dim=(-2, -1))), dim=(-2, -1))


def fft3_centered(x: torch.Tensor) -> torch.Tensor:
    """Centred 3-D DFT over the last three axes."""
    d = (-3, -2, -1)
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=d), dim=d), dim=d)


def ifft3_centered(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft3_centered` (complex output)."""
    d = (-3, -2, -1)
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(x, dim=d), dim=d), dim=d)


def _crop_or_pad_centered(x: torch.Tensor, new_L: int, ndim: int) -> torch.Tensor:
    """Crop or zero-pad the last ``ndim`` axes of a centred array about index L // 2."""
    L = x.shape[-1]
    out = torch.zeros(x.shape[:-ndim] + (new_L,) * ndim, dtype=x.dtype, device=x.device)
    n = min(L, new_L)
    a, b = L // 2 - n // 2, new_L // 2 - n // 2
    src = (Ellipsis,) + (slice(a, a + n),) * ndim
    dst = (Ellipsis,) + (slice(b, b + n),) * ndim
    out[dst] = x[src]
    return out


def fourier_resize_2d(img: torch.Tensor, new_L: int) -> torch.Tensor:
    """Resample images (..., L, L) to (..., new_L, new_L) by Fourier crop (down) or pad (up).

    Pixel values keep their scale (a constant image stays the same constant); the physical
    box stays the same, so the pixel size becomes ``apix * L / new_L``.
    """
    L = img.shape[-1]
    if new_L == L:
        return img.clone()
    F = _crop_or_pad_centered(fft2_centered(img.to(torch.float64)), new_L, 2)
    return (ifft2_centered(F).real * (new_L / L) ** 2).to(img.dtype)


def fourier_resize_3d(vol: torch.Tensor, new_L: int) -> torch.Tensor:
    """Resample volumes (..., L, L, L) to new_L³ by Fourier crop/pad; voxel values keep their scale."""
    L = vol.shape[-1]
    if new_L == L:
        return vol.clone()
    F = _crop_or_pad_centered(fft3_centered(vol.to(torch.float64)), new_L, 3)
    return (ifft3_centered(F).real * (new_L / L) ** 3).to(vol.dtype)


def fourier_crop_2d(img: torch.Tensor, new_L: int) -> torch.Tensor:
    """Down-sample images by Fourier cropping (see :func:`fourier_resize_2d`)."""
    if new_L > img.shape[-1]:
        raise ValueError(f"fourier_crop_2d: new size {new_L} is larger than {img.shape[-1]}")
    return fourier_resize_2d(img, new_L)


def fourier_crop_3d(vol: torch.Tensor, new_L: int) -> torch.Tensor:
    """Down-sample volumes by Fourier cropping (see :func:`fourier_resize_3d`)."""
    if new_L > vol.shape[-1]:
        raise ValueError(f"fourier_crop_3d: new size {new_L} is larger than {vol.shape[-1]}")
    return fourier_resize_3d(vol, new_L)
