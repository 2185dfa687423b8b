"""``eqcryo convert INPUT -o OUTPUT``: between metadata formats, chosen by extension."""

from __future__ import annotations

from ..data.atomic import refuse_overwriting_inputs
from ..data.io import load_particles, save_metadata
from .common import add_particle_options, verb_parser


def add_parser(sub):
    p = verb_parser(sub, "convert", "convert particle metadata (STAR <-> cryoDRGN pkl, .cs -> STAR/pkl)",
                    "Read INPUT (.star RELION 3.0/3.1/5, .cs cryoSPARC, .pkl cryoDRGN poses, .mrcs with --poses/--ctf) "
                    "and write OUTPUT by its extension:\n"
                    "  .star  RELION 3.1 layout with optics table (origins in Å), importable by RELION and cryoSPARC\n"
                    "  .pkl   cryoDRGN poses (rot (N,3,3), trans (N,2) as a fraction of the box)\n"
                    "--ctf-out writes the cryoDRGN CTF array (N, 9). Nothing is written if any check fails, and "
                    "no input is ever overwritten.",
                    "eqcryo convert run_data.star -o poses.pkl --ctf-out ctf.pkl --box 300 --apix 1.035")
    p.add_argument("input", help="metadata file")
    p.add_argument("-o", "--output", required=True, help="output .star or .pkl")
    p.add_argument("--ctf-out", help="also write the CTF as a cryoDRGN .pkl")
    add_particle_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    inputs = [args.input, args.poses, args.ctf, args.particles]
    refuse_overwriting_inputs(args.output, inputs)
    if args.ctf_out:
        refuse_overwriting_inputs(args.ctf_out, inputs + [args.output])
    t = load_particles(args.input, poses=args.poses, ctf=args.ctf, particles=args.particles, datadir=args.datadir,
                       box=args.box, apix=args.apix)
    for o in (args.output, args.ctf_out):
        refuse_overwriting_inputs(o, inputs, tables=(t,))
    for f in save_metadata(args.output, t, ctf_out=args.ctf_out):
        print(f"wrote {f} ({t.n} particles)")
    return 0
