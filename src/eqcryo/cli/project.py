"""``eqcryo project VOLUME --poses META -o STACK.mrcs``: projections like ``relion_project``."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ..data.atomic import refuse_overwriting_inputs
from ..data.errors import InputError
from ..data.io import load_particles
from ..data.mrc import StackWriter, read_volume
from ..physics.ctf import ctf_2d
from ..physics.projection import prepare_fourier_volume, render_images
from .common import positive_float, positive_int, verb_parser


def add_parser(sub):
    p = verb_parser(sub, "project", "project a volume at given poses (like relion_project)",
                    "Project VOLUME (.mrc) at the rotations and shifts (RELION origins) of META (.star, .cs, or a "
                    "cryoDRGN pose .pkl with --box), optionally multiplied by each particle's CTF (--ctf). Uses the "
                    "Fourier slice theorem with a 2x zero-padded, gridding-corrected volume and trilinear "
                    "interpolation (RELION's method; matches relion_project to < 1%). Writes a float32 stack with "
                    "the volume's voxel size.",
                    "eqcryo project map.mrc --poses particles.star -o proj.mrcs --ctf")
    p.add_argument("volume", help="cubic .mrc map")
    p.add_argument("--poses", required=True, help="metadata with poses (.star, .cs, .pkl)")
    p.add_argument("-o", "--output", required=True, help="output .mrcs stack")
    p.add_argument("--ctf", action="store_true", help="apply each particle's CTF from the metadata")
    p.add_argument("--apix", type=positive_float, help="voxel size in Å if the map header has none")
    p.add_argument("--pad", type=positive_int, default=2, help="Fourier padding factor (default 2)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="images per batch (default 128)")
    p.set_defaults(func=run)


def run(args) -> int:
    refuse_overwriting_inputs(args.output, [args.volume, args.poses])
    vol, vapix = read_volume(args.volume)
    apix = args.apix or vapix
    if apix is None:
        raise InputError(f"{args.volume}: voxel size is 0 in the header; give --apix")
    L = vol.shape[0]
    t = load_particles(args.poses, box=L, apix=apix if args.poses.endswith(".pkl") else None)
    if t.rotations is None:
        raise InputError(f"{args.poses}: holds no poses")
    refuse_overwriting_inputs(args.output, [args.volume, args.poses], tables=(t,))
    shifts_px = np.zeros((t.n, 2)) if t.shifts_angstrom is None else t.shifts_angstrom / apix
    if args.ctf and t.ctf is None:
        raise InputError(f"{args.poses}: --ctf given but the file has no CTF parameters")
    fv = prepare_fourier_volume(torch.from_numpy(vol).double(), pad=args.pad)
    with StackWriter(args.output, t.n, L, apix) as w:
        for s in tqdm(range(0, t.n, args.batch_size), desc="project", unit="batch"):
            sl = slice(s, min(s + args.batch_size, t.n))
            R = torch.from_numpy(t.rotations[sl])
            ctf = None
            if args.ctf:
                params = {k: torch.from_numpy(np.array(v)) for k, v in t.ctf_array(sl).items()}
                ctf = ctf_2d(L, apix, params, torch.float64)
            imgs = render_images(fv.slice(R), ctf, torch.from_numpy(shifts_px[sl]))
            w.write(s, imgs.float().numpy())
    print(f"wrote {args.output}: {t.n} images of {L} px at {apix:.4g} Å/px")
    return 0
