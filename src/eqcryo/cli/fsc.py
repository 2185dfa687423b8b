"""``eqcryo fsc A.mrc B.mrc``: Fourier shell correlation and resolution."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.atomic import refuse_overwriting_inputs
from ..data.errors import InputError
from ..data.mrc import read_volume
from ..physics.fsc import format_resolution, fsc
from ..physics.projection import flip_hand
from .common import dumps, positive_float, verb_parser


def add_parser(sub):
    p = verb_parser(sub, "fsc", "Fourier shell correlation between two maps",
                    "Compute the FSC between two maps of the same box and voxel size. Shells are rings of "
                    "round(|k|) on the centred Fourier lattice, from DC to Nyquist; the resolution at a threshold "
                    "is the first crossing, linearly interpolated in frequency (reported at 0.5 and 0.143). If the "
                    "curve never crosses, the Nyquist resolution is reported as a bound; if it starts below the "
                    "threshold "
                    "(or is negative) no resolution is reported, and the message says why. The maps are also "
                    "compared with A's contrast inverted and A in the other hand: when one of those agrees far better, "
                    "that is said, with its resolution (an inverted contrast or a mirror-image reconstruction).",
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
    refuse_overwriting_inputs(args.plot, [args.a, args.b, args.mask])
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
    ta, tb = torch.from_numpy(a).double(), torch.from_numpy(b).double()
    res = fsc(ta, tb, apix, mask)
    # Is B explained better by A with inverted contrast and/or in the other hand?
    variants = {"contrast of A inverted": -ta, "hand of A flipped (z -> -z)": flip_hand(ta),
                "contrast of A inverted and hand flipped": -flip_hand(ta)}
    best, best_res = None, res
    for name, v in variants.items():
        r = fsc(v, tb, apix, mask)
        if r.low_frequency_correlation() > max(0.3, best_res.low_frequency_correlation() + 0.2):
            best, best_res = name, r
    if args.plot:
        from ..evaluation.figures import plot_fsc
        curves = [(f"{args.a} vs {args.b}", res)] + ([(f"{best}", best_res)] if best else [])
        plot_fsc(args.plot, curves)
    why = res.diagnosis()
    out = res.to_dict()
    out["diagnosis"] = why
    if best:
        out["corrected"] = {"operation": best, **best_res.to_dict()}
    if args.json:
        print(dumps(out, indent=2))
        return 0
    for t in (0.5, 0.143):
        print(f"resolution at FSC {t}:{' ' * (6 - len(str(t)))}"
              + format_resolution(res.resolution(t), none=f"none ({why})"))
    print(f"(Nyquist {2 * apix:.2f} Å)")
    if best:
        print(f"with the {best} the maps agree: resolution at FSC 0.5 {format_resolution(best_res.resolution(0.5))}, "
              f"at 0.143 {format_resolution(best_res.resolution(0.143))}")
    return 0
