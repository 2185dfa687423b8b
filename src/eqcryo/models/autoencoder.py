"""The amortized autoencoder: encoder -> pose -> decoder slice × CTF × shift -> image.

``Γ(I) = render(E(I))`` uses :func:`eqcryo.physics.projection.render_images`, the simulator's
own image model, keeping the frequencies |k| < L/2 (a disc: D4-symmetric, without the unpaired
even-L Nyquist samples, and only frequencies the exported L³ map holds for every rotation):
then ``Γ(L_g I) = L_g Γ(I)`` exactly for g in the encoder's group (for D4-invariant CTFs, e.g.
without astigmatism; an astigmatic CTF turns with the image, see :func:`transform_ctf`).

Losses (per image, mean squared error over pixels):

- ``l2``: ``‖Γ(Y) - Y‖²``;
- ``symmetric`` (cryoAI, L_π) / ``mirror`` (L_f): the batch and its transformed copy go through
  the model as one 2B batch; each image keeps the better branch, and the returned pose is
  mapped back to the original image (``R = φ_r(g)⁻¹ R'``, ``d = φ_t(g)⁻¹ d'``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..physics.group import displacement_to_origin, image_action, inverse, phi_r, phi_t
from ..physics.lattice import disc_mask_2d, fft2_centered, plane_coords, radius_2d
from ..physics.projection import render_images, shift_phase_at
from .decoders import Decoder
from .encoders import PoseEncoder

__all__ = ["CryoModel", "ModelOutput", "transform_ctf", "LOSSES"]

#: loss name -> the D4 element of the second branch (None: plain L2)
LOSSES = {"l2": None, "symmetric": 2, "mirror": 4}


def transform_ctf(ctf: torch.Tensor, e: int) -> torch.Tensor:
    """CTF images (B, L, L) (centred Fourier lattice) of the images transformed by element e.

    An image rotated/flipped by g has its spectrum rotated/flipped the same way about DC; for
    the π rotation a CTF is unchanged (it is even in k).
    """
    if e == 0 or e == 2:
        return ctf
    L = ctf.shape[-1]
    out = image_action(ctf, e)  # acts about (L-1)/2; DC sits at L//2 ...
    if L % 2 == 0:
        # ... so re-centre: the transformed DC lands at L-1-L//2 = L//2 - 1 along each axis the
        # element reverses; rolling by +1 there puts it back at L//2.
        probe = torch.zeros(L, L, dtype=ctf.dtype, device=ctf.device)
        probe[L // 2, L // 2] = 1
        r, c = divmod(int(image_action(probe, e).argmax()), L)
        out = torch.roll(out, (L // 2 - r, L // 2 - c), (-2, -1))
    return out


@dataclass
class ModelOutput:
    """``pred`` (B, L, L) the reconstructed images of the winning branch (None in band mode); ``loss`` (B,) per image;
    ``R`` (B, 3, 3) and ``d`` (B, 2) px the poses for the *original* images; ``branch`` (B,) 0/1;
    ``hypothesis`` (B,) the index of the winning pose hypothesis (0 for single-hypothesis encoders)."""

    pred: torch.Tensor | None
    loss: torch.Tensor
    R: torch.Tensor
    d: torch.Tensor
    branch: torch.Tensor
    hypothesis: torch.Tensor | None = None


class CryoModel(nn.Module):
    """Encoder + decoder + loss. ``model.encoder(images) -> (R (B,3,3), d (B,2) px)``.

    ``forward(images, ctf, band_radius)``: the loss is computed in Fourier space on the lattice
    points of one Hermitian half of the disc |k| < r (r = ``band_radius`` shells for frequency
    marching, chosen per step by the caller's schedule; None = L/2) — by Parseval the MSE of the
    band-limited images — and the decoder is read at those points only (for the voxel decoder
    below Nyquist only the band of its padded DFT is computed). No images are rendered
    (``ModelOutput.pred`` is None) unless ``return_images``.
    """

    mask: torch.Tensor
    _radius: torch.Tensor
    _plane: torch.Tensor

    def __init__(self, encoder: PoseEncoder, decoder: Decoder, loss: str = "l2", name: str = ""):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; expected one of {list(LOSSES)}")
        self.encoder, self.decoder, self.loss_name, self.name = encoder, decoder, loss, name
        self.box: int = decoder.box
        self.register_buffer("mask", disc_mask_2d(self.box, torch.float32))
        # |k| and the plane points (kx, ky, 0) of the flattened lattice, for band mode; not
        # saved in checkpoints (derived from the box)
        self.register_buffer("_radius", radius_2d(self.box, torch.float32).flatten(), persistent=False)
        self.register_buffer("_plane", plane_coords(self.box, torch.float32), persistent=False)
        self._band_cache: tuple[tuple[float, torch.device], torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def image_loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image mean squared error over the full box (the last two dimensions)."""
        return ((pred - y) ** 2).mean(dim=(-2, -1))

    def render(self, R: torch.Tensor, d: torch.Tensor, ctf: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, L, L) of the decoder's map at rotations R, displacements d (px), CTFs (B, L, L)."""
        slices = self.decoder.slice(R) * self.mask.to(R.dtype)
        origin = displacement_to_origin(d, self.box)
        return render_images(slices, ctf, origin)

    def _band(self, radius: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat lattice indices (M,), plane points (M, 3) and weights (M,) of one Hermitian half of
        the disc |k| < radius (cached).

        Images are real, so their spectra, the CTF's and the map's slices are Hermitian: the
        error at -k is the conjugate of the error at k. The loss therefore visits ky > 0 (and
        ky = 0, kx ≥ 0) with weight 2 — DC, its own partner, with weight 1 — and so reads the
        decoder at ~1/2.5 of the L² lattice points that rendering whole images would.
        """
        r = float(radius)
        if self._band_cache is None or self._band_cache[0] != (r, self._radius.device):
            kx, ky = self._plane[:, 0], self._plane[:, 1]
            half = (ky > 0) | ((ky == 0) & (kx >= 0))
            idx = ((self._radius < r) & half).nonzero()[:, 0]
            w = torch.where((kx[idx] == 0) & (ky[idx] == 0), 1.0, 2.0).to(self._plane.dtype)
            self._band_cache = ((r, self._radius.device), idx, self._plane[idx], w)
        return self._band_cache[1], self._band_cache[2], self._band_cache[3]

    def band_loss(self, y: torch.Tensor, R: torch.Tensor, d: torch.Tensor,
                  ctf: torch.Tensor | None, band_radius: float) -> torch.Tensor:
        """Per-image loss on |k| < band_radius: ``Σ_band |Ŝ·T̂·ĥ - Ŷ|² / L⁴`` (Parseval: the MSE of
        the band-limited images), summed over one Hermitian half with weights. R (B, 3, 3) gives
        (B,); R (B, K, 3, 3), K pose hypotheses per image sharing the shift d, gives (B, K)."""
        L = self.box
        idx, pts, w = self._band(band_radius)
        pts = pts.to(R.dtype)
        S = self.decoder.slice_at(R.reshape(-1, 3, 3), pts, band_radius).reshape(*R.shape[:-2], -1)
        ph = shift_phase_at(pts[:, 0], pts[:, 1], L, displacement_to_origin(d, L))
        if ctf is not None:
            ph = ph * ctf.flatten(1)[:, idx]
        Y = fft2_centered(y).flatten(1)[:, idx]
        if R.dim() == 4:
            ph, Y = ph[:, None], Y[:, None]
        E = S * ph - Y
        return ((E.real ** 2 + E.imag ** 2) * w.to(E.real.dtype)).sum(-1) / L ** 4

    @property
    def n_hypotheses(self) -> int:
        return self.encoder.n_hypotheses

    def _branch(self, y: torch.Tensor, ctf: torch.Tensor | None, band_radius: float | None,
                images: bool) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pred, loss (B,), R (B, 3, 3), d (B, 2), winning hypothesis (B,)) of one branch: every
        image is scored at each of its K pose hypotheses (K = 1: the encoder's one pose) and keeps
        the best — winner-take-all, so an image trains only its winning hypothesis."""
        K, B = self.n_hypotheses, len(y)
        if K == 1:
            R, d = self.encoder(y)
            R = R[:, None]
        else:
            R, d = self.encoder.pose_hypotheses(y)  # (B, K, 3, 3)
        pred = None
        if not images:
            r = self.box / 2 if band_radius is None else min(band_radius, self.box / 2)
            loss = self.band_loss(y, R, d, ctf, r)  # (B, K)
        else:
            pred = self.render(R.reshape(-1, 3, 3), d.repeat_interleave(K, 0),
                               None if ctf is None else ctf.repeat_interleave(K, 0)).reshape(B, K, *y.shape[1:])
            loss = self.image_loss(pred, y[:, None])
        loss, j = loss.min(1)
        idx = torch.arange(B, device=y.device)
        return None if pred is None else pred[idx, j], loss, R[idx, j], d, j

    def forward(self, images: torch.Tensor, ctf: torch.Tensor | None = None,
                band_radius: float | None = None, return_images: bool = False, poses_only: bool = False) -> ModelOutput:
        """images (B, L, L), CTF images (B, L, L) or None, loss band (shells; None = the full disc
        |k| < L/2). By default the loss is computed in Fourier space on one Hermitian half of the
        band (no images rendered, ``pred`` None). ``return_images``: render whole images and use
        the pixel MSE over the box (the same gradients; the loss is larger by the data's energy
        outside the disc, which no map can explain). ``poses_only``: the encoder's poses alone (loss
        0, no decoder read; for distillation steps, whose loss is the distance to target poses);
        with K > 1 hypotheses R is (B, K, 3, 3) — no map is read, so no hypothesis is chosen."""
        e = LOSSES[self.loss_name]
        B = images.shape[0]
        if poses_only:
            R, d = self.encoder(images) if self.n_hypotheses == 1 else self.encoder.pose_hypotheses(images)
            z = torch.zeros(B, dtype=torch.long, device=images.device)
            return ModelOutput(None, images.new_zeros(B), R, d, z, z)
        if e is None:
            pred, loss, R, d, hyp = self._branch(images, ctf, band_radius, return_images)
            return ModelOutput(pred, loss, R, d, torch.zeros(B, dtype=torch.long, device=images.device), hyp)
        y2 = torch.cat([images, image_action(images, e)])
        c2 = None if ctf is None else torch.cat([ctf, transform_ctf(ctf, e)])
        pred2, l2, R2, d2, hyp2 = self._branch(y2, c2, band_radius, return_images)
        loss, branch = torch.stack([l2[:B], l2[B:]]).min(0)
        pr, pt = phi_r(e, R2.dtype).to(R2.device), phi_t(e, d2.dtype).to(d2.device)
        R = torch.where(branch[:, None, None] == 1, pr.T @ R2[B:], R2[:B])
        d = torch.where(branch[:, None] == 1, d2[B:] @ pt, d2[:B])  # row-vector form of φ_t⁻¹ d
        pred = None if pred2 is None else \
            torch.where(branch[:, None, None] == 1, image_action(pred2[B:], inverse(e)), pred2[:B])
        return ModelOutput(pred, loss, R, d, branch, torch.where(branch == 1, hyp2[B:], hyp2[:B]))
