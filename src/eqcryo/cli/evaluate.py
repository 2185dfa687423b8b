"""``eqcryo evaluate RUN``: recompute every metric for a checkpoint of a run."""

from __future__ import annotations

import json
from pathlib import Path

from ..data.errors import InputError
from ..training.trainer import TrainConfig, Trainer
from .common import verb_parser


def add_parser(sub):
    p = verb_parser(sub, "evaluate", "recompute the metrics of a trained run",
                    "Load RUN's checkpoint (or --checkpoint) and evaluate it on the run's held-out particles: pose "
                    "MSE/MedSE, angular and shift errors, and the FSC of the aligned map against the ground truth "
                    "(ground truth from the run's config unless --gt-poses/--gt-volume are given). Prints JSON; "
                    "nothing in RUN is changed.",
                    "eqcryo evaluate run --gt-poses sim/gt_poses.pkl --gt-volume sim/gt_volume.mrc")
    p.add_argument("run", help="run folder")
    p.add_argument("--checkpoint", help="checkpoint file (default RUN/checkpoint.pt)")
    p.add_argument("--gt-poses", help="ground-truth poses (cryoDRGN .pkl)")
    p.add_argument("--gt-volume", help="ground-truth map (.mrc)")
    p.set_defaults(func=run)


def load_run(run_dir: str, checkpoint: str | None = None, **overrides) -> Trainer:
    """A trained run, read-only, with its checkpoint (or ``checkpoint``) loaded."""
    tr = Trainer(TrainConfig.from_run(run_dir, **overrides), read_only=True)
    tr._load_checkpoint(Path(checkpoint) if checkpoint else None)
    return tr


def run(args) -> int:
    tr = load_run(args.run, args.checkpoint, gt_poses=args.gt_poses, gt_volume=args.gt_volume)
    if tr.gt_R is None:
        raise InputError(f"{args.run}: no ground truth; give --gt-poses (and --gt-volume) to evaluate")
    row = tr.evaluate(log=False)
    print(json.dumps(row, indent=2, default=float))
    return 0
