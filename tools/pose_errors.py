"""Where the pose error of a set of poses sits: which particles are off, and by what kind of rotation.

    python tools/pose_errors.py POSES.star GT_POSES.pkl [--datadir DIR] [--bad-deg 20]

POSES: a run's predicted_particles.star or `eqcryo refine`'s output. After the global alignment
(hand included) that the pose MSE uses, each particle's error is the rotation E = R_gt R_aligned^T
in the image frame: its angle, and — for the particles more than --bad-deg off — how close its
axis is to the viewing axis (|axis_z| near 1: a turn about the view, e.g. the half turn that a
projection with a near two-fold axis along the view invites; docs/training-notebook.md Round 5).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from eqcryo.data.cryodrgn import read_pose_pkl
from eqcryo.data.io import load_particles
from eqcryo.evaluation.metrics import align_poses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("poses")
    ap.add_argument("gt_poses")
    ap.add_argument("--datadir")
    ap.add_argument("--bad-deg", type=float, default=20.0)
    a = ap.parse_args()
    t = load_particles(a.poses, datadir=a.datadir)
    if t.rotations is None:
        raise SystemExit(f"{a.poses}: no poses")
    R = torch.as_tensor(t.rotations).double()
    R_gt = torch.as_tensor(read_pose_pkl(a.gt_poses, t.box)[0]).double()
    al = align_poses(R, R_gt)
    E = R_gt @ al.apply(R).transpose(-1, -2)  # the error as a rotation in the image frame
    cos = ((E.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    angle = torch.rad2deg(torch.acos(cos))
    bad = angle > a.bad_deg
    axis = torch.stack([E[:, 2, 1] - E[:, 1, 2], E[:, 0, 2] - E[:, 2, 0], E[:, 1, 0] - E[:, 0, 1]], -1)
    # (the antisymmetric part vanishes at exactly 180°; there the axis is the eigenvector of E + I)
    near_pi = angle > 179.0
    if near_pi.any():
        M = E[near_pi] + torch.eye(3, dtype=E.dtype)
        axis[near_pi] = M[torch.arange(len(M)), :, M.norm(dim=-2).argmax(-1)]
    axis_z = (axis[:, 2] / axis.norm(dim=-1).clamp_min(1e-12)).abs()
    print(f"{t.n} particles; pose MSE {al.mse:.4f}, MedSE {al.medse:.4f}, hand flipped: {al.flip}")
    print(f"more than {a.bad_deg:g}° off: {int(bad.sum())} ({bad.double().mean().item():.1%}), "
          f"{(al.sq_err[bad].sum() / t.n).item():.4f} of the MSE")
    if bad.any():
        edges = [a.bad_deg, 45, 90, 135, 160, 175, 180.001]
        h = np.histogram(angle[bad].numpy(), bins=edges)[0]
        print("error angle (°):  " + "  ".join(f"{lo:g}-{hi:.0f}: {n}" for lo, hi, n in zip(edges, edges[1:], h)))
        edges = [0, 0.5, 0.8, 0.95, 1.0001]
        h = np.histogram(axis_z[bad].numpy(), bins=edges)[0]
        print("|axis·view|:      " + "  ".join(f"{lo:g}-{min(hi, 1):g}: {n}" for lo, hi, n in zip(edges, edges[1:], h)))


if __name__ == "__main__":
    main()
