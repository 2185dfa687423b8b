"""``eqcryo backproject PARTICLES -o VOL.mrc``: fixed-pose reconstruction with half-maps and FSC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.atomic import atomic_path, refuse_overwriting_inputs
from ..data.dataset import ParticleDataset
from ..data.errors import InputError
from ..data.io import load_particles
from ..data.mrc import write_volume
from ..physics.fsc import format_resolution, fsc
from ..reconstruction.backprojection import backproject_halves
from ..reconstruction.contrast import orient_contrast
from .common import add_particle_options, dumps, nonneg_int, positive_float, positive_int, verb_parser


def add_parser(sub):
    p = verb_parser(
        sub, "backproject", "reconstruct a map from particles with known poses",
        "Fourier-space backprojection with Wiener-style CTF correction: V = Σ CTF·F / (Σ CTF² + λ), "
        "λ = --wiener × the mean of Σ CTF² over the sampled sphere, 2× oversampled lattice with trilinear "
        "weights and gridding correction. Particles are split into two random halves (RELION's "
        "rlnRandomSubset when present) to give half-maps and their FSC (the 'gold standard' resolution).\n\n"
        "Writes VOL.mrc (all particles), VOL_half1.mrc, VOL_half2.mrc, VOL_fsc.json (curve, resolution at "
        "0.5 and 0.143 in Å) and VOL_fsc.png. Poses and CTF come from PARTICLES or --poses/--ctf.",
        "eqcryo backproject sim/particles.star -o bp.mrc")
    p.add_argument("particles", help=".star, .cs, or .mrcs with --poses and --ctf")
    p.add_argument("-o", "--output", required=True, help="output map (.mrc)")
    add_particle_options(p, particles_option=False)
    p.add_argument("--wiener", type=positive_float, default=0.01, help="relative Wiener regulariser (default 0.01)")
    p.add_argument("--no-ctf", "--no-ctf-correction", dest="no_ctf_correction", action="store_true",
                   help="images without a CTF (CTF-free or phase-flipped): no CTF correction")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per batch")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the half split (default 0)")
    p.add_argument("--no-half-maps", action="store_true", help="only the full map")
    p.add_argument("--invert-contrast", choices=["auto", "yes", "no"], default="auto",
                   help="multiply the images by -1: auto decides from the data (default auto)")
    p.set_defaults(func=run)


def run(args) -> int:
    out = Path(args.output)
    stem = out.with_suffix("")
    outs = [out] + ([] if args.no_half_maps else [Path(f"{stem}_half1.mrc"), Path(f"{stem}_half2.mrc"),
                                                    Path(f"{stem}_fsc.json"), Path(f"{stem}_fsc.png")])
    ins = [args.particles, args.poses, args.ctf]
    for o in outs:
        refuse_overwriting_inputs(o, ins)
    t = load_particles(args.particles, poses=args.poses, ctf=args.ctf, datadir=args.datadir, box=args.box,
                       apix=args.apix)
    if t.rotations is None:
        raise InputError(f"{args.particles}: no poses; give them with --poses")
    if t.images is None:
        raise InputError(f"{args.particles}: no images referenced")
    if t.ctf is None and not args.no_ctf_correction:
        raise InputError(f"{args.particles}: no CTF parameters; give --ctf CTF.pkl, or --no-ctf for images without "
                         f"a CTF (CTF-free or phase-flipped)")
    for o in outs:
        refuse_overwriting_inputs(o, ins, tables=(t,))
    L = t.validate_images()
    apix = t.pixel_size()
    shifts_px = np.zeros((t.n, 2)) if t.shifts_angstrom is None else t.shifts_angstrom / apix
    if t.extra is not None and "rlnRandomSubset" in t.extra and set(np.unique(t.extra["rlnRandomSubset"])) == {1, 2}:
        half = t.extra["rlnRandomSubset"].to_numpy() - 1
    else:
        half = np.random.default_rng(args.seed).permutation(t.n) % 2
    ds = ParticleDataset(t, dtype=torch.float64)
    orient_contrast(ds, args.invert_contrast)
    batches = tqdm(ds.batches(np.arange(t.n), args.batch_size), desc="backproject", unit="batch",
                   total=-(-t.n // args.batch_size))
    bps = backproject_halves(batches, L, torch.from_numpy(t.rotations), torch.from_numpy(shifts_px), half,
                             ctf_correction=not args.no_ctf_correction)
    full = bps[0].merged(bps[1]).reconstruct(args.wiener)
    write_volume(out, full.float().numpy(), apix)
    print(f"wrote {out} ({t.n} particles, {L} px, {apix:.4g} Å/px)")
    if not args.no_half_maps:
        h1, h2 = bps[0].reconstruct(args.wiener), bps[1].reconstruct(args.wiener)
        write_volume(outs[1], h1.float().numpy(), apix)
        write_volume(outs[2], h2.float().numpy(), apix)
        r = fsc(h1, h2, apix)
        d = r.to_dict()
        d["n_half1"], d["n_half2"] = int((half == 0).sum()), int((half == 1).sum())
        with atomic_path(outs[3]) as tmp:
            tmp.write_text(dumps(d, indent=2) + "\n")
        from ..evaluation.figures import plot_fsc
        plot_fsc(f"{stem}_fsc.png", [("half-maps", r)])
        why = r.diagnosis()
        print(f"half-map FSC: {format_resolution(r.resolution(0.5))} at 0.5, "
              f"{format_resolution(r.resolution(0.143))} at 0.143 "
              f"-> {outs[3]}" + (f" ({why})" if why else ""))
    return 0
