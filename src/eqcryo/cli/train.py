"""``eqcryo train PARTICLES -o RUN``: ab initio reconstruction with an amortized pose encoder."""

from __future__ import annotations

import json
from pathlib import Path

from ..data.errors import InputError
from ..models.presets import PRESETS, PROFILES
from ..training.trainer import TrainConfig, Trainer, TrainingDiverged
from .common import verb_parser


def add_parser(sub):
    p = verb_parser(
        sub, "train", "ab initio reconstruction: train an encoder (poses) and a decoder (map)",
        "Train one of the paper's models on PARTICLES (.star, .cs, or .mrcs with --ctf; even box) from images "
        "and CTFs alone. Ground truth (--gt-poses, --gt-volume) is used only to evaluate.\n\n"
        "models: standard (cryoAI CNN + symmetric loss), c4-l2, c4-mirror, d4-l2 (D4-equivariant, plain L2)\n"
        "profiles: cpu (quarter widths, voxel decoder; 64 px on 2 cores), paper (cryoAI sizes, FourierNet), "
        "or cpu-wide (cpu with D4 as many fields as C4, a diagnostic)\n\n"
        "Every --eval-every seconds of training time (evaluation time is not counted) a fixed held-out subset "
        "is evaluated in eval mode: pose MSE/MedSE after global alignment (hand included), geodesic and "
        "viewing-direction errors (°), shift error (Å), and the FSC of the aligned map against --gt-volume. "
        "Converged = pose MSE < 0.1.\n\n"
        "RUN gets config.yaml, metrics.csv, tensorboard/, checkpoint.pt (atomic, every --checkpoint-every s and at "
        "the end), reconstruction.mrc, predicted_particles.star + predicted_poses.pkl (branch-corrected poses "
        "for every particle), figures and report.md. --resume RUN continues a run (exactly, on CPU).\n\n"
        "On a CPU, make the low-resolution phase cheap with --lowpass-start (the loss and the decoder then "
        "work on the band only) and --encoder-bin 2; --view-prior 1 keeps the predicted viewing directions "
        "from collapsing onto one axis (assumes roughly uniform orientations). A run that stalls (pose MSE ~2.5-3.4) "
        "can be finished by projection matching: --refine-images N (then distilled into "
        "the encoder; --distill-band 16 then makes those steps cheaper) or `eqcryo refine` on its predicted poses. "
        "See docs/training.md for what these reach: on a 2-core CPU, with these options and "
        "--refine-images 286000 --distill-band 16, d4-l2 first reached pose MSE < 0.1 at 873 and 887 s (two "
        "seeds) of a 900 s budget.",
        "eqcryo train sim/particles.star -o run --model d4-l2 --profile cpu --time-budget 900 "
        "--gt-poses sim/gt_poses.pkl --gt-volume sim/gt_volume.mrc")
    p.add_argument("particles", nargs="?", help="particles (.star, .cs, .mrcs)")
    p.add_argument("-o", "--outdir", help="run folder")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN (other options are taken from it)")
    p.add_argument("--ctf", help="cryoDRGN CTF .pkl (for .mrcs input or to replace the file's CTF)")
    p.add_argument("--datadir", help="folder of the image stacks named in the metadata")
    p.add_argument("--apix", type=float, help="pixel size in Å (overrides the file)")
    p.add_argument("--gt-poses", help="ground-truth poses (cryoDRGN .pkl), evaluation only")
    p.add_argument("--gt-volume", help="ground-truth map (.mrc), evaluation only")
    p.add_argument("--model", default="d4-l2", help=f"one of {', '.join(PRESETS)} (default d4-l2)")
    p.add_argument("--profile", default="cpu", help=f"one of {', '.join(PROFILES)} (default cpu)")
    p.add_argument("--decoder", choices=["voxel", "fouriernet"], help="override the profile's decoder")
    p.add_argument("--so3", choices=["gram_schmidt", "svd"], default="gram_schmidt",
                   help="6-D -> SO(3) map of the standard encoder (equivariant encoders always use SVD)")
    p.add_argument("--encoder-bin", type=int,
                   help="average BIN×BIN pixel blocks before the encoder (exactly C4/D4 equivariant; "
                        "default: the profile's)")
    p.add_argument("--steps", type=int, help="stop after this many steps")
    p.add_argument("--time-budget", type=float, help="stop after this many seconds of training time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64, help="(default 64)")
    p.add_argument("--lr", type=float, default=1e-4, help="encoder learning rate, Adam/amsgrad (default 1e-4)")
    p.add_argument("--lr-decoder", type=float, help="decoder learning rate (default: --lr)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    p.add_argument("--eval-every", type=float, default=60.0, help="seconds of training time between evaluations")
    p.add_argument("--eval-n", type=int, default=256, help="held-out particles for evaluation (default 256)")
    p.add_argument("--checkpoint-every", type=float, default=300.0, help="seconds between checkpoints")
    p.add_argument("--lowpass-start", type=float,
                   help="frequency marching: start the loss at this many Fourier shells (e.g. 8) and widen it "
                        "linearly to Nyquist over --lowpass-images training images (default: full band)")
    p.add_argument("--lowpass-images", type=int, default=50000, help="images over which the band reaches Nyquist")
    p.add_argument("--view-prior", type=float, default=0.0,
                   help="weight of a uniform-orientation prior on each batch's predicted viewing directions "
                        "(beyond the paper; 0 = off; see docs/training.md)")
    p.add_argument("--track-mirror", action="store_true",
                   help="log the map's best mirror-plane correlation (spurious symmetry) at each evaluation")
    p.add_argument("--refine-images", type=int,
                   help="semi-amortized refinement (beyond the paper): after this many training images, run "
                        "projection matching from the encoder's poses, set the voxel decoder to its map and "
                        "train the encoder towards the refined poses (default: off; see docs/training.md)")
    p.add_argument("--refine-iters", type=int, default=3, help="projection-matching iterations (default 3)")
    p.add_argument("--refine-radius", type=float, default=16.0,
                   help="Fourier shells the pose search compares (default 16)")
    p.add_argument("--distill", type=float, default=1.0,
                   help="weight of the pull towards the refined poses after --refine-images (default 1)")
    p.add_argument("--distill-band", type=float,
                   help="after --refine-images, hold the loss band at this many Fourier shells (cheaper steps; "
                        "default: the --lowpass schedule goes on)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.resume:
        # --steps / --time-budget may extend a finished run; everything else comes from the run
        cfg = TrainConfig.from_run(args.resume, steps=args.steps, time_budget=args.time_budget)
        trainer = Trainer(cfg, resume=True)
    else:
        if not args.particles or not args.outdir:
            raise InputError("train: give PARTICLES and -o RUN (or --resume RUN)")
        if Path(args.outdir, "checkpoint.pt").exists():
            raise InputError(f"{args.outdir}: already holds a run; use --resume {args.outdir} or another folder")
        cfg = TrainConfig(particles=args.particles, out=args.outdir, ctf=args.ctf, datadir=args.datadir,
                          gt_poses=args.gt_poses, gt_volume=args.gt_volume, model=args.model, profile=args.profile,
                          decoder=args.decoder, so3=args.so3, encoder_bin=args.encoder_bin, steps=args.steps, time_budget=args.time_budget,
                          seed=args.seed, batch_size=args.batch_size, lr=args.lr, lr_decoder=args.lr_decoder,
                          device=args.device, threads=args.threads, eval_every=args.eval_every, eval_n=args.eval_n,
                          checkpoint_every=args.checkpoint_every, apix=args.apix,
                          lowpass_start=args.lowpass_start, lowpass_images=args.lowpass_images,
                          track_mirror=args.track_mirror, view_prior=args.view_prior,
                          refine_images=args.refine_images, refine_iters=args.refine_iters,
                          refine_radius=args.refine_radius, distill=args.distill, distill_band=args.distill_band)
        trainer = Trainer(cfg)
    try:
        summary = trainer.run(progress=not args.no_progress)
    except TrainingDiverged as e:
        raise InputError(str(e)) from None
    print(json.dumps(summary))
    print(f"report: {Path(trainer.out) / 'report.md'}")
    return 0
