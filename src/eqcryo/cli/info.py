"""``eqcryo info FILE``: what a particle, metadata or volume file holds."""

from __future__ import annotations

import json
from pathlib import Path

from ..data.io import load_particles
from ..data.mrc import mrc_header_info
from .common import add_particle_options, verb_parser


def add_parser(sub):
    p = verb_parser(sub, "info", "summarise a particle/metadata/volume file",
                    "Print a summary of FILE: particle count, box (px), pixel size (Å), optics groups, and "
                    "whether it carries images, CTF, poses and shifts. A cubic .mrc is reported as a volume.\n"
                    "With --check, every referenced image file is opened and every index checked (and with "
                    "--check-pixels every pixel is checked finite).",
                    "eqcryo info particles.star --check")
    p.add_argument("file", help=".star, .cs, .mrcs/.mrc, .txt list of stacks, or cryoDRGN .pkl")
    add_particle_options(p)
    p.add_argument("--check", action="store_true", help="open every image file and check indices")
    p.add_argument("--check-pixels", action="store_true", help="also read every image and check it is finite")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    path = Path(args.file)
    if path.suffix.lower() == ".mrc":
        h = mrc_header_info(path)
        if h["nx"] == h["ny"] == h["nz"] and h["nz"] > 1:
            s = {"file": str(path), "kind": "volume", "box_px": h["nx"],
                 "apix_angstrom": h["voxel_size"] or None}
            return _print(s, args.json)
    t = load_particles(path, poses=args.poses, ctf=args.ctf, particles=args.particles, datadir=args.datadir,
                       box=args.box, apix=args.apix)
    checked = args.check or args.check_pixels
    if checked:
        t.validate_images(check_pixels=args.check_pixels)
    s = t.summary()
    if checked:
        s["images_checked"] = "pixels" if args.check_pixels else "headers and indices"
    return _print(s, args.json)


def _print(s: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(s, indent=2))
    else:
        w = max(len(k) for k in s)
        for k, v in s.items():
            print(f"{k:<{w}}  {v}")
    return 0
