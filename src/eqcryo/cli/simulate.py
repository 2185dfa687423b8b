"""``eqcryo simulate STRUCTURE -o DIR``: simulated particle data sets with ground truth."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..data.errors import InputError
from ..data.mixture import parse_junk, parse_mix, simulate_mixture
from ..data.simulate import RECIPES, SimulationConfig, simulate
from ..data.structure import DEFAULT_STRUCTURE
from .common import fraction, nonneg_float, nonneg_int, positive_float, positive_int, verb_parser

_KEYS = ("n", "box", "apix", "snr", "defocus_lognormal")


def add_parser(sub):
    p = verb_parser(
        sub, "simulate", "simulate a particle data set from an atomic model or a map",
        "Simulate N particle images of STRUCTURE (PDB/mmCIF, plain or .gz, or an .mrc map; "
        f"'{DEFAULT_STRUCTURE}' is the bundled PDB 5NRL spliceosome) with uniform random poses on SO(3), "
        "Gaussian shifts, per-particle CTFs and optional Gaussian noise.\n\n"
        "Atomic models become molmap-style maps (each atom a Gaussian of weight Z, σ = resolution/(π√2), "
        "as ChimeraX molmap), centred on the centre of mass. SNR = mean over images of var(clean "
        "CTF-applied image) / σ²_noise (whole box); the realised SNR is measured and written to dataset.json. "
        "Random streams are separate: the same --seed with another --snr gives the same clean images, poses, "
        "shifts and CTFs.\n\n"
        "Outputs in DIR: particles.star (RELION 3.1 with true poses/CTF), particles_NNN.mrcs, gt_volume.mrc, "
        "gt_poses.pkl and ctf.pkl (cryoDRGN layout), dataset.json (every parameter, versions, measured SNR).\n\n"
        "Recipes (--recipe, see --list-recipes) set the paper's data sets at 'paper' (128 px, 100k) or "
        "'cpu' (64 px at twice the pixel size, 4000 images) scale; explicit options override them.",
        "eqcryo simulate builtin:5nrl -o sim --n 3000 --box 64 --apix 6.6 --snr 0.5 --seed 7")
    p.add_argument("structure", nargs="?",
                   help=f"atomic model or .mrc map (default {DEFAULT_STRUCTURE}, or the recipe's structure)")
    p.add_argument("-o", "--outdir", help="output folder")
    p.add_argument("--mix", metavar="STRUCTURE:N,...",
                   help="a mixture of species shuffled into one stack instead of STRUCTURE, e.g. "
                        "'builtin:5nrl:2400,70s.mrc:1600' (each species' images with the same signal variance, one "
                        "noise level); writes truth.csv (class per particle, 0 = junk) and gt_volume_K.mrc")
    p.add_argument("--junk", metavar="N|KIND:N,...",
                   help="junk images added to a --mix: N pure-noise images with the particles' std, or KIND:N for "
                        "kinds noise, edge (carbon edge), ice (a dark blob), aggregate (3-5 overlapping particles)")
    p.add_argument("--recipe", choices=sorted(RECIPES), metavar="NAME", help="a paper data set recipe")
    p.add_argument("--list-recipes", action="store_true", help="print the recipes and exit")
    p.add_argument("--n", type=positive_int, help="number of images (default 3000)")
    p.add_argument("--box", type=positive_int, help="box size in px, even (default 64)")
    p.add_argument("--apix", type=positive_float, help="pixel size in Å (default 6.6)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0)")
    p.add_argument("--resolution", type=positive_float, help="molmap resolution in Å (default 2 × apix)")
    p.add_argument("--map-apix", type=positive_float, help="voxel size (Å) of an input map whose header lacks it")
    p.add_argument("--preferred-view", type=positive_float, metavar="KAPPA",
                   help="preferred orientations: viewing directions from a von Mises-Fisher distribution of this "
                        "concentration about the map's z axis (10: 90%% of views within 40° of it); default uniform")
    p.add_argument("--trans-std", type=nonneg_float, default=20.0,
                   help="shift std per axis in Å (default 20, as the paper)")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--snr", type=positive_float, help="signal-to-noise ratio (see above)")
    noise.add_argument("--noiseless", action="store_true", help="no noise (the default without --snr)")
    p.add_argument("--no-ctf", action="store_true", help="do not apply a CTF")
    p.add_argument("--ctf-from", help="sample CTF parameters from a cryoDRGN CTF table (N, 9) .pkl")
    p.add_argument("--defocus-range", type=positive_float, nargs=2, metavar=("MIN", "MAX"),
                   help="uniform mean defocus range in Å (default 10000 25000)")
    p.add_argument("--defocus-lognormal", type=positive_float, nargs=2, metavar=("MEDIAN", "SIGMA"),
                   help="log-normal mean defocus: median Å and sigma of its log (cryoAI: 20000 0.3)")
    p.add_argument("--astigmatism-std", type=nonneg_float, default=200.0,
                   help="|dU - dV| ~ |N(0, std)| Å (default 200)")
    p.add_argument("--voltage", type=positive_float, default=300.0, help="kV (default 300)")
    p.add_argument("--cs", type=nonneg_float, default=2.7, help="spherical aberration in mm (default 2.7)")
    p.add_argument("--amplitude-contrast", type=fraction, default=0.1, help="(default 0.1)")
    p.add_argument("--chunk", type=positive_int, default=10000, help="images per .mrcs file (default 10000)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="images rendered at once; bounds memory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.list_recipes:
        for k in sorted(RECIPES):
            print(f"{k:28s} " + ", ".join(f"{a}={RECIPES[k][a]}" for a in _KEYS))
        return 0
    if not args.outdir:
        raise InputError("simulate: give the output folder with -o DIR")
    out = Path(args.outdir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: exists and is not an empty folder; simulate writes a whole data set, so choose a "
                         f"new folder (an old data set's stacks would otherwise be left beside the new one)")
    structure = args.structure
    if structure is None:
        if args.recipe and args.recipe.startswith("ribosome"):
            raise InputError(f"recipe {args.recipe}: needs a ribosome structure, which eqcryo does not bundle; pass a "
                             f"ribosome model or map as STRUCTURE (e.g. an 80S .cif/.pdb from the PDB, or an .mrc from "
                             f"the EMDB)")
        structure = DEFAULT_STRUCTURE
    cfg = SimulationConfig(structure=structure, seed=args.seed, trans_std_angstrom=args.trans_std,
                           ctf=not args.no_ctf, ctf_from=args.ctf_from, astigmatism_std_angstrom=args.astigmatism_std,
                           voltage_kv=args.voltage, cs_mm=args.cs, amplitude_contrast=args.amplitude_contrast,
                           chunk=args.chunk, batch=args.batch_size, resolution_angstrom=args.resolution,
                           map_apix=args.map_apix, preferred_view=args.preferred_view)
    if args.recipe:
        for k, v in RECIPES[args.recipe].items():
            setattr(cfg, k, v)
    for k in ("n", "box", "apix"):
        if getattr(args, k) is not None:
            setattr(cfg, k, getattr(args, k))
    if args.snr is not None:
        cfg.snr = args.snr
    if args.noiseless:
        cfg.snr = None
    if args.defocus_range:
        cfg.defocus_min_angstrom, cfg.defocus_max_angstrom = args.defocus_range
        cfg.defocus_lognormal = None
    if args.defocus_lognormal:
        cfg.defocus_lognormal = tuple(args.defocus_lognormal)
    if args.junk and not args.mix:
        raise InputError("simulate: --junk goes with --mix (a mixture of species and junk)")
    if args.mix and args.structure:
        raise InputError(f"simulate: give the species with --mix or one STRUCTURE ({args.structure}), not both")
    species = parse_mix(args.mix) if args.mix else None
    junk = parse_junk(args.junk) if args.junk else {}
    fresh = not out.exists()
    try:
        if species is not None:
            info = simulate_mixture(species, junk, cfg, args.outdir, progress=not args.no_progress)
            print(json.dumps({"outdir": args.outdir, "n": info["n"], "species": [s["n"] for s in info["species"]],
                              "junk": junk, "box": cfg.box, "apix": cfg.apix, "snr": cfg.snr}))
            return 0
        info = simulate(cfg, args.outdir, progress=not args.no_progress)
    except BaseException:
        if fresh:  # a refusal (or Ctrl-C) leaves no empty or half-written data set behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    print(json.dumps({"outdir": args.outdir, "n": cfg.n, "box": cfg.box, "apix": cfg.apix, "snr": cfg.snr,
                      "snr_measured": info["snr_measured_mean_ratio"]}))
    return 0
