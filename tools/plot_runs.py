"""Held-out pose MSE against training time for several run folders, in one figure.

    python tools/plot_runs.py RUN [RUN ...] -o FIGURE.png [--label LABEL ...]

Each line is one run's metrics.csv (the evaluations of `eqcryo train`); the dotted line is the
convergence threshold (pose MSE 0.1). Labels default to the run folders' paths; runs given the same
label (e.g. the seeds of one model) share a colour and one legend entry.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from eqcryo.evaluation.figures import plot_series


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("-o", "--output", required=True, type=Path)
    ap.add_argument("--label", action="append", help="one per run, in order (repeat a label to group runs)")
    ap.add_argument("--title", help="a title above the plot")
    a = ap.parse_args()
    if a.label and len(a.label) != len(a.runs):
        raise SystemExit(f"{len(a.label)} labels for {len(a.runs)} runs")
    series = []
    for i, run in enumerate(a.runs):
        rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("pose_mse")]
        if not rows:
            raise SystemExit(f"{run}/metrics.csv: no evaluation with a pose MSE (no --gt-poses?)")
        series.append((a.label[i] if a.label else str(run), [float(r["train_seconds"]) for r in rows],
                       [float(r["pose_mse"]) for r in rows]))
    plot_series(a.output, series, "held-out pose MSE", logy=True, hline=0.1, title=a.title)
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
