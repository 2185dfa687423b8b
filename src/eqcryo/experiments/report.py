"""The paper's tables from a grid of runs (``eqcryo experiment report DIR``).

Table 1 (per data set × model): final pose MSE and MedSE, convergence time (s) and steps (first
evaluation with MSE < 0.1), resolution at FSC 0.5, % of seeds converged; mean ± std over the 3
best seeds by final MSE, and a dash for time/steps when one of those 3 did not converge.
Table 2 (SNR sweep): per data set with an ``snr`` and model, the best seed.
Failure-mode indicators (not in the paper): per data set × model, the mean over all seeds of the
images seen, the lowest MSE any evaluation reached, the final median geodesic error and the
final mirror score (App. G's spurious planar symmetry; logged with ``track_mirror: true``), and
the final pose MSE on as many training particles as held-out ones (memorisation shows as a
training error well below the held-out one).
Runs: one row per finished run (images to MSE < 0.1, how the run ended, final and lowest MSE,
training-set error, resolution), the per-seed numbers behind the tables.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..training.rundir import RunDir
from .grid import GridRun, read_grid, recorded_spec, run_status

__all__ = ["RunResult", "read_run", "run_finished", "aggregate", "table1_markdown", "table2_markdown",
           "diagnostics_markdown", "runs_markdown", "write_report"]

CONVERGED = 0.1


@dataclass
class RunResult:
    dataset: str
    model: str
    seed: int
    mse: float
    medse: float
    resolution: float
    conv_seconds: float | None
    conv_step: int | None
    images_seen: float = math.nan  # at the last evaluation
    min_mse: float = math.nan  # the lowest pose MSE of any evaluation
    geodesic_deg: float = math.nan  # final median geodesic error
    mirror_score: float = math.nan  # final best mirror-plane correlation of the map
    train_mse: float = math.nan  # final pose MSE on a sample of training particles
    train_medse: float = math.nan  # final pose MedSE on the same sample
    conv_images: float | None = None  # images seen at the first evaluation with MSE < 0.1
    ended_by: str = ""  # "agreement rule at N images" when the run's own rule ended it, else ""


def _f(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def read_run(path: Path, dataset: str, model: str, seed: int) -> RunResult | None:
    """Final metrics and convergence of one run folder (None if it has no evaluation yet)."""
    rows = [r for r in RunDir(path).metric_rows() if r.get("pose_mse") not in (None, "")]
    if not rows:
        return None
    conv = next((r for r in rows if _f(r["pose_mse"]) < CONVERGED), None)
    last = rows[-1]
    summary = RunDir(path).read_summary() or {}
    agreement = summary.get("agreement")
    ended_by = ""
    if agreement and summary.get("images_seen") is not None:
        ended_by = f"agreement rule at {summary['images_seen']:,} images"
    elif agreement:
        ended_by = "agreement rule"
    return RunResult(dataset, model, seed, _f(last["pose_mse"]), _f(last["pose_medse"]),
                     _f(last.get("resolution_0.5_angstrom")),
                     None if conv is None else _f(conv["train_seconds"]),
                     None if conv is None else int(_f(conv["step"])),
                     _f(last.get("images_seen")), min(_f(r["pose_mse"]) for r in rows),
                     _f(last.get("geodesic_median_deg")), _f(last.get("mirror_score")),
                     _f(last.get("train_pose_mse")), _f(last.get("train_pose_medse")),
                     None if conv is None else _f(conv.get("images_seen")), ended_by)


def _ms(vals, fmt):
    a = np.array(vals, dtype=float)
    if len(a) == 1:
        return fmt.format(a[0])
    return f"{fmt.format(a.mean())} ± {fmt.format(a.std(ddof=0))}"


def aggregate(results: list[RunResult], best: int = 3) -> list[dict]:
    """Table-1 rows: one per (dataset, model) in first-seen order."""
    keys = []
    for r in results:
        if (r.dataset, r.model) not in keys:
            keys.append((r.dataset, r.model))
    rows = []
    for ds, m in keys:
        rs = sorted([r for r in results if (r.dataset, r.model) == (ds, m)], key=lambda r: r.mse)
        top = rs[:best]
        conv_all = all(r.conv_seconds is not None for r in top)
        rows.append({
            "dataset": ds, "model": m, "seeds": len(rs), "best_seeds": [r.seed for r in top],
            "mse": _ms([r.mse for r in top], "{:.4f}"), "medse": _ms([r.medse for r in top], "{:.4f}"),
            "conv_seconds": _ms([r.conv_seconds for r in top], "{:.0f}") if conv_all else "–",
            "conv_steps": _ms([r.conv_step for r in top], "{:.0f}") if conv_all else "–",
            "resolution": _ms([r.resolution for r in top], "{:.2f}"),
            "converged_pct": 100.0 * sum(r.conv_seconds is not None for r in rs) / len(rs),
        })
    return rows


def table1_markdown(rows: list[dict]) -> str:
    out = ["| dataset | model | MSE | MedSE | conv. time (s) | steps to conv. | resolution (Å) | converged |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['dataset']} | {r['model']} | {r['mse']} | {r['medse']} | {r['conv_seconds']} | "
                   f"{r['conv_steps']} | {r['resolution']} | {r['converged_pct']:.0f}% ({r['seeds']} seeds) |")
    return "\n".join(out)


def table2_markdown(results: list[RunResult], snr: dict[str, float]) -> str:
    out = ["| SNR | model | MSE | conv. time (s) | resolution (Å) |", "|---|---|---|---|---|"]
    for ds in sorted(snr, key=lambda d: -snr[d]):
        for m in dict.fromkeys(r.model for r in results if r.dataset == ds):
            b = min((r for r in results if r.dataset == ds and r.model == m), key=lambda r: r.mse)
            t = "–" if b.conv_seconds is None else f"{b.conv_seconds:.0f}"
            out.append(f"| {snr[ds]} | {m} | {b.mse:.4f} | {t} | {b.resolution:.2f} |")
    return "\n".join(out)


def diagnostics_markdown(results: list[RunResult]) -> str:
    """Per (dataset, model), means over all its seeds; "n/a" where a column was not logged."""
    def mean(vals, fmt):
        a = np.array(vals, dtype=float)
        return "n/a" if np.isnan(a).all() else fmt.format(np.nanmean(a))

    out = ["| dataset | model | seeds | images seen | lowest MSE reached | median geodesic error (°) | mirror score "
           "| training-set MSE |", "|---|---|---|---|---|---|---|---|"]
    for ds, m in dict.fromkeys((r.dataset, r.model) for r in results):
        rs = [r for r in results if (r.dataset, r.model) == (ds, m)]
        out.append(f"| {ds} | {m} | {len(rs)} | {mean([r.images_seen for r in rs], '{:.0f}')} | "
                   f"{mean([r.min_mse for r in rs], '{:.3f}')} | {mean([r.geodesic_deg for r in rs], '{:.1f}')} | "
                   f"{mean([r.mirror_score for r in rs], '{:.3f}')} | {mean([r.train_mse for r in rs], '{:.3f}')} |")
    return "\n".join(out)


def runs_markdown(results: list[RunResult]) -> str:
    """One row per run, in the given order: the per-seed numbers behind Tables 1 and 2."""
    def num(x, fmt):
        return "n/a" if x is None or math.isnan(x) else fmt.format(x)

    out = ["| dataset | model | seed | images seen | images to MSE < 0.1 | ended by | MSE / MedSE | lowest MSE "
           "| training-set MSE / MedSE | resolution (Å) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        conv = "–" if r.conv_seconds is None else num(r.conv_images, "{:,.0f}")
        out.append(f"| {r.dataset} | {r.model} | {r.seed} | {num(r.images_seen, '{:,.0f}')} | {conv} | "
                   f"{r.ended_by or 'budget'} | {r.mse:.3f} / {r.medse:.3f} | {r.min_mse:.3f} | "
                   f"{num(r.train_mse, '{:.3f}')} / {num(r.train_medse, '{:.3f}')} | {num(r.resolution, '{:.1f}')} |")
    return "\n".join(out)


def run_finished(run: GridRun, spec: dict | None) -> bool:
    """Whether grid cell ``run`` has finished: by the grid's own rule with the spec (its budget
    reached, or ended by its agreement rule), else by having a summary.json (written only when
    training ends)."""
    if spec is not None:
        return run_status(run, spec) == "done"
    return RunDir(run.path).read_summary() is not None


def write_report(out_dir: str | os.PathLike, spec: dict | None = None) -> str:
    """Collect every finished run of a grid folder; write ``table1.md/.csv`` (and ``table2.md``);
    return Markdown. Unfinished runs are left out, and the count of them is said. ``spec``
    defaults to the one the grid was run with (DIR/experiment.json)."""
    out = Path(out_dir)
    grid = read_grid(out)
    spec = spec if spec is not None else recorded_spec(out)
    finished = [g for g in grid if run_finished(g, spec)]
    results = [r for r in (read_run(g.path, g.dataset, g.model, g.seed) for g in finished) if r]
    rows = aggregate(results)
    md = "## Table 1\n\n" + table1_markdown(rows) + "\n"
    if len(finished) < len(grid):  # a grid run in pieces: a half-trained run is not a result
        md = (f"{len(grid) - len(finished)} of {len(grid)} runs are not finished (still training, "
              f"interrupted or not started) and are left out of the tables.\n\n") + md
    with open(out / "table1.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["dataset"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "best_seeds": " ".join(map(str, r["best_seeds"]))})
    snr = {} if spec is None else {k: v["snr"] for k, v in spec["datasets"].items() if v.get("snr") is not None}
    if snr:
        md += "\n## Table 2 (SNR sweep, best seed)\n\n" + table2_markdown(results, snr) + "\n"
    md += "\n## Failure-mode indicators (mean over all seeds)\n\n" + diagnostics_markdown(results) + "\n"
    md += "\n## Runs (finished, one row each)\n\n" + runs_markdown(results) + "\n"
    (out / "report.md").write_text(md)
    return md
