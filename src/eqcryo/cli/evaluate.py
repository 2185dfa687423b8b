"""``eqcryo evaluate RUN``: recompute every metric for a checkpoint of a run."""

from __future__ import annotations

from ..data.errors import InputError
from ..training.batches import TrainingData
from ..training.evaluator import Evaluator, GroundTruth
from ..training.inference import load_trained
from ..training.schedule import LossBand
from .common import dumps, verb_parser


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


def run(args) -> int:
    tm = load_trained(args.run, args.checkpoint, gt_poses=args.gt_poses, gt_volume=args.gt_volume)
    cfg = tm.cfg
    if not cfg.evaluation.gt_poses:
        raise InputError(f"{args.run}: no ground truth; give --gt-poses (and --gt-volume) to evaluate")
    cfg.data.preload = False  # only the held-out particles are read: no need to load the whole stack
    data = TrainingData(cfg)
    gt = GroundTruth.load(cfg, data.n, data.box, data.apix, data.input_box, data.input_apix)
    c = tm.state.get("counters", {})
    refined = (tm.state.get("refinement") or {}).get("target_R") is not None
    band = LossBand(data.box, cfg.optimisation.lowpass_start_shells, cfg.optimisation.lowpass_images,
                    cfg.refinement.distill_band_shells)
    ev = Evaluator(data, gt, cfg.evaluation.track_mirror)(tm.model, band.radius(int(c.get("images_seen", 0)), refined),
                                               step=c.get("step"), images_seen=c.get("images_seen"))
    print(dumps(ev.row, indent=2, default=float))
    return 0
