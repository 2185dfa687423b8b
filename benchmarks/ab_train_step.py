"""A/B benchmark: the training step of two source trees, interleaved, on the same machine.

Timings on a shared 2-core machine drift by 10-30% between minutes, so "before" and "after" are
only comparable when measured in one run, alternating (ABAB...), each in a fresh process; the
table reports the best of the rounds of each and their ratio. Make the "before" tree with
``git worktree add /tmp/before <commit>``. Usage:

    python benchmarks/ab_train_step.py /tmp/before/src src [--rounds 3] [--models d4-l2 standard]
        [--bands full 16] [--bins 1 2] [--threads 2] [--batch 32] [--boxes 64 128] [--profile cpu]
        [--lockstep 60]

``--lockstep N``: instead of rounds of several seconds, the two trees' children live side by side
and take turns one step at a time (A, B, A, B, … N steps each, the idle one waiting on a pipe), so
each pair of steps sees the same moment of the host; reports the median step of each and the
median of the per-pair ratios. Use it when the host's speed drifts within seconds.

Each child also counts the FLOPs of one step (``torch.utils.flop_counter``: convolutions, matrix
products; FFTs, ``grid_sample`` and gathers are not counted) and the table gives GFLOP per image of
the batch and the counted GFLOP/s of each tree (a lower bound of the work done).

Both trees must have ``CryoModel.forward(images, ctf, band_radius=...)`` or the older
``model.band_radius`` attribute (both are handled). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from _timing import TIMED_LOOP

CHILD = r"""
import json, sys, time, inspect, torch
from torch.utils.flop_counter import FlopCounterMode
from eqcryo.models.presets import build_model
model, box, batch, threads, band, bin, profile = sys.argv[1:8]
box, batch, threads, bin = int(box), int(batch), int(threads), int(bin)
device = "cpu"
torch.set_num_threads(threads)
torch.manual_seed(0)
m = build_model(model, profile, box, encoder_bin=bin)
radius = None if band == "full" else float(band)
new_api = "band_radius" in inspect.signature(m.forward).parameters
if not new_api:
    m.band_radius = radius
opt = torch.optim.Adam(m.parameters(), lr=1e-4, amsgrad=True)
x = torch.randn(batch, box, box)
def step():
    out = m(x, band_radius=radius) if new_api else m(x)
    loss = out.loss.mean()
    opt.zero_grad(); loss.backward(); opt.step()
with FlopCounterMode(display=False) as fc:
    step()
gflop = fc.get_total_flops() / batch / 1e9
step(); step()
MIN_SECONDS = 3.0
""" + TIMED_LOOP + r"""
print(json.dumps({"step_s": dt / n, "gflop_img": gflop}))
"""

# --lockstep: the same set-up, then one timed step per line read from stdin
CHILD_LOCKSTEP = CHILD.split("step(); step()")[0] + r"""
step(); step(); step()
print("ready", gflop, flush=True)
for line in sys.stdin:
    if line.strip() == "q":
        break
    t0 = time.perf_counter()
    step()
    print(time.perf_counter() - t0, flush=True)
"""


def lockstep(trees: tuple[str, str], args: list[str], steps: int) -> tuple[list[float], list[float], list[float]]:
    """Per-step seconds of each tree's child, the two stepping in turn (A, B, A, B, ...), and the
    counted GFLOP per image of each."""
    procs = [subprocess.Popen([sys.executable, "-c", CHILD_LOCKSTEP, *args], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=os.path.abspath(t)))
             for t in trees]
    gflop = []
    for t, p in zip(trees, procs):
        word, _, g = p.stdout.readline().strip().partition(" ")
        if word != "ready":
            sys.exit(f"{t}: the child did not start (run it alone to see its error)")
        gflop.append(float(g))
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(2 * steps):
        j = i % 2 if (i // 2) % 2 == 0 else 1 - i % 2  # ABBA order: neither always goes first
        procs[j].stdin.write("go\n")
        procs[j].stdin.flush()
        times[j].append(float(procs[j].stdout.readline()))
    for p in procs:
        p.stdin.write("q\n")
        p.stdin.flush()
        p.wait()
    return times[0], times[1], gflop


HEADER = ("| model | box | loss band | encoder bin | before s/step | after s/step | speed-up | GFLOP/img before → after "
          "| GFLOP/s before → after | after images/s |\n|---|---|---|---|---|---|---|---|---|---|")


def row(model, box, band, bin, b, f, ratio, gb, gf, batch) -> str:
    """One line of the table: seconds per step b (before) and f (after), counted GFLOP/img gb, gf."""
    return (f"| {model} | {box} | {band} | {bin} | {b:.4f} | {f:.4f} | {ratio:.2f}× | {gb:.3f} → {gf:.3f} "
            f"| {gb * batch / b:.0f} → {gf * batch / f:.0f} | {batch / f:.0f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", help="the 'before' tree's src/ folder")
    ap.add_argument("after", help="the 'after' tree's src/ folder")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["d4-l2", "standard"])
    ap.add_argument("--bands", nargs="+", default=["full", "16"])
    ap.add_argument("--bins", nargs="+", default=["1", "2"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--boxes", "--box", nargs="+", type=int, default=[64])
    ap.add_argument("--profile", default="cpu", help="the models' width profile (cpu: voxel decoder; paper: FourierNet)")
    ap.add_argument("--lockstep", type=int, default=0, metavar="N",
                    help="N steps per tree taken in turn (ABBA), medians, instead of timed rounds")
    a = ap.parse_args()
    cases = [(m, box, band, bin) for m in a.models for box in a.boxes for band in a.bands for bin in a.bins]

    def child_args(model, box, band, bin):
        return [model, str(box), str(a.batch), str(a.threads), band, bin, a.profile]

    if a.lockstep:
        print(f"cpu, {a.profile} profile, batch {a.batch}, {a.threads} threads, {a.lockstep} steps each taken in turn "
              f"(ABBA); medians, speed-up = median of the pair ratios; before = {a.before}, after = {a.after}")
        print(HEADER)
        for case in cases:
            tb, ta, (gb, gf) = lockstep((a.before, a.after), child_args(*case), a.lockstep)
            r = statistics.median(x / y for x, y in zip(tb, ta))
            print(row(*case, statistics.median(tb), statistics.median(ta), r, gb, gf, a.batch), flush=True)
        return
    best: dict = {}
    gflop: dict = {}
    for _ in range(a.rounds):
        for case in cases:
            for tree in (a.before, a.after):
                env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
                out = subprocess.run([sys.executable, "-c", CHILD, *child_args(*case)], capture_output=True,
                                     text=True, env=env)
                if out.returncode:
                    sys.exit(f"{tree}: {out.stderr.strip().splitlines()[-1]}")
                res = json.loads(out.stdout.strip().splitlines()[-1])
                key = (case, tree)
                best[key] = min(best.get(key, res["step_s"]), res["step_s"])
                gflop[key] = res["gflop_img"]
    print(f"cpu, {a.profile} profile, batch {a.batch}, {a.threads} threads, best of {a.rounds} interleaved rounds; "
          f"before = {a.before}, after = {a.after}")
    print(HEADER)
    for case in cases:
        b, f = best[(case, a.before)], best[(case, a.after)]
        print(row(*case, b, f, b / f, gflop[(case, a.before)], gflop[(case, a.after)], a.batch))


if __name__ == "__main__":
    main()
