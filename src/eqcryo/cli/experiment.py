"""``eqcryo experiment SPEC.yaml -o DIR`` and ``eqcryo experiment report DIR``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..data.errors import InputError
from ..experiments.grid import load_spec, read_grid, recorded_spec, run_grid
from ..experiments.report import run_finished, write_report
from .common import nonneg_int, positive_int, verb_parser


def add_parser(sub):
    p = verb_parser(sub, "experiment", "run a grid of data sets × models × seeds; tabulate it like the paper",
                    "eqcryo experiment SPEC.yaml -o DIR [--jobs N] [--only INDEX]\n"
                    "    runs every (data set, model, seed) of SPEC as an ordinary `eqcryo train` folder under\n"
                    "    DIR/runs/; finished runs are skipped, interrupted ones resumed; --jobs runs several at\n"
                    "    once (threads split); --only runs one cell (0-based, see DIR/grid.json) for a\n"
                    "    scheduler's array job.\n"
                    "eqcryo experiment report DIR [--spec SPEC.yaml]\n"
                    "    writes the paper's Table 1 (mean ± std over the 3 best seeds by final MSE, a dash when one\n"
                    "    of them did not converge) and, for data sets with an `snr`, Table 2 (best seed), as\n"
                    "    DIR/report.md and DIR/table1.csv, plus pose-error curves of every seed and FSC curves.\n"
                    "The SPEC format is documented in eqcryo/experiments/grid.py and docs/experiments.md.",
                    "eqcryo experiment grid.yaml -o exp --jobs 2 && eqcryo experiment report exp --spec grid.yaml")
    p.add_argument("target", help="SPEC.yaml, or the word 'report'")
    p.add_argument("dir", nargs="?", help="with 'report': the experiment folder")
    p.add_argument("-o", "--outdir", help="experiment folder (for a SPEC)")
    p.add_argument("--spec", help="with 'report': the spec (for the budget and the SNR labels; default: the one "
                                   "the grid was run with, recorded in DIR/experiment.json)")
    p.add_argument("--jobs", type=positive_int, default=1, help="runs at once (default 1)")
    p.add_argument("--launcher", choices=["local", "slurm"],
                   help="run each cell as a job through submitit: local processes (at most --jobs at once; "
                        "waited for), or a Slurm job array (submitted; check with --status). Default: the cells "
                        "in this process, one after another (or --jobs local processes)")
    p.add_argument("--status", action="store_true", help="with an experiment folder: print the cells' table")
    p.add_argument("--figures", action="store_true",
                   help="with an experiment folder: convergence curves (pose MSE against images and against "
                        "seconds, median and range of the finished seeds) per data set, as "
                        "DIR/convergence_*.png, and DIR/memorisation.png (held-out against training-set error)")
    p.add_argument("--slurm-partition", help="Slurm partition")
    p.add_argument("--slurm-gpus-per-job", type=nonneg_int, default=0, help="GPUs per cell (default 0)")
    p.add_argument("--slurm-time", type=positive_int, default=60, metavar="MINUTES",
                   help="time limit per cell in minutes (default 60); the run saves a checkpoint at the "
                        "limit's SIGTERM and the next submission resumes it")
    p.add_argument("--only", type=int, help="run only this grid index")
    p.add_argument("--threads", type=int, help="(internal) threads per run")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.target == "report":
        if not args.dir:
            raise InputError("experiment report: give the experiment folder")
        spec = load_spec(args.spec) if args.spec else None
        print(write_report(args.dir, spec))
        _figures(Path(args.dir))
        return 0
    if args.status:
        return _status(Path(args.target))
    if args.figures:
        for f in convergence_figures(Path(args.target)):
            print(f"wrote {f}")
        return 0
    if not args.outdir:
        raise InputError("experiment: give the output folder with -o DIR")
    if args.launcher or args.jobs > 1:
        from ..experiments.launch import SlurmOptions, launch

        rows = launch(args.target, args.outdir, args.launcher or "local", jobs=args.jobs,
                      slurm=SlurmOptions(args.slurm_partition, args.slurm_gpus_per_job, args.slurm_time))
        _print_table(rows)
        failed = [r for r in rows if r["state"] == "failed"]
        if args.launcher == "slurm":
            print(f"submitted; follow with: eqcryo experiment {args.outdir} --status (logs in "
                  f"{Path(args.outdir) / 'logs'})")
        return 1 if failed and args.launcher != "slurm" else 0
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    from ..training.trainer import TrainingInterrupted

    try:
        status = run_grid(args.target, args.outdir, only=args.only, progress=not args.no_progress,
                          threads=args.threads)
    except TrainingInterrupted as e:  # Ctrl-C or a signal: the running cell saved a checkpoint
        print(f"eqcryo experiment: {e}; or rerun this command: finished cells are skipped and "
              f"this one resumes", file=sys.stderr)
        return 128 + e.signum  # as `train`: a scheduler reads 143 as stopped by SIGTERM (preempted)
    # what this command did to each cell it reached (a cell's status *before*: "interrupted" = resumed)
    print(json.dumps({"runs": len(status), "started": status.count("new"),
                      "resumed": status.count("interrupted"), "already_done": status.count("done")}))
    return 0


def convergence_figures(d: Path) -> list[Path]:
    """DIR/convergence_<data set>_{images,seconds}.png: every model's seeds as a median and a band;
    DIR/snr_sweep.png (the same against images, one panel per SNR level) when the spec gives two or
    more data sets an ``snr``; DIR/memorisation.png (held-out against training-set pose MSE per data
    set and model) when the runs logged ``train_pose_mse``."""
    from ..evaluation.figures import model_colours, plot_convergence, plot_memorisation, plot_snr_sweep
    from ..training.rundir import RunDir

    grid, spec = read_grid(d), recorded_spec(d)
    done = [g for g in grid if run_finished(g, spec)]  # a half-trained seed would cut every band short
    if len(done) < len(grid):
        print(f"{len(grid) - len(done)} of {len(grid)} runs are not finished and are left out of the figures")
    written = []
    # a model keeps its colour in every data set's figure, whichever models have finished runs there
    colours = model_colours(g.model for g in grid)
    gap: dict[str, list] = {}
    by_images: dict[str, dict] = {}
    for ds in dict.fromkeys(g.dataset for g in done):
        runs = [(g.model, RunDir(g.path).read_metrics()) for g in done if g.dataset == ds]
        for xkey, label, name in (("images_seen", "images seen", "images"),
                                  ("train_seconds", "training time (s, wall)", "seconds")):
            curves: dict[str, list] = {}
            for model, mm in runs:
                if "pose_mse" in mm:
                    curves.setdefault(model, []).append((mm[xkey], mm["pose_mse"]))
            if curves:
                out = d / f"convergence_{ds}_{name}.png"
                plot_convergence(out, curves, label, colours=colours)
                written.append(out)
                if name == "images":
                    by_images[ds] = curves
        for model, mm in runs:
            if "pose_mse" in mm and np.isfinite(mm.get("train_pose_mse", np.nan)).any():
                gap.setdefault(f"{ds} {model}", []).append(
                    (mm["images_seen"], {"held-out": (mm["pose_mse"], mm["pose_medse"]),
                                         "training": (mm["train_pose_mse"], mm["train_pose_medse"])}))
    snr = {ds: spec["datasets"][ds].get("snr") for ds in by_images} if spec else {}
    swept = sorted((ds for ds in by_images if snr.get(ds) is not None), key=lambda ds: -snr[ds])
    if len(swept) > 1:  # the paper's Table 2 as curves, the SNR levels side by side
        out = d / "snr_sweep.png"
        plot_snr_sweep(out, {f"SNR {snr[ds]:g}": by_images[ds] for ds in swept}, colours=colours)
        written.append(out)
    if gap:
        out = d / "memorisation.png"
        plot_memorisation(out, gap)
        written.append(out)
    if not written:
        raise InputError(f"{d}: no run has evaluations with ground truth (pose_mse) yet")
    return written


def _figures(d: Path) -> None:
    """Pose-error curves per (data set, model) for every seed; FSC of the best d4-l2 vs standard."""
    from ..evaluation.figures import plot_series
    from ..experiments.report import read_run
    from ..training.rundir import RunDir

    grid = read_grid(d)
    for ds in dict.fromkeys(g.dataset for g in grid):
        for m in dict.fromkeys(g.model for g in grid):
            series = []
            for g in grid:
                mm = RunDir(g.path).read_metrics() if g.dataset == ds and g.model == m else {}
                if "pose_mse" in mm:
                    series += [(f"seed {g.seed} MSE", mm["train_seconds"], mm["pose_mse"]),
                               (f"seed {g.seed} MedSE", mm["train_seconds"], mm["pose_medse"])]
            if series:
                plot_series(d / f"pose_error_{ds}_{m}.png", series, "pose error", hline=0.1)
        curves = []
        for m in ("d4-l2", "standard"):
            found = [(read_run(g.path, ds, m, g.seed), g) for g in grid if g.dataset == ds and g.model == m]
            rs = [(r, g, RunDir(g.path).read_fsc()) for r, g in found if r is not None]
            rs = [x for x in rs if x[2] is not None]
            if rs:
                r, g, fsc = min(rs, key=lambda x: x[0].mse)
                curves.append((f"{m} seed {g.seed}", fsc))
        if curves:
            from ..evaluation.figures import plot_fsc
            plot_fsc(d / f"fsc_best_{ds}.png", curves)


def _print_table(rows: list[dict]) -> None:
    print("| cell | data set | model | seed | state | attempts | training s | pose MSE |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = "" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        m = "" if r["pose_mse"] is None else f"{r['pose_mse']:.3f}"
        print(f"| {r['index']} | {r['dataset']} | {r['model']} | {r['seed']} | {r['state']} | {r['attempts']} | "
              f"{t} | {m} |")


def _status(d: Path) -> int:
    """The cells of the experiment in folder ``d`` (its grid.json and the spec it was run with)."""
    from ..experiments.launch import cell_table

    read_grid(d)  # an experiment folder, or a clear error
    spec = recorded_spec(d)
    if spec is None:
        raise InputError(f"{d / 'experiment.json'}: no spec recorded, or its file is gone; the cells' states "
                         f"need the spec they were run with")
    _print_table(cell_table(d, spec))
    return 0
