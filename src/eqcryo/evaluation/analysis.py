"""Failure-mode analysis (paper App. G): internally consistent subsets, the projective-plane
view of viewing directions, and spurious planar (mirror) symmetry of a map.

Our alignment convention is ``R_gt ≈ R_pred Q`` (see :mod:`eqcryo.evaluation.metrics`); the
paper writes ``R_rel R_pred = R_gt``. The per-image alignment is therefore
``Q_i = R_pred_iᵀ R_gt_i`` and Eq. 32 becomes

    S_i = { j : ‖R_pred_j Q_i − R_gt_j‖_F < ε }.

|S_i| = N for every i when the encoder is globally consistent; two internally consistent halves
(e.g. one mirrored) give |S_i| ≈ N/2.
"""

from __future__ import annotations

import torch

from ..physics.projection import flip_hand, flip_hand_rotations, rotate_volume
from ..physics.rotations import fibonacci_sphere

__all__ = ["viewing_direction_anisotropy", "view_prior_penalty", "consistent_subset_sizes", "projective_plane_coords",
           "mirror_symmetry_score", "rotation_head_conditioning"]


def _view_second_moment(R: torch.Tensor) -> torch.Tensor:
    """``mean_i z_i z_iᵀ`` (3, 3) of the viewing directions z_i = R_i[2, :] of R (N, 3, 3)."""
    z = R[:, 2, :]
    return z.T @ z / len(z)


def viewing_direction_anisotropy(R: torch.Tensor) -> float:
    """Largest eigenvalue of the second moment ``mean_i z_i z_iᵀ`` of the viewing directions
    z_i = R_i[2, :] (N, 3, 3): 1/3 for directions spread evenly over the sphere, 1 when every
    image is assigned the same axis (±). Needs no ground truth: a value climbing towards 1
    while the loss stalls is the pose collapse seen in failed runs (docs/training-notebook.md)."""
    return float(torch.linalg.eigvalsh(_view_second_moment(R.double()))[-1])


def view_prior_penalty(R: torch.Tensor) -> torch.Tensor:
    """‖mean_i z_i z_iᵀ − I/3‖²_F for viewing directions z_i = R_i[2, :] of a batch (B, 3, 3):
    near 0 for directions spread evenly (the uniform distribution on the sphere has second
    moment I/3), 2/3 when all share one axis. Differentiable."""
    M = _view_second_moment(R)
    return ((M - torch.eye(3, dtype=M.dtype, device=M.device) / 3) ** 2).sum()


def consistent_subset_sizes(R_pred: torch.Tensor, R_gt: torch.Tensor, eps: float = 0.5,
                            hand_flipped: bool = False) -> torch.Tensor:
    """|S_i| (N,) of Eq. 32 for predictions and truth (N, 3, 3). ``eps`` is a Frobenius distance
    (‖I − Q‖_F = √8 sin(θ/2): 0.5 ≈ 20°). ``hand_flipped``: the predictions are in the other hand
    (the global alignment's ``flip``); they are mapped by ``flip_hand_rotations`` first, since a map of the
    opposite hand is as valid as the truth and its images are consistent only through that flip."""
    R_pred, R_gt = R_pred.double(), R_gt.double()
    if hand_flipped:
        R_pred = flip_hand_rotations(R_pred)
    Q = R_pred.transpose(-1, -2) @ R_gt  # (N, 3, 3): Q_i
    # D[i, j] = ‖R_pred_j Q_i − R_gt_j‖_F
    aligned = torch.einsum("jab,ibc->ijac", R_pred, Q)
    dist = (aligned - R_gt[None]).pow(2).sum((-2, -1)).sqrt()
    return (dist < eps).sum(1)


def projective_plane_coords(R: torch.Tensor) -> torch.Tensor:
    """Points (N, 2) on the projective plane: the viewing direction z = R[2, :] (map frame),
    antipodes identified by flipping to z3 >= 0, projected on the xy-plane (paper Fig. 8)."""
    z = R.double()[:, 2, :]
    s = torch.where(z[:, 2] < 0, -1.0, 1.0).to(z.dtype)
    return z[:, :2] * s[:, None]


def _rotation_to_z(n: torch.Tensor) -> torch.Tensor:
    """A rotation R with R n = e_z."""
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    v = torch.linalg.cross(n, z)
    c = float(n @ z)
    if v.norm() < 1e-12:
        return torch.eye(3, dtype=torch.float64) if c > 0 else torch.diag(torch.tensor([1.0, -1.0, -1.0],
                                                                                        dtype=torch.float64))
    vx = torch.tensor([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + vx + vx @ vx / (1 + c)


def mirror_symmetry_score(volume: torch.Tensor, n_normals: int = 64) -> tuple[float, torch.Tensor]:
    """Best correlation between a map and its mirror image through a plane containing the
    centre, over ``n_normals`` plane orientations: (score, best normal (3,)). Near 1 for a
    map with a (spurious) mirror plane; a chiral molecule scores clearly lower."""
    v = volume.double() - volume.double().mean()
    best, best_n = -1.0, torch.tensor([0.0, 0.0, 1.0])
    for n in fibonacci_sphere(n_normals, hemisphere=True):
        R = _rotation_to_z(n)
        # W(x) = V(M x), M = I − 2nnᵀ = Rᵀ D R: rotate_volume(V, R)(x) = V(Rᵀx), then mirror z,
        # then rotate by Rᵀ
        w = rotate_volume(flip_hand(rotate_volume(v, R)), R.T.contiguous())
        c = float((v * w).sum() / (v.norm() * w.norm() + 1e-30))
        if c > best:
            best, best_n = c, n
    return best, best_n


def rotation_head_conditioning(six: torch.Tensor) -> dict:
    """How close the rotation head's outputs sit to the singular set of the 6-D → SO(3) map.

    ``six`` (n, 6) or (n, K, 6): pairs (V1, V2). The map orthogonalises M = [V1, V2, V1×V2], which
    degenerates when V1 ∥ V2 (or either vanishes): then |V1×V2| → 0 and the rotation about that
    axis is undetermined. An image invariant under an element g of the encoder's group must map
    to a pair in φ_r(g)'s fixed subspace (a vector on g's axis, or in its mirror plane), which
    for some g forces exactly that. Returns the median and 5th percentile of
    ``sin∠(V1, V2) = |V1×V2| / (|V1||V2|)`` and of ``σ_min(M) / σ_max(M)`` over all pairs.
    """
    x = six.reshape(-1, 6).double()
    v1, v2 = x[:, :3], x[:, 3:]
    sin = torch.linalg.cross(v1, v2).norm(dim=-1) / (v1.norm(dim=-1) * v2.norm(dim=-1)).clamp_min(1e-300)
    sv = torch.linalg.svdvals(torch.stack([v1, v2, torch.linalg.cross(v1, v2)], -1))
    cond = sv[:, -1] / sv[:, 0].clamp_min(1e-300)
    q = torch.tensor([0.5, 0.05], dtype=torch.float64, device=x.device)
    s_q, c_q = torch.quantile(sin, q), torch.quantile(cond, q)
    return {"head_sin_median": s_q[0].item(), "head_sin_p05": s_q[1].item(),
            "head_sigma_ratio_median": c_q[0].item(), "head_sigma_ratio_p05": c_q[1].item()}
