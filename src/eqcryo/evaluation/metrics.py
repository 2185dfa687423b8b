"""Pose and map metrics against ground truth (paper App. F, done properly).

Predicted rotations differ from the truth by one global rotation Q and possibly the hand. With
our ``lattice @ R`` slicing, a map rotated by Q explains the data with ``R_pred = R_gt Qᵀ``, so

    R_gt ≈ R_pred Q            or, with the hand flipped,   R_gt ≈ (D R_pred D) Q,  D = diag(1, 1, -1).

``MSE = min_Q mean_i ‖R_pred_i Q - R_gt_i‖²_F`` (``MedSE`` with the median). Candidates for Q come
from anchor images (``Q = R_pred_iᵀ R_gt_i``) for both hands, each refined by a Procrustes fit
on its inliers; the best is kept. ‖I - Q‖²_F = 8 sin²(θ/2): 0.1 ≈ 12.8°, 0.0024 ≈ 2°; uniformly
random predictions give ≈ 6.

The learned map then matches the truth as ``V_gt ≈ rotate(V_rec, Qᵀ)`` (after a hand flip of
``V_rec`` when the hand is flipped), up to a translation found by cross-correlation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..physics.fsc import FSCResult, fsc
from ..physics.lattice import fft3_centered, ifft3_centered
from ..physics.projection import flip_hand, flip_hand_rotations, rotate_volume, shift_volume
from ..physics.rotations import special_orthogonalize

__all__ = ["PoseAlignment", "align_poses", "pose_metrics", "align_volume", "fsc_to_ground_truth"]

@dataclass
class PoseAlignment:
    """``Q`` (3, 3), ``flip`` (hand), ``mse``, ``medse`` and per-image squared errors (N,)."""

    Q: torch.Tensor
    flip: bool
    mse: float
    medse: float
    sq_err: torch.Tensor

    def apply(self, R_pred: torch.Tensor) -> torch.Tensor:
        """Predicted rotations mapped onto the ground-truth frame."""
        R = flip_hand_rotations(R_pred) if self.flip else R_pred
        return R @ self.Q


def _sq_err(R: torch.Tensor, R_gt: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    return ((R @ Q - R_gt) ** 2).sum((-2, -1))


def align_poses(R_pred: torch.Tensor, R_gt: torch.Tensor, n_anchors: int = 20, refine_iters: int = 3,
                seed: int = 0) -> PoseAlignment:
    """Best global rotation (and hand) mapping predictions (N, 3, 3) onto the truth (N, 3, 3)."""
    R_pred, R_gt = R_pred.double(), R_gt.double()
    N = len(R_pred)
    g = torch.Generator().manual_seed(seed)
    anchors = torch.randperm(N, generator=g)[: min(n_anchors, N)]
    best = None
    for flip in (False, True):
        R = flip_hand_rotations(R_pred) if flip else R_pred
        for a in anchors:
            Q = R[a].T @ R_gt[a]
            for _ in range(refine_iters):
                e = _sq_err(R, R_gt, Q)
                inl = e <= torch.quantile(e, 0.5)  # Procrustes on the better half: robust to outliers
                Q = special_orthogonalize((R[inl].transpose(-1, -2) @ R_gt[inl]).sum(0))
            e = _sq_err(R, R_gt, Q)
            m = e.mean().item()
            if best is None or m < best.mse:
                best = PoseAlignment(Q, flip, m, e.median().item(), e)
    assert best is not None  # (at least one anchor, one hand)
    return best


def pose_metrics(R_pred: torch.Tensor, R_gt: torch.Tensor, d_pred_angstrom: torch.Tensor | None = None,
                 d_gt_angstrom: torch.Tensor | None = None) -> tuple[dict, PoseAlignment]:
    """Pose MSE/MedSE, geodesic and viewing-direction errors (degrees), shift error (Å)."""
    al = align_poses(R_pred, R_gt)
    Ra = al.apply(R_pred.double())
    tr = (Ra.transpose(-1, -2) @ R_gt.double()).diagonal(dim1=-2, dim2=-1).sum(-1)
    geo = torch.rad2deg(torch.acos(((tr - 1) / 2).clamp(-1, 1)))
    v1, v2 = Ra[:, 2, :], R_gt.double()[:, 2, :]  # projection directions in the map frame
    view = torch.rad2deg(torch.acos((v1 * v2).sum(-1).clamp(-1, 1)))
    out = {"pose_mse": al.mse, "pose_medse": al.medse, "hand_flipped": al.flip,
           "geodesic_median_deg": geo.median().item(), "geodesic_mean_deg": geo.mean().item(),
           "view_median_deg": view.median().item()}
    if d_pred_angstrom is not None and d_gt_angstrom is not None:
        err = (d_pred_angstrom.double() - d_gt_angstrom.double()).norm(dim=-1)
        out["shift_rmse_angstrom"] = err.square().mean().sqrt().item()
        out["shift_median_angstrom"] = err.median().item()
    return out, al


def _best_shift(ref: torch.Tensor, mov: torch.Tensor) -> torch.Tensor:
    """Shift (dx, dy, dz) voxels maximising the cross-correlation of mov onto ref: the integer
    peak refined to sub-voxel precision by a parabola through its neighbours on each axis (a
    global shift in the reconstruction's frame is non-integer once rotated into the truth's)."""
    cc = ifft3_centered(fft3_centered(ref) * fft3_centered(mov).conj()).real
    L = ref.shape[-1]
    peak = np.unravel_index(int(cc.argmax()), cc.shape)  # (z, y, x)
    frac = []
    for ax in range(3):
        idx = list(peak)
        vals = []
        for o in (-1, 0, 1):
            idx[ax] = (peak[ax] + o) % L
            vals.append(float(cc[tuple(idx)]))
        den = vals[0] - 2 * vals[1] + vals[2]
        frac.append(0.5 * (vals[0] - vals[2]) / den if den < 0 else 0.0)
    z, y, x = (peak[i] - L // 2 + frac[i] for i in range(3))
    return torch.tensor([x, y, z], dtype=torch.float64)


def align_volume(v_rec: torch.Tensor, v_gt: torch.Tensor, al: PoseAlignment) -> torch.Tensor:
    """The reconstruction brought into the ground truth's frame: hand, rotation Qᵀ, then shift."""
    v = v_rec.double()
    if al.flip:
        v = flip_hand(v)
    v = rotate_volume(v, al.Q.T.contiguous())
    return shift_volume(v, _best_shift(v_gt.double(), v))


def fsc_to_ground_truth(v_rec: torch.Tensor, v_gt: torch.Tensor, al: PoseAlignment, apix: float
                        ) -> tuple[FSCResult, torch.Tensor]:
    """FSC between the aligned reconstruction and the truth (and the aligned map)."""
    va = align_volume(v_rec, v_gt, al)
    return fsc(va, v_gt.double(), apix), va
