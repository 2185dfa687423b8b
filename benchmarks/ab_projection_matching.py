"""A/B benchmark: one projection-matching iteration of two source trees, interleaved.

Runs ``benchmarks/projection_matching.py --json`` alternately (ABAB...) with each tree on
PYTHONPATH, each in a fresh process, and reports the best of the rounds per part and the ratio
(timings on the shared 2-core machine drift between minutes; only one run compares). Make the
"before" tree with ``git worktree add /tmp/before <commit>``. Usage:

    python benchmarks/ab_projection_matching.py /tmp/before/src src [--rounds 2] [--n 4000]
        [--radius 16] [--orbit 2] [--threads 2]

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

PARTS = ("backprojection_s", "global_s", "refinement_s", "iteration_s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", help="the 'before' tree's src/ folder")
    ap.add_argument("after", help="the 'after' tree's src/ folder")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--radius", type=float, default=16.0)
    ap.add_argument("--orbit", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    script = Path(__file__).with_name("projection_matching.py")
    best: dict = {}
    for _ in range(a.rounds):
        for tree in (a.before, a.after):
            env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
            out = subprocess.run([sys.executable, str(script), "--json", "--n", str(a.n), "--radius", str(a.radius),
                                  "--orbit", str(a.orbit), "--threads", str(a.threads)],
                                 capture_output=True, text=True, env=env)
            if out.returncode:
                sys.exit(f"{tree}: {out.stderr.strip().splitlines()[-1]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            for p in PARTS:
                best[(tree, p)] = min(best.get((tree, p), row[p]), row[p])
    print(f"cpu, {a.n} particles, box 64, band {a.radius:g} shells, orbit {a.orbit}, {a.threads} threads, "
          f"best of {a.rounds} interleaved rounds; before = {a.before}, after = {a.after}")
    print("| part | before s | after s | speed-up |")
    print("|---|---|---|---|")
    for p in PARTS:
        b, f = best[(a.before, p)], best[(a.after, p)]
        print(f"| {p[:-2].replace('_', ' ')} | {b:.2f} | {f:.2f} | {b / f:.2f}× |")


if __name__ == "__main__":
    main()
