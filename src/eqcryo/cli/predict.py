"""``eqcryo predict RUN PARTICLES -o POSES``: poses for new particles from a trained encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.atomic import refuse_overwriting_inputs
from ..data.errors import InputError
from ..data.io import load_particles, save_metadata
from ..training.inference import load_trained
from .common import verb_parser


def add_parser(sub):
    p = verb_parser(sub, "predict", "predict poses for particles with a trained encoder (one pass per image)",
                    "The amortized part: run RUN's encoder over PARTICLES (same box and pixel size as the training "
                    "data) and write their poses (branch-corrected for the symmetric/mirror losses) as .star (with "
                    "the particles' CTF and images) or cryoDRGN .pkl. Needs only the run folder (config.yaml and "
                    "the checkpoint), not the training particles.",
                    "eqcryo predict run new_particles.star -o new_poses.star")
    p.add_argument("run", help="run folder")
    p.add_argument("particles", help="particles (.star, .cs, .mrcs with --ctf)")
    p.add_argument("-o", "--output", required=True, help="output .star or .pkl")
    p.add_argument("--ctf", help="cryoDRGN CTF .pkl")
    p.add_argument("--no-ctf", action="store_true", help="particles without a CTF (as for train)")
    p.add_argument("--datadir", help="folder of the image stacks named in the metadata")
    p.add_argument("--checkpoint", help="checkpoint file (default RUN/checkpoint.pt)")
    p.add_argument("--device", help="cpu, cuda, ... (default: the run's)")
    p.set_defaults(func=run)


def run(args) -> int:
    refuse_overwriting_inputs(args.output, [args.particles, args.ctf])
    from ..training.classes import ClassRun

    if (Path(args.run) / ClassRun.CLASSES_JSON).exists():
        return _run_classes(args)
    tm = load_trained(args.run, args.checkpoint, device=args.device)
    t = load_particles(args.particles, ctf=args.ctf, datadir=args.datadir)
    refuse_overwriting_inputs(args.output, [args.particles, args.ctf], tables=(t,))
    t.apply_ctf_rule(True if args.no_ctf else tm.cfg.data.no_ctf)  # (the run's rule unless said)
    R, origin = tm.predict(t)
    t.rotations, t.shifts_angstrom, t.euler_degrees = R.numpy(), origin.numpy(), None
    t.box = tm.box
    if t.apix is None:
        t.apix = np.full(t.n, tm.apix)
    for f in save_metadata(Path(args.output), t):
        print(f"wrote {f} ({t.n} particles)")
    return 0


def _run_classes(args) -> int:
    """A run of several classes: class and pose of each particle (rlnClassNumber 0 = junk)."""
    from ..training.classes import predict_classes

    if args.checkpoint:
        raise InputError("predict --checkpoint: a run with several classes has one checkpoint per class; "
                         "predict uses each class's own")
    t = load_particles(args.particles, ctf=args.ctf, datadir=args.datadir)
    refuse_overwriting_inputs(args.output, [args.particles, args.ctf], tables=(t,))
    if args.no_ctf:
        t.apply_ctf_rule(True)
    label, score, R, origin = predict_classes(args.run, t, device=args.device)
    t.rotations, t.shifts_angstrom, t.euler_degrees = R.numpy(), origin.numpy(), None
    t.set_columns({"rlnClassNumber": label.astype(np.int64), "rlnEqcryoClassScore": score})
    for f in save_metadata(Path(args.output), t):
        counts = {int(c): int((label == c).sum()) for c in np.unique(label)}
        print(f"wrote {f} ({t.n} particles; per class, 0 = junk: {counts})")
    return 0
