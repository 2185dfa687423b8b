"""``eqcryo analyze RUN``: the failure-mode figures of paper App. G for one training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data.cryodrgn import read_pose_pkl
from ..data.errors import InputError
from ..evaluation.analysis import consistent_subset_sizes, projective_plane_coords
from ..evaluation.figures import plot_joy, plot_projective_plane, plot_series
from ..evaluation.metrics import align_poses
from ..training.rundir import RunDir
from .common import positive_int, verb_parser


def add_parser(sub):
    p = verb_parser(sub, "analyze", "App. G figures for a run: consistent subsets, projective plane, mirror score",
                    "From RUN's held-out predictions at every evaluation (eval_poses.npz) and its ground truth: "
                    "a joy plot of |S_i| (Eq. 32: images consistent with image i's own alignment to the truth) for "
                    "the first --n images over time (two halves of N/2 = two internally consistent subsets), the "
                    "projective-plane view of predicted vs true viewing directions at the last evaluation, and the "
                    "map's mirror-symmetry score over time (if the run set track_mirror). Writes PNGs and "
                    "analysis.json into RUN (or --outdir).",
                    "eqcryo analyze run")
    p.add_argument("run", help="run folder written by eqcryo train (with --gt-poses)")
    p.add_argument("--n", type=positive_int, default=300, help="images for the joy plot (default 300)")
    p.add_argument("--eps", type=float, default=0.5, help="Frobenius threshold of Eq. 32 (0.5 ≈ 20°)")
    p.add_argument("--outdir", help="where to write (default RUN)")
    p.set_defaults(func=run)


def run(args) -> int:
    rd = RunDir(args.run)
    d = rd.read_eval_poses()
    if d is None:
        raise InputError(f"{rd / RunDir.EVAL_POSES}: not found; the run has no recorded evaluations")
    cfg, res = rd.read_config()
    if not cfg.evaluation.gt_poses:
        raise InputError(f"{rd.path}: the run has no ground-truth poses (--gt-poses); nothing to compare with")
    gt_R, _ = read_pose_pkl(cfg.evaluation.gt_poses, int(res["box"]))
    ids = d["eval_ids"][: args.n]
    R_gt = torch.from_numpy(gt_R[ids])
    out = Path(args.outdir or rd.path)
    out.mkdir(parents=True, exist_ok=True)
    preds = [torch.from_numpy(Rk[: len(ids)]).double() for Rk in d["rotations"]]
    aligns = [align_poses(R, R_gt) for R in preds]  # each evaluation in the hand of its own alignment
    sizes = [consistent_subset_sizes(R, R_gt, args.eps, hand_flipped=al.flip).numpy() for R, al in zip(preds, aligns)]
    plot_joy(out / "consistent_subsets.png", d["train_seconds"], sizes, len(ids))
    plot_projective_plane(out / "projective_plane.png", projective_plane_coords(R_gt).numpy(),
                          projective_plane_coords(aligns[-1].apply(preds[-1])).numpy())
    m = rd.read_metrics()
    written = ["consistent_subsets.png", "projective_plane.png"]
    if "mirror_score" in m and np.isfinite(m["mirror_score"]).any():
        written.append("mirror_score.png")
        plot_series(out / "mirror_score.png", [("best mirror-plane correlation", m["train_seconds"],
                                                m["mirror_score"])], "correlation", logy=False)
    summary = {"evaluated_at_train_seconds": [float(t) for t in d["train_seconds"]],
               "median_subset_size": [float(np.median(s)) for s in sizes], "n": int(len(ids)), "eps": args.eps}
    (out / "analysis.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {', '.join(written)} and analysis.json to {out}")
    return 0
