"""Benchmark: one projection-matching iteration (``eqcryo refine`` / ``train --refine-images``)
split into its parts — backprojection, global search, pattern-search refinement — for several
particle counts and search bands, on synthetic 64 px images of a random smooth map.

Usage:
    python benchmarks/projection_matching.py [--threads 2] [--box 64] [--n 1000 4000] [--orbit 2]
Prints a Markdown table (``--json``: one JSON line per row); the cost grows linearly in the
particle count. ``--orbit 2`` adds the in-plane half turn of every pose, as the default recipe's
rounds from the third on do. Two source trees, interleaved: ``benchmarks/ab_projection_matching.py``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from eqcryo.physics.projection import prepare_fourier_volume, project
from eqcryo.physics.rotations import random_rotations
from eqcryo.reconstruction.projection_matching import BandData, MatchConfig, reconstruct, search_poses


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 4000])
    ap.add_argument("--radius", type=float, nargs="+", default=[8.0, 16.0])
    ap.add_argument("--orbit", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="one JSON line per row instead of the table")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    L = a.box
    # a smooth random map: low-passed noise inside the inscribed sphere
    k = torch.arange(L, dtype=torch.float64) - L // 2
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    vol = torch.nn.functional.avg_pool3d(torch.randn(1, 1, L, L, L, generator=g, dtype=torch.float64), 5, 1, 2)[0, 0]
    vol = vol * ((x ** 2 + y ** 2 + z ** 2) < (L / 3) ** 2)
    if not a.json:
        print(f"box {L}, {a.threads} threads, 8192 global rotations, 6 pattern-search rounds (no CTF), orbit {a.orbit}")
        print("| particles | band (shells) | backprojection s | global search s | refinement s | iteration s | images/s |")
        print("|---|---|---|---|---|---|---|")
    for n in a.n:
        R = random_rotations(n, g)
        origin = torch.zeros(n, 2, dtype=torch.float64)
        images = torch.cat([project(vol, R[s:s + 500]) for s in range(0, n, 500)])

        def reader(ids, images=images):
            return images[ids], None
        ids = np.arange(n)
        t0 = time.perf_counter()
        v = reconstruct(reader, ids, R, origin, L)
        t_bp = time.perf_counter() - t0
        fv = prepare_fourier_volume(v, 2)
        for r in a.radius:
            band = BandData.read(reader, ids, L, r)
            t0 = time.perf_counter()
            search_poses(fv, band, R, origin, MatchConfig(radius=r, shift_step_px=0.0, refine_rounds=0, orbit=a.orbit), g)
            t_glob = time.perf_counter() - t0
            t0 = time.perf_counter()
            search_poses(fv, band, R, origin, MatchConfig(radius=r, shift_step_px=0.0, n_rotations=1, orbit=a.orbit), g)
            t_ref = time.perf_counter() - t0
            tot = t_bp + t_glob + t_ref
            if a.json:
                print(json.dumps({"n": n, "radius": r, "backprojection_s": t_bp, "global_s": t_glob,
                                  "refinement_s": t_ref, "iteration_s": tot}), flush=True)
                continue
            print(f"| {n} | {r:g} | {t_bp:.1f} | {t_glob:.1f} | {t_ref:.1f} | {tot:.1f} | {n / tot:.0f} |", flush=True)


if __name__ == "__main__":
    main()
