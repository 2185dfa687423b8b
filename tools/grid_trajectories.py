"""Every run of an experiment grid at a few training times: one markdown row per model, one cell
per seed, each cell the held-out pose MSE / MedSE at the evaluations nearest to the given times.

    python tools/grid_trajectories.py EXPERIMENT_DIR DATASET [--times 120 240 360 420 480]

Reads the grid's ``grid.json`` and each run's ``metrics.csv``; a run without ``summary.json``
(not finished) is shown as such. A cell ends with the first evaluation below MSE 0.1 (the report's threshold), if any.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eqcryo.experiments.report import CONVERGED
from eqcryo.training.rundir import RunDir


def cell(run: Path, times: list[float]) -> tuple[str, bool]:
    """One run's cell and whether it converged (the report's threshold, ``CONVERGED``)."""
    rd = RunDir(run)
    if rd.read_summary() is None:
        return "(not finished)", False
    rows = [r for r in rd.metric_rows() if r.get("pose_mse") not in (None, "")]
    if not rows:
        return "(no pose MSE: no ground truth?)", False
    pts = []
    for t in times:
        r = min(rows, key=lambda r: abs(float(r["train_seconds"]) - t))
        pts.append(f"{float(r['pose_mse']):.2f}/{float(r['pose_medse']):.2f}")
    first = next((r for r in rows if float(r["pose_mse"]) < CONVERGED), None)
    if first:
        pts.append(f"**< {CONVERGED:g} at {float(first['train_seconds']):.0f} s**")
    return ", ".join(pts), first is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", type=Path)
    ap.add_argument("dataset")
    ap.add_argument("--times", type=float, nargs="+", default=[120, 240, 360, 420, 480])
    a = ap.parse_args()
    grid = [g for g in json.loads((a.experiment / "grid.json").read_text()) if g["dataset"] == a.dataset]
    if not grid:
        raise SystemExit(f"{a.experiment}/grid.json: no runs of data set {a.dataset!r}")
    seeds = sorted({g["seed"] for g in grid})
    print(f"held-out pose MSE / MedSE at {', '.join(f'{t:g}' for t in a.times)} s of training")
    print("| model | " + " | ".join(f"seed {s}" for s in seeds) + " | converged |")
    print("|---|" + "---|" * (len(seeds) + 1))
    for m in dict.fromkeys(g["model"] for g in grid):
        cells, conv, done = [], 0, 0
        for s in seeds:
            g = next((g for g in grid if g["model"] == m and g["seed"] == s), None)
            if g is None:
                cells.append("–")
                continue
            path = Path(g["path"])  # as written by `eqcryo experiment` (relative to where it ran)
            if not path.exists():
                path = a.experiment / "runs" / path.name
            text, ok = cell(path, a.times)
            cells.append(text)
            done += text != "(not finished)"
            conv += ok
        print(f"| {m} | " + " | ".join(cells) + f" | {conv} of {done} |")


if __name__ == "__main__":
    main()
