"""The pixel grid's symmetry group D4 (and its subgroup C4): image actions and pose actions.

Elements are indexed ``e = 4 c + k`` (c ∈ {0, 1}, k ∈ {0..3}) and act on images (..., L, L) as

    L_e(I) = flip_rows^c( rot90^k(I) )      (torch.rot90(I, k, dims=(-2, -1)), torch.flip(I, (-2,)))

i.e. exactly about the array centre ``(L-1)/2`` (no interpolation). In (x, y) = (column, row)
coordinates about that centre, ``[L_g I](p) = I(g⁻¹ p)`` with the 2×2 matrix

    g = F^c · Q^k,   Q = [[0, 1], [-1, 0]]  (rot90),   F = diag(1, -1)  (row flip).

Pose actions, derived from our projector ``P_R[V](p) = ∫ V(Rᵀ(p, z)) dz`` (and tested):

    φ_t(g) = g                                  (acts on the particle displacement d, below)
    φ_r(g) = diag(F, -1)^c · diag(Q, 1)^k       (a rotation: the reflection is paired with z -> -z,
                                                 which leaves the z-integral unchanged)

so ``project(V, φ_r(g) R, d' = φ_t(g) d) = L_g[project(V, R, d)]``. The paper prints
``φ_r = diag(-1, 1, -1)^c Rot_z(θ)``: the same law with the reflection across the other image
axis and the opposite sense of rotation, because its image x-axis is our row axis.

**Particle centre.** RELION (and our projector) put the particle centre at index ``L // 2``,
while rot90/flip act about ``(L-1)/2``: half a pixel apart for even L. The equivariant
quantity is therefore the displacement ``d`` of the particle from the *grid* centre (L-1)/2,
``d = c0 - origin`` with ``c0 = L//2 - (L-1)/2`` (0.5 px for even L, 0 for odd L), where
``origin`` is RELION's origin in pixels. Encoders predict ``d``; the image model converts it
with :func:`displacement_to_origin` (a fixed half-pixel phase ramp).
"""

from __future__ import annotations

import torch

__all__ = [
    "GROUP_ELEMENTS",
    "group_elements",
    "image_action",
    "phi_t",
    "phi_r",
    "compose",
    "inverse",
    "grid_centre_offset_px",
    "origin_to_displacement",
    "displacement_to_origin",
    "in_plane_turn",
    "turn_images",
]

#: (c, k) for every element of D4, indexed e = 4c + k; C4 is e = 0..3.
GROUP_ELEMENTS: tuple[tuple[int, int], ...] = tuple((c, k) for c in (0, 1) for k in range(4))

_Q = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
_F = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)


def group_elements(group: str) -> list[int]:
    """Element indices of ``"C4"``, ``"D4"``, ``"C2"`` (rotation by π) or ``"trivial"``."""
    return {"trivial": [0], "C2": [0, 2], "C4": [0, 1, 2, 3], "D4": list(range(8))}[group]


def image_action(images: torch.Tensor, e: int) -> torch.Tensor:
    """``L_e`` on images or feature maps (..., L, L): rot90 k times, then flip rows if c = 1."""
    c, k = GROUP_ELEMENTS[e]
    out = torch.rot90(images, k, dims=(-2, -1)) if k else images
    return torch.flip(out, dims=(-2,)) if c else out


def phi_t(e: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """2×2 matrix acting on (x, y) displacements for element e."""
    c, k = GROUP_ELEMENTS[e]
    m = torch.linalg.matrix_power(_Q, k)
    return ((_F @ m) if c else m).to(dtype)


def phi_r(e: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """3×3 rotation acting on poses from the left for element e: ``R -> φ_r(e) R``."""
    c, _ = GROUP_ELEMENTS[e]
    out = torch.zeros(3, 3, dtype=torch.float64)
    out[:2, :2] = phi_t(e)
    out[2, 2] = -1.0 if c else 1.0
    return out.to(dtype)


def _matrix_to_index(m: torch.Tensor) -> int:
    for e in range(8):
        if torch.equal(phi_t(e), m):
            return e
    raise ValueError("not an element of D4")


def compose(a: int, b: int) -> int:
    """Index of ``a · b`` (apply b first)."""
    return _matrix_to_index(phi_t(a) @ phi_t(b))


def inverse(e: int) -> int:
    """Index of ``e⁻¹``."""
    return _matrix_to_index(phi_t(e).T)


def grid_centre_offset_px(L: int) -> float:
    """``L//2 - (L-1)/2``: 0.5 px for even boxes, 0 for odd ones."""
    return L // 2 - (L - 1) / 2


def origin_to_displacement(origin_px: torch.Tensor, L: int) -> torch.Tensor:
    """RELION origins (..., 2) px -> displacement from the grid centre (L-1)/2, (..., 2) px."""
    return grid_centre_offset_px(L) - origin_px


def displacement_to_origin(d_px: torch.Tensor, L: int) -> torch.Tensor:
    """Inverse of :func:`origin_to_displacement`."""
    return grid_centre_offset_px(L) - d_px


def in_plane_turn(theta: torch.Tensor) -> torch.Tensor:
    """The rotations of D4 extended to any angle: (..., 2, 2) matrices ``[[cos, sin], [-sin, cos]]``
    of ``theta`` (...) radians, so that ``in_plane_turn(k·π/2) = phi_t(k)`` (Q^k). On poses they act
    as ``diag(g, 1)`` from the left and on displacements as ``g``, exactly as φ_r, φ_t do."""
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)


def turn_images(images: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``[L_g I](p) = I(g⁻¹ p)`` about the grid centre (L-1)/2 for any in-plane rotations ``g``
    (B, 2, 2) (:func:`in_plane_turn`), by bilinear interpolation (zeros outside). images (B, L, L).
    Equal to :func:`image_action` up to rounding at multiples of π/2; between them it blurs by
    up to half a pixel."""
    B = images.shape[0]
    A = torch.zeros(B, 2, 3, dtype=images.dtype, device=images.device)
    A[:, :, :2] = g.transpose(-1, -2).to(images.dtype)  # output (x, y) -> input g⁻¹ (x, y), x = column
    grid = torch.nn.functional.affine_grid(A, [B, 1, *images.shape[-2:]], align_corners=True)
    return torch.nn.functional.grid_sample(images[:, None], grid, mode="bilinear", padding_mode="zeros",
                                           align_corners=True)[:, 0]
