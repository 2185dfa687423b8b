"""``eqcryo predict RUN PARTICLES -o POSES``: poses for new particles from a trained encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.atomic import refuse_overwriting_inputs
from ..data.errors import InputError
from ..data.io import load_particles, save_metadata
from .common import verb_parser
from .evaluate import load_run


def add_parser(sub):
    p = verb_parser(sub, "predict", "predict poses for particles with a trained encoder (one pass per image)",
                    "The amortized part: run RUN's encoder over PARTICLES (same box and pixel size as the training "
                    "data) and write their poses (branch-corrected for the symmetric/mirror losses) as .star (with "
                    "the particles' CTF and images) or cryoDRGN .pkl.",
                    "eqcryo predict run new_particles.star -o new_poses.star")
    p.add_argument("run", help="run folder")
    p.add_argument("particles", help="particles (.star, .cs, .mrcs with --ctf)")
    p.add_argument("-o", "--output", required=True, help="output .star or .pkl")
    p.add_argument("--ctf", help="cryoDRGN CTF .pkl")
    p.add_argument("--datadir")
    p.add_argument("--checkpoint", help="checkpoint file (default RUN/checkpoint.pt)")
    p.set_defaults(func=run)


def run(args) -> int:
    refuse_overwriting_inputs(args.output, [args.particles, args.ctf])
    tr = load_run(args.run, args.checkpoint)
    t = load_particles(args.particles, ctf=args.ctf, datadir=args.datadir)
    if t.images is None:
        raise InputError(f"{args.particles}: no images")
    t.images.validate()
    if t.images.box() != tr.L:
        raise InputError(f"{args.particles}: box {t.images.box()} px but the model was trained at {tr.L} px")
    if t.apix is not None and abs(t.pixel_size() - tr.apix) > 1e-3 * tr.apix:
        raise InputError(f"{args.particles}: pixel size {t.pixel_size()} Å but the model was trained at {tr.apix} Å")
    R, origin = tr.predict(np.arange(t.n), table=t)
    t.rotations, t.shifts_angstrom, t.euler_degrees = R.numpy(), origin.numpy(), None
    t.box = tr.L
    if t.apix is None:
        t.apix = np.full(t.n, tr.apix)
    for f in save_metadata(Path(args.output), t):
        print(f"wrote {f} ({t.n} particles)")
    return 0
