"""One markdown row per finished run folder: when it first converged, where it ended, how it stopped.

    python tools/seed_table.py RUN [RUN ...] [--images N]

Columns: the run, its seed, the first held-out pose MSE < 0.1 (training seconds and images;
from metrics.csv), the last evaluation's MSE / MedSE and FSC 0.5 against the truth, the half-map
FSC 0.143 (masked, no ground truth), the refinement rounds (images at each), how the run ended
(at the budget, or earlier by the no-ground-truth agreement rule), its training seconds, and its
speed over the first evaluation interval (images per second: how fast the machine was for this
run; the host's speed can change between runs). Then the convergence rate and the median time to
converge over the converged runs. ``--images N`` also counts the runs converged within N images
(a budget that does not depend on the machine's speed).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

import yaml


def row(run: Path) -> dict:
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    s = json.loads((run / "summary.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    opt = cfg.get("optimisation") if isinstance(cfg.get("optimisation"), dict) else None  # (sections, or flat)
    seed, budget = (opt["seed"], opt["time_budget_seconds"]) if opt else (cfg.get("seed"), cfg.get("time_budget"))
    first = next((r for r in rows if r.get("pose_mse") and float(r["pose_mse"]) < 0.1), None)
    last = rows[-1]
    first_eval = next((r for r in rows if float(r["train_seconds"]) > 0), last)
    halves = json.loads((run / "fsc_halfmaps.json").read_text()) if (run / "fsc_halfmaps.json").exists() else {}
    ref = json.loads((run / "refinement.json").read_text()) if (run / "refinement.json").exists() else {}
    rounds = [r["images_seen"] // 1000 for r in ref.get("rounds", [])]
    return {"run": str(run), "seed": seed,
            "t_conv": None if first is None else float(first["train_seconds"]),
            "img_conv": None if first is None else int(first["images_seen"]),
            "mse": float(last["pose_mse"]), "medse": float(last["pose_medse"]),
            "fsc05": last.get("resolution_0.5_angstrom") or None,
            "half0143": (halves.get("masked") or {}).get("resolution_0.143"),
            "rounds": rounds, "agreement": s.get("agreement", s.get("stopped_early")),  # (its name before 9da5cd6)
            "budget": budget, "train_seconds": s["train_seconds"],
            "speed": int(first_eval["images_seen"]) / float(first_eval["train_seconds"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--images", type=int, help="also count the runs converged within this many images")
    args = ap.parse_args()
    unfinished = [p for p in args.runs if not (p / "summary.json").exists()]
    for p in unfinished:  # a run still training (or never started) has no summary yet
        print(f"skipped {p}: no summary.json (unfinished)", file=sys.stderr)
    runs = [row(p) for p in args.runs if p not in unfinished]
    if not runs:
        sys.exit("no finished runs among the folders given")
    print("| run | seed | first MSE < 0.1: s (images) | final MSE / MedSE | FSC 0.5 vs truth (Å) | half-maps 0.143 "
          "(Å) | refinements (k images) | ended | training s | img/s, first eval |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        conv = "—" if r["t_conv"] is None else f"{r['t_conv']:.0f} ({r['img_conv'] // 1000}k)"
        fsc = "—" if not r["fsc05"] else f"{float(r['fsc05']):.1f}"
        half = "—" if r["half0143"] is None else f"{r['half0143']:.1f}"
        a = r["agreement"]
        ended = "budget" if r["budget"] and r["train_seconds"] >= r["budget"] else \
            f"agreement at {a['train_seconds']:.0f} s" if a else "steps"
        print(f"| {r['run']} | {r['seed']} | {conv} | {r['mse']:.3f} / {r['medse']:.3f} | {fsc} | {half} | "
              f"{', '.join(map(str, r['rounds'])) or '—'} | {ended} | {r['train_seconds']:.0f} | {r['speed']:.0f} |")
    t = [r["t_conv"] for r in runs if r["t_conv"] is not None]
    med = f", median {statistics.median(t):.0f} s (range {min(t):.0f}–{max(t):.0f})" if t else ""
    print(f"\nconverged: {len(t)} of {len(runs)}{med}")
    if args.images:
        n = [r["img_conv"] for r in runs if r["img_conv"] is not None and r["img_conv"] <= args.images]
        med_n = f", median {statistics.median(n) / 1000:.0f}k images" if n else ""
        print(f"converged within {args.images // 1000}k images: {len(n)} of {len(runs)}{med_n}")


if __name__ == "__main__":
    main()
