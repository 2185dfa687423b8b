"""``eqcryo train PARTICLES -o RUN``: ab initio reconstruction with an amortized pose encoder."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import sys

from ..data.errors import InputError
from ..models.presets import PRESETS
from ..training.config import (
    DEFAULT_RECIPE,
    check_device,
    describe_keys,
    list_recipes,
    make_config,
    parse_sets,
    resolve_device,
)
from ..training.distributed import init_distributed
from ..training.evaluator import held_out_summary
from ..training.rundir import RunDir, agreement_line
from ..training.trainer import Trainer, TrainingDiverged, TrainingInterrupted
from .common import nonneg_int, positive_float, positive_int, verb_parser


def _keys_text() -> str:
    return "\n".join(f"  {key:38s} {desc} [{default}]" for key, default, desc in describe_keys())


def add_parser(sub):
    p = verb_parser(
        sub, "train", "ab initio reconstruction: train an encoder (poses) and a decoder (map)",
        "Train one of the paper's models on PARTICLES (.star, .cs, or .mrcs with --ctf; even box) from images "
        "and CTFs alone. Ground truth (--gt-poses, --gt-volume) is used only to evaluate.\n\n"
        "models: standard (cryoAI CNN + symmetric loss), c4-l2, c4-mirror, d4-l2 (D4-equivariant, plain L2)\n"
        "profiles: cpu (quarter widths, voxel decoder; 64 px on 2 cores), paper (cryoAI sizes, FourierNet), "
        "or cpu-wide (cpu with D4 as many fields as C4, a diagnostic)\n\n"
        "Every eval_every seconds of training time (wall time; evaluation is timed apart) a fixed held-out subset "
        "is evaluated in eval mode: pose MSE/MedSE after global alignment (hand included), geodesic and "
        "viewing-direction errors (°), shift error (Å), and the FSC of the aligned map against --gt-volume. "
        "Converged = pose MSE < 0.1.\n\n"
        "RUN gets config.yaml, metrics.csv, tensorboard/, checkpoint.pt (atomic, every checkpoint_every s and at "
        "the end), reconstruction.mrc, predicted_particles.star + predicted_poses.pkl (branch-corrected poses "
        "for every particle), figures and report.md. --resume RUN continues a run (exactly, on CPU).\n\n"
        "What to learn and how is a recipe (--recipe NAME|FILE.yaml, see --list-recipes) plus --set SECTION.KEY=VALUE "
        "overrides; the command line keeps only where and how long to run. config.yaml holds the same sections. "
        "Recipes: without --recipe, default: the paper's amortized training at CPU scale plus projection-matching "
        "rounds from 100k images on, repeated until the search settles and distilled into the encoder; the run "
        "ends when the encoder agrees with a search in its map (no ground truth) or at the budget (docs/training.md, "
        "measured in docs/results.md). cpu-amortized is the paper's amortized method at CPU scale; one-refinement "
        "has a single refinement after 286k images; paper is the published setting (GPU scale).\n\n"
        "options (--set SECTION.KEY=VALUE; default in brackets):\n" + _keys_text(),
        "eqcryo train sim/particles.star -o run --time-budget 900 "
        "--gt-poses sim/gt_poses.pkl --gt-volume sim/gt_volume.mrc")
    p.add_argument("particles", nargs="?", help="particles (.star, .cs, .mrcs with --ctf)")
    p.add_argument("-o", "--outdir", help="run folder")
    p.add_argument("--recipe", metavar="NAME|FILE.yaml",
                   help="training recipe: a bundled name (see --list-recipes) or a YAML file of training options "
                        f"(default: {DEFAULT_RECIPE}; the published method: paper, or cpu-amortized at CPU scale)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", dest="sets",
                   help="override one option of the recipe, e.g. --set optimisation.lr=1e-3 (repeatable; the "
                        "options are listed below and in --list-recipes)")
    p.add_argument("--list-recipes", action="store_true", help="list the bundled recipes and exit")
    p.add_argument("--model", choices=list(PRESETS), help="shortcut for --set model=... (default: the recipe's, "
                                                          "else d4-l2)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN (its config.yaml is the truth; "
                                                   "--steps/--time-budget may extend it)")
    p.add_argument("--data", metavar="PARTICLES", help="with --resume: the run's particles, moved or copied "
                                                          "(checked against the run's fingerprint of its data)")
    p.add_argument("--ctf", help="cryoDRGN CTF .pkl (for .mrcs input or to replace the file's CTF)")
    p.add_argument("--no-ctf", action="store_true", default=None,
                   help="images without a CTF (CTF-free or phase-flipped); data without CTF need it")
    p.add_argument("--datadir", help="folder of the image stacks named in the metadata")
    p.add_argument("--apix", type=positive_float, help="pixel size in Å (overrides the file)")
    p.add_argument("--gt-poses", help="ground-truth poses (cryoDRGN .pkl), evaluation only")
    p.add_argument("--gt-volume", help="ground-truth map (.mrc), evaluation only (needs --gt-poses)")
    p.add_argument("--classes", type=positive_int, metavar="K",
                   help="K classes (maps) and a junk sink: several species in one stack (shortcut for --set "
                        "classes.count=K; default 1). Each class is an ab initio run of its own, then every particle "
                        "is classified; see docs/classes.md")
    p.add_argument("--steps", type=positive_int, help="stop after this many steps")
    p.add_argument("--time-budget", type=positive_float, help="stop after this many seconds of training (wall time, "
                                                     "evaluation excluded)")
    p.add_argument("--seed", type=nonneg_int, help="seed of the held-out split, the batch order and the initial "
                                            "weights (default 0)")
    p.add_argument("--invert-contrast", choices=["auto", "yes", "no"],
                   help="multiply the images by -1: auto decides from the data (a phase-flipped average must be "
                        "a positive blob; decision and score in config.yaml and the report); default auto")
    p.add_argument("--device", help="auto (default: CUDA when PyTorch sees a GPU, else CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=positive_int, help="CPU threads for PyTorch (default: PyTorch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _clean(args, fresh: bool | None) -> None:
    if fresh and not RunDir(args.outdir).has_checkpoint():
        shutil.rmtree(args.outdir, ignore_errors=True)


def run(args) -> int:
    command = " ".join(shlex.quote(a) for a in ["eqcryo", *args.argv])
    if args.list_recipes:
        for name, desc in list_recipes().items():
            print(f"{name:16s} {desc}")
        print("\noptions of a recipe or --set SECTION.KEY=VALUE (default in brackets):")
        print(_keys_text())
        return 0
    if args.resume:
        fixed = [o for o, v in (("--recipe", args.recipe), ("--set", args.sets), ("--model", args.model),
                                ("--classes", args.classes),
                                ("--no-ctf", args.no_ctf), ("--ctf", args.ctf), ("--apix", args.apix),
                                ("--gt-poses", args.gt_poses), ("--gt-volume", args.gt_volume), ("--seed", args.seed),
                                ("--invert-contrast", args.invert_contrast), ("-o", args.outdir),
                                ("PARTICLES", args.particles), ("--datadir without --data",
                                                                 args.datadir and not args.data)) if v]
        if fixed:
            raise InputError(f"train --resume: {', '.join(fixed)} cannot change a run (its config.yaml decides); "
                             f"only --steps, --time-budget, --device, --threads and --data may be given")
        # --steps / --time-budget may extend a finished run; everything else comes from the run
        moved = {"particles": os.path.abspath(args.data), "datadir": args.datadir and os.path.abspath(args.datadir)} \
            if args.data else {}
        cfg, _ = RunDir(args.resume).read_config(steps=args.steps, time_budget=args.time_budget, device=args.device,
                                                 threads=args.threads, **moved)
        if cfg.classes.count > 1:
            return _train_classes(cfg, command, RunDir(args.resume), fresh=False)
        dist, _ = init_distributed(resolve_device(cfg.compute.device))
        return _train(lambda: Trainer(cfg, resume=True, command=command, dist=dist), args, None, dist,
                      RunDir(args.resume))
    if args.data:
        raise InputError("train --data: only with --resume RUN (a new run takes PARTICLES)")
    if not args.particles or not args.outdir:
        raise InputError("train: give PARTICLES and -o RUN (or --resume RUN)")
    check_device(args.device or "auto")
    dist, _ = init_distributed(resolve_device(args.device or "auto"))
    rd = RunDir(args.outdir)
    if rd.has_checkpoint():
        raise InputError(f"{args.outdir}: already holds a run; use --resume {args.outdir} or another folder")
    if rd.path.exists() and (not rd.path.is_dir() or (any(f.name != RunDir.LOCK for f in rd.path.iterdir())
                                                     and not rd.is_run())):
        raise InputError(f"{args.outdir}: exists and is not a run folder (files of yours would be replaced); "
                         f"choose a new or empty folder")
    fresh = not rd.path.exists()
    dist.barrier()  # every rank has looked at the folder before rank 0 makes it
    sets = parse_sets(args.sets)
    if args.model:  # (into the section: a `--set model.profile=...` beside it is kept)
        sets.setdefault("model", {})["name"] = args.model
    if args.classes is not None:
        sets.setdefault("classes", {})["count"] = args.classes
    cfg = make_config(args.recipe or DEFAULT_RECIPE, sets, particles=args.particles, out=args.outdir, ctf=args.ctf,
                      datadir=args.datadir, apix=args.apix, data__no_ctf=args.no_ctf, gt_poses=args.gt_poses,
                      gt_volume=args.gt_volume,
                      steps=args.steps, time_budget=args.time_budget, seed=args.seed, device=args.device,
                      threads=args.threads, invert_contrast=args.invert_contrast)
    if cfg.classes.count > 1:
        if dist.active:
            raise InputError("train --classes: several classes run in one process (not under torchrun) for now")
        return _train_classes(cfg, command, rd, fresh)
    return _train(lambda: Trainer(cfg, command=command, dist=dist), args, fresh, dist, rd)


def _train_classes(cfg, command: str, rd: RunDir, fresh: bool) -> int:
    """A run of several classes (:mod:`eqcryo.training.classes`) in ``rd``; a new folder that a
    failure leaves without any ab initio checkpoint is removed."""
    from ..training.classes import ClassRun

    try:
        with rd.locked():
            run = ClassRun(cfg, command)
            if not rd.is_run():
                rd.write_config(cfg, {"classes": cfg.classes.count, "n_particles": run.table.n})
            summary = run.run()
    except TrainingInterrupted as e:
        print(f"eqcryo train: {e}", file=sys.stderr)
        return 128 + e.signum
    except BaseException:
        if fresh and not any((p / RunDir.CHECKPOINT).exists() for p in rd.path.glob("ab_initio_*")):
            shutil.rmtree(rd.path, ignore_errors=True)
        raise
    print(json.dumps(summary))
    print(f"classes: {summary['members']} particles, junk {summary['junk']}; report: {rd / RunDir.REPORT}")
    return 0


def _train(make, args, fresh: bool | None, dist, rd: RunDir) -> int:
    """Build and run (under torchrun: this rank's part) while holding the run folder's lock (rank 0);
    a new folder that a failure leaves without a checkpoint is removed."""
    held = False
    try:
        with rd.locked() if dist.is_main else contextlib.nullcontext():
            held = True
            if fresh is not None and rd.has_checkpoint():  # another run got here between our look and the lock
                held = False
                raise InputError(f"{rd.path}: already holds a run; use --resume {rd.path} or another folder")
            trainer = make()
            summary = trainer.run(progress=not args.no_progress)
        dist.barrier()  # the others wait for rank 0's outputs, then all leave the group together
    except TrainingDiverged as e:
        _clean(args, fresh)
        raise InputError(str(e)) from None
    except TrainingInterrupted as e:
        print(f"eqcryo train: {e}", file=sys.stderr)
        return 128 + e.signum
    except BaseException:
        if dist.is_main and held:  # (never a folder that another process holds)
            _clean(args, fresh)
        raise
    finally:
        dist.shutdown()
    if not dist.is_main:
        return 0
    print(json.dumps({k: v for k, v in summary.items() if k != "provenance"}))  # (in config.yaml and the report)
    if trainer.last_eval is not None:
        print(f"last evaluation: {trainer.last_eval.row['train_seconds']:.0f} s of training, "
              f"{trainer.last_eval.row['images_seen']} images; {held_out_summary(trainer.last_eval)}")
    conv = summary.get("converged")
    if conv:
        budget = trainer.cfg.optimisation.time_budget_seconds
        spare = "" if not budget else \
            f" ({max(0.0, 100 * (1 - conv['train_seconds'] / budget)):.0f}% of the {budget:.0f} s budget to spare)"
        print(f"converged (first held-out pose MSE < 0.1) at {conv['train_seconds']:.0f} s of training, "
              f"step {conv['step']}, {conv['images_seen']} images{spare}")
    elif trainer.gt.R is not None:
        print("not converged in this budget (no evaluation with held-out pose MSE < 0.1)")
    print(agreement_line(trainer.cfg.evaluation.stop_match_mse, summary.get("agreement"),
                         trainer.run_dir.metric_rows()).replace("**", ""))
    print(f"report: {trainer.run_dir / RunDir.REPORT}")
    return 0
