"""``eqcryo fsc A.mrc B.mrc``: Fourier shell correlation and resolution."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data.errors import InputError
from ..data.mrc import read_volume
from ..physics.fsc import fsc
from .common import positive_float, verb_parser


def add_parser(sub):
    p = verb_parser(sub, "fsc", "Fourier shell correlation between two maps",
                    "Compute the FSC between two maps of the same box and voxel size. Shells are rings of "
                    "round(|k|) on the centred Fourier lattice, from DC to Nyquist; the resolution at a threshold "
                    "is the first crossing, linearly interpolated in frequency (reported at 0.5 and 0.143). If the "
                    "curve never crosses, the Nyquist resolution is reported as a bound.",
                    "eqcryo fsc reconstruction.mrc gt_volume.mrc --plot fsc.png --json")
    p.add_argument("a", help="first map (.mrc)")
    p.add_argument("b", help="second map (.mrc)")
    p.add_argument("--apix", type=positive_float, help="voxel size in Å (default: from the headers)")
    p.add_argument("--mask", help="optional mask (.mrc) applied to both maps")
    p.add_argument("--plot", help="write the curve as an image (.png/.pdf)")
    p.add_argument("--json", action="store_true", help="print the curve and resolutions as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.plot and Path(args.plot).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise InputError(f"--plot {args.plot}: the plot is written as an image; give a .png, .pdf or .svg path")
    a, pa = read_volume(args.a)
    b, pb = read_volume(args.b)
    if a.shape != b.shape:
        raise InputError(f"{args.b}: box {b.shape[0]} px differs from {args.a} ({a.shape[0]} px)")
    apix = args.apix or pa or pb
    if apix is None:
        raise InputError(f"{args.a}: voxel size unknown; give --apix")
    if args.apix is None and pa and pb and abs(pa - pb) > 1e-3 * pa:
        raise InputError(f"{args.b}: voxel size {pb:.4g} Å differs from {args.a} ({pa:.4g} Å)")
    mask = None
    if args.mask:
        m, _ = read_volume(args.mask)
        if m.shape != a.shape:
            raise InputError(f"{args.mask}: mask box {m.shape[0]} differs from the maps' {a.shape[0]}")
        mask = torch.from_numpy(m).double()
    res = fsc(torch.from_numpy(a), torch.from_numpy(b), apix, mask)
    if args.plot:
        from ..evaluation.figures import plot_fsc
        plot_fsc(args.plot, [(f"{args.a} vs {args.b}", res)])
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
    else:
        print(f"resolution at FSC 0.5:   {res.resolution(0.5):.2f} Å")
        print(f"resolution at FSC 0.143: {res.resolution(0.143):.2f} Å")
        print(f"(Nyquist {2 * apix:.2f} Å)")
    return 0
