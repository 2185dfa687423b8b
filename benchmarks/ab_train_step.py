"""A/B benchmark: the training step of two source trees, interleaved, on the same machine.

Timings on a shared 2-core machine drift by 10-30% between minutes, so "before" and "after" are
only comparable when measured in one run, alternating (ABAB...), each in a fresh process; the
table reports the best of the rounds of each and their ratio. Make the "before" tree with
``git worktree add /tmp/before <commit>``. Usage:

    python benchmarks/ab_train_step.py /tmp/before/src src [--rounds 3] [--models d4-l2 standard]
        [--bands full 16] [--bins 1 2] [--threads 2] [--batch 32] [--box 64] [--lockstep 60]

``--lockstep N``: instead of rounds of several seconds, the two trees' children live side by side
and take turns one step at a time (A, B, A, B, … N steps each, the idle one waiting on a pipe), so
each pair of steps sees the same moment of the host; reports the median step of each and the
median of the per-pair ratios. Use it when the host's speed drifts within seconds.

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
from eqcryo.models.presets import build_model
model, box, batch, threads, band, bin = sys.argv[1:7]
box, batch, threads, bin = int(box), int(batch), int(threads), int(bin)
device = "cpu"
torch.set_num_threads(threads)
torch.manual_seed(0)
m = build_model(model, "cpu", box, encoder_bin=bin)
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
step(); step()
MIN_SECONDS = 3.0
""" + TIMED_LOOP + r"""
print(json.dumps({"step_s": dt / n}))
"""

# --lockstep: the same set-up, then one timed step per line read from stdin
CHILD_LOCKSTEP = CHILD.split("step(); step()")[0] + r"""
step(); step(); step()
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "q":
        break
    t0 = time.perf_counter()
    step()
    print(time.perf_counter() - t0, flush=True)
"""


def lockstep(trees: tuple[str, str], args: list[str], steps: int) -> tuple[list[float], list[float]]:
    """Per-step seconds of each tree's child, the two stepping in turn (A, B, A, B, ...)."""
    procs = [subprocess.Popen([sys.executable, "-c", CHILD_LOCKSTEP, *args], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=os.path.abspath(t)))
             for t in trees]
    for t, p in zip(trees, procs):
        if p.stdout.readline().strip() != "ready":
            sys.exit(f"{t}: the child did not start (run it alone to see its error)")
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
    return times


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
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--lockstep", type=int, default=0, metavar="N",
                    help="N steps per tree taken in turn (ABBA), medians, instead of timed rounds")
    a = ap.parse_args()
    if a.lockstep:
        print(f"cpu, batch {a.batch}, box {a.box}, {a.threads} threads, {a.lockstep} steps each taken in turn "
              f"(ABBA); medians; before = {a.before}, after = {a.after}")
        print("| model | loss band | encoder bin | before s/step | after s/step | speed-up (median of pair ratios) "
              "| after images/s |")
        print("|---|---|---|---|---|---|---|")
        for model in a.models:
            for band in a.bands:
                for bin in a.bins:
                    tb, ta = lockstep((a.before, a.after), [model, str(a.box), str(a.batch), str(a.threads), band,
                                                            bin], a.lockstep)
                    b, f = statistics.median(tb), statistics.median(ta)
                    r = statistics.median(x / y for x, y in zip(tb, ta))
                    print(f"| {model} | {band} | {bin} | {b:.4f} | {f:.4f} | {r:.2f}× | {a.batch / f:.0f} |",
                          flush=True)
        return
    best: dict = {}
    for _ in range(a.rounds):
        for model in a.models:
            for band in a.bands:
                for bin in a.bins:
                    for tree in (a.before, a.after):
                        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
                        out = subprocess.run([sys.executable, "-c", CHILD, model, str(a.box), str(a.batch),
                                              str(a.threads), band, bin], capture_output=True, text=True, env=env)
                        if out.returncode:
                            sys.exit(f"{tree}: {out.stderr.strip().splitlines()[-1]}")
                        s = json.loads(out.stdout.strip().splitlines()[-1])["step_s"]
                        key = (model, band, bin, tree)
                        best[key] = min(best.get(key, s), s)
    print(f"cpu, batch {a.batch}, box {a.box}, {a.threads} threads, best of {a.rounds} interleaved rounds; "
          f"before = {a.before}, after = {a.after}")
    print("| model | loss band | encoder bin | before s/step | after s/step | speed-up | after images/s |")
    print("|---|---|---|---|---|---|---|")
    for model in a.models:
        for band in a.bands:
            for bin in a.bins:
                b, f = best[(model, band, bin, a.before)], best[(model, band, bin, a.after)]
                print(f"| {model} | {band} | {bin} | {b:.3f} | {f:.3f} | {b / f:.2f}× | {a.batch / f:.0f} |")


if __name__ == "__main__":
    main()
