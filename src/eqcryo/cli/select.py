"""``eqcryo select RUN -o kept.star``: the particles of chosen classes of a run with several classes."""

from __future__ import annotations

import json
import os

import numpy as np

from ..data.atomic import refuse_overwriting_inputs
from ..data.errors import InputError
from ..data.star import read_star, write_star
from ..training.rundir import RunDir
from .common import verb_parser


def add_parser(sub):
    p = verb_parser(sub, "select", "write the particles of chosen classes (default: every class, no junk)",
                    "Read RUN/predicted_particles.star of a run trained with --classes K and write the particles "
                    "of the chosen classes as a RELION 3.1 STAR file: their poses in their class, rlnClassNumber, "
                    "rlnMaxValueProbDistribution (how clearly the class won) and rlnEqcryoClassScore (the normalised "
                    "correlation with the class's map), CTF and optics as read, and the original images referenced "
                    "(absolute paths; nothing is copied). Junk (class 0) is left out unless --classes names 0.",
                    "eqcryo select run -o kept.star --classes 1,3 --min-score 0.2")
    p.add_argument("run", help="run folder (of eqcryo train --classes K)")
    p.add_argument("-o", "--output", required=True, help="output .star")
    p.add_argument("--classes", help="comma-separated class numbers to keep (default: 1..K, not the junk 0)")
    p.add_argument("--min-score", type=float, default=None,
                   help="also drop particles whose score (rlnEqcryoClassScore) is below this")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..training.classes import ClassRun

    rd = RunDir(args.run)
    record_path = rd / ClassRun.CLASSES_JSON
    if not record_path.exists():
        raise InputError(f"{record_path}: not found; select reads a run trained with --classes K (finished)")
    record = json.loads(record_path.read_text())
    K = int(record["classes"])
    if args.classes is None:
        keep = list(range(1, K + 1))
    else:
        try:
            keep = sorted({int(c) for c in args.classes.split(",") if c.strip()})
        except ValueError:
            raise InputError(f"--classes {args.classes!r}: expected comma-separated class numbers, e.g. 1,3") from None
        bad = [c for c in keep if not 0 <= c <= K]
        if bad or not keep:
            raise InputError(f"--classes {args.classes}: {RunDir(args.run).path} has classes 1..{K} (and 0, junk); "
                             f"no class {', '.join(map(str, bad)) or '(none given)'}")
    if not args.output.endswith(".star"):
        raise InputError(f"{args.output}: select writes a RELION .star file; give a path ending in .star")
    star = rd / RunDir.POSES_STAR
    refuse_overwriting_inputs(args.output, [str(star)])
    t = read_star(star)
    if t.extra is None or "rlnClassNumber" not in t.extra.columns:
        raise InputError(f"{star}: has no rlnClassNumber column; was the run trained with --classes?")
    cls = t.extra["rlnClassNumber"].to_numpy().astype(int)
    mask = np.isin(cls, keep)
    if args.min_score is not None:
        score = t.extra["rlnEqcryoClassScore"].to_numpy().astype(float)
        mask &= score >= args.min_score
    ids = np.nonzero(mask)[0]
    if not len(ids):
        raise InputError(f"{star}: no particle is in class(es) {','.join(map(str, keep))}"
                         + ("" if args.min_score is None else f" with score >= {args.min_score}"))
    sub = t.subset(ids)
    assert sub.images is not None  # (read from a STAR with image names)
    names = np.array([f"{int(i) + 1}@{os.path.abspath(p)}" for p, i in zip(sub.images.paths, sub.images.indices)],
                     dtype=object)
    write_star(args.output, sub, names)
    counts = {int(c): int((cls[ids] == c).sum()) for c in keep}
    print(json.dumps({"output": args.output, "kept": int(len(ids)), "of": int(t.n), "per_class": counts}))
    return 0
