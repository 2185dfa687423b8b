"""``eqcryo refine PARTICLES -o OUT.star``: projection matching from given poses (hard EM)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.atomic import refuse_overwriting_inputs
from ..data.dataset import ParticleDataset
from ..data.errors import InputError
from ..data.io import load_particles, save_metadata
from ..data.mrc import write_volume
from ..reconstruction.contrast import orient_contrast
from ..reconstruction.projection_matching import MatchConfig, projection_matching
from .common import add_particle_options, nonneg_int, positive_float, positive_int, verb_parser


def add_parser(sub):
    p = verb_parser(
        sub, "refine", "refine poses by projection matching (global search + local refinement)",
        "Hard-EM projection matching from the poses in PARTICLES (e.g. a run's predicted_particles.star): "
        "each iteration reconstructs a map by Wiener-filtered backprojection, then searches every image "
        "over --n-rotations uniform rotations (and its current pose) and refines the best by a pattern "
        "search (steps about each axis and along each shift, halving), comparing on Fourier shells "
        "|k| < --radius. It repairs the mirrored "
        "assignments an amortized encoder can stall in (docs/training.md), if most poses are right to "
        "start with; from poor or random poses it can stall in its own local optimum.\n\n"
        "Writes OUT (.star or .pkl: the refined poses, with the particles' CTF and images) and, with "
        "--map, the map reconstructed from the refined poses.",
        "eqcryo refine run/predicted_particles.star -o refined.star --map refined.mrc")
    p.add_argument("particles", help=".star, .cs, or .mrcs with --poses and --ctf")
    p.add_argument("-o", "--output", required=True, help="refined poses (.star or .pkl)")
    p.add_argument("--map", help="also write the map from the refined poses (.mrc)")
    add_particle_options(p, particles_option=False)
    p.add_argument("--iters", type=positive_int, default=3, help="iterations (default 3)")
    p.add_argument("--radius", type=positive_float, default=16.0, help="Fourier shells compared (default 16)")
    p.add_argument("--n-rotations", type=positive_int, default=8192,
                   help="global search size (default 8192, ~12° apart)")
    p.add_argument("--shift-step", type=float, default=0.0,
                   help="also search origins ±this many px around the current ones (default 0: refine only)")
    p.add_argument("--keep", type=positive_int, default=1,
                   help="refine the K best global-search candidates of each image locally, not only the best "
                        "(default 1)")
    p.add_argument("--orbit", type=positive_int, default=1,
                   help="also refine each image's current pose turned in-plane by 360/N degrees, 2x360/N, ... "
                        "(2: the half turn that near two-fold views confuse; default 1: off)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--gt-poses", help="ground-truth pose .pkl: report pose MSE after each iteration")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--invert-contrast", choices=["auto", "yes", "no"], default="auto",
                   help="multiply the images by -1: auto decides from the data (default auto)")
    p.set_defaults(func=run)


def run(args) -> int:
    outs = [args.output] + ([args.map] if args.map else [])
    for o in outs:
        refuse_overwriting_inputs(o, [args.particles, args.poses, args.ctf, args.gt_poses])
    t = load_particles(args.particles, poses=args.poses, ctf=args.ctf, datadir=args.datadir, box=args.box,
                       apix=args.apix)
    if t.rotations is None:
        raise InputError(f"{args.particles}: no poses to start from; give them with --poses")
    for o in outs:
        refuse_overwriting_inputs(o, [args.particles, args.poses, args.ctf, args.gt_poses], tables=(t,))
    L, apix = t.validate_images(), t.pixel_size()
    if args.radius <= 0 or args.iters < 1:
        raise InputError("refine: --radius must be > 0 and --iters >= 1")
    gt = None
    if args.gt_poses:
        from ..data.cryodrgn import read_pose_pkl
        gt = torch.from_numpy(read_pose_pkl(args.gt_poses, L)[0])
        if len(gt) != t.n:
            raise InputError(f"{args.gt_poses}: {len(gt)} poses but {args.particles} has {t.n} particles")

    ds = ParticleDataset(t, dtype=torch.float64)
    orient_contrast(ds, args.invert_contrast)

    def reader(ids):
        b = ds.batch(ids)
        return b.images, b.ctf

    bar = tqdm(total=args.iters, desc="refine", unit="iteration", disable=args.no_progress)

    def report(it, R, origin):
        bar.update(1)
        msg = {"iteration": it + 1}
        if gt is not None:
            from ..evaluation.metrics import pose_metrics
            m, _ = pose_metrics(R, gt)
            msg.update(pose_mse=m["pose_mse"], pose_medse=m["pose_medse"])
        bar.write(json.dumps(msg))
        sys.stdout.flush()

    cfg = MatchConfig(radius=min(args.radius, L / 2), n_rotations=args.n_rotations, shift_step_px=args.shift_step,
                      keep=args.keep, orbit=args.orbit,
                      seed=args.seed)
    shifts = np.zeros((t.n, 2)) if t.shifts_angstrom is None else t.shifts_angstrom
    with bar:
        R, origin_px, vol = projection_matching(reader, np.arange(t.n), L, torch.from_numpy(t.rotations),
                                                torch.from_numpy(shifts / apix), args.iters, cfg, report)
    t.rotations, t.shifts_angstrom, t.euler_degrees = R.numpy(), origin_px.numpy() * apix, None
    for f in save_metadata(Path(args.output), t):
        print(f"wrote {f} ({t.n} particles)")
    if args.map:
        write_volume(args.map, vol.float().numpy(), apix)
        print(f"wrote {args.map}")
    return 0
