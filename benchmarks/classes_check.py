"""Score a run of ``eqcryo train --classes K`` on a simulated mixture against its truth.

    python benchmarks/classes_check.py RUN SIM [--kept kept.star]

SIM is the folder of ``eqcryo simulate --mix ... --junk ...`` (truth.csv, particles.star with the
true poses, gt_volume_K.mrc). Prints, per species, the predicted class holding most of it and its
share, the junk left out per kind, what ``eqcryo select`` kept (``--kept``), and each species'
class map's FSC against its truth after alignment through the poses (JSON, then a table).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from eqcryo.data.mrc import read_volume
from eqcryo.data.star import read_star
from eqcryo.evaluation.classes import class_agreement, class_map_fsc
from eqcryo.physics.lattice import fourier_resize_3d


def _keys(t) -> list[tuple[str, int]]:
    assert t.images is not None
    return [(os.path.realpath(p), int(i)) for p, i in zip(t.images.paths, t.images.indices)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("sim")
    p.add_argument("--kept", help="the STAR file eqcryo select wrote")
    a = p.parse_args()
    run, sim = Path(a.run), Path(a.sim)
    truth = pd.read_csv(sim / "truth.csv")
    gt = read_star(sim / "particles.star")
    pred = read_star(run / "predicted_particles.star")
    assert pred.extra is not None and gt.rotations is not None and pred.rotations is not None
    label = pred.extra["rlnClassNumber"].to_numpy().astype(int)
    if _keys(pred) != _keys(gt):
        raise SystemExit("the run's particles are not the simulation's, in the same order")
    kept = None
    if a.kept:
        chosen = set(_keys(read_star(a.kept)))
        kept = np.array([k in chosen for k in _keys(gt)])
    out = class_agreement(label, truth["class"].to_numpy(), truth["kind"].to_numpy(), kept)
    record = json.loads((run / "classes.json").read_text())
    apix = float(record["apix"])
    out["maps"] = {}
    for s, v in out["species"].items():
        c = v["class"]
        if c == 0:
            continue
        vol, _ = read_volume(run / record["maps"][c - 1])
        gt_vol, _ = read_volume(sim / f"gt_volume_{s}.mrc")
        if gt_vol.shape != vol.shape:  # the working box below the stack's: the truth Fourier-cropped to it
            gt_vol = fourier_resize_3d(torch.from_numpy(gt_vol).double(), vol.shape[0]).numpy()
        sel = np.nonzero((truth["class"].to_numpy() == s) & (label == c))[0]
        out["maps"][s] = {"class": c, **class_map_fsc(torch.from_numpy(vol).double(), torch.from_numpy(gt_vol).double(),
                                                      torch.from_numpy(pred.rotations[sel]),
                                                      torch.from_numpy(gt.rotations[sel]), apix)}
    print(json.dumps(out, indent=1, default=str))
    print("\n| species | n | its class | share in it | to junk | map FSC 0.5 vs truth | pose MSE |")
    print("|---|---|---|---|---|---|---|")
    for s, v in out["species"].items():
        m = out["maps"].get(s, {})
        r = m.get("resolution_0.5_angstrom")
        print(f"| {s} | {v['n']} | {v['class']} | {100 * v['share']:.1f}% | {100 * v['junk_share']:.1f}% | "
              f"{'-' if r is None else f'{r:.1f} Å'} | {m.get('pose_mse', float('nan')):.3f} |")
    if "junk_dropped" in out:
        print(f"\njunk left out of every class: {100 * out['junk_dropped']:.1f}% "
              + str({k: f"{100 * v:.0f}%" for k, v in out.get("junk_dropped_by_kind", {}).items()}))
    if kept is not None:
        print(f"select kept {100 * out['real_kept']:.1f}% of the real particles and "
              f"{100 * (out['junk_kept'] or 0):.1f}% of the junk")


if __name__ == "__main__":
    main()
