"""Wall time and peak memory of a run's stages at 64, 128 and 256 px.

    python benchmarks/stack_sizes.py [--boxes 64 128 256] [--n 2000] [--steps 200] [--threads 2]
    python benchmarks/stack_sizes.py --boxes 128 --n 100000 --round-after 3200 --finish-iters 1 \
        --workdir big      # a large set: one projection-matching round (on its subset) as well

For each box: simulate ``--n`` images of the bundled spliceosome (the physical size of the
64 px / 6.6 Å set: apix = 6.6 × 64 / box, SNR 1), then, each in a fresh process (peak RSS of
that process alone):

1. ``eqcryo train`` for ``--steps`` steps of the default recipe with the finish off: ab initio at
   the working box (64 px) reading the stack Fourier-cropped: images/s and peak RSS; with
   ``--round-after N`` a projection-matching round after N images (it searches at most
   ``refinement.max_particles`` of them), then the encoder's poses for every particle;
2. the gold-standard finish from the true poses turned by 3° (a converged ab initio's poses are a
   few degrees off), ``--finish-iters`` iterations and the final reconstruction at the stack's
   box: seconds per iteration, the box each one used, the resolution, peak RSS.

Times are wall seconds on whatever else the machine runs: run it alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FINISH = r"""
import json, math, sys, time, resource
import numpy as np, torch
from eqcryo.data.io import load_particles
from eqcryo.data.dataset import ParticleDataset
from eqcryo.data.cryodrgn import read_pose_pkl
from eqcryo.physics.rotations import axis_angle_to_matrix
from eqcryo.reconstruction.gold_standard import FinishConfig, gold_standard_finish
d, iters, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
t = load_particles(d + "/particles.star")
ds = ParticleDataset(t, "cpu")
L, apix = ds.input_box, ds.input_apix
R, tr = read_pose_pkl(d + "/gt_poses.pkl", L)
R = torch.from_numpy(R).double()
o = torch.zeros(len(R), 2, dtype=torch.float64) if tr is None else torch.from_numpy(tr * apix)
g = torch.Generator().manual_seed(0)
ax = torch.randn(len(R), 3, generator=g, dtype=torch.float64)
R0 = axis_angle_to_matrix(ax / ax.norm(dim=1, keepdim=True) * math.radians(3.0)) @ R
def read_at(b):
    dsb = ds.at_box(b)
    def reader(ids):
        c = dsb.ctf(ids)
        return dsb.read_images(ids, scaled=False).float(), None if c is None else c.cpu()
    return reader
t0 = time.perf_counter()
out = gold_standard_finish(read_at, t.n, L, apix, R0, o, min(L, 64), 2 * apix * L / min(L, 64),
                           FinishConfig(max_iters=iters), log=lambda m: None)
print(json.dumps({"seconds": time.perf_counter() - t0, "iterations": out.iterations,
                  "resolution": out.fsc.resolution,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_rss_run(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB of the child, its stdout) of one command in a fresh process."""
    wrapper = ("import resource, subprocess, sys, json; p = subprocess.run(sys.argv[1:], capture_output=True, "
               "text=True); sys.stderr.write(p.stderr[-2000:] if p.returncode else ''); "
               "print(json.dumps({'rc': p.returncode, 'out': p.stdout, "
               "'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, check=True)
    r = json.loads(p.stdout.strip().splitlines()[-1])
    if r["rc"]:
        raise SystemExit(f"failed ({r['rc']}): {' '.join(cmd)}\n{p.stderr}")
    return time.perf_counter() - t0, r["rss"], r["out"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boxes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--finish-iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--round-after", type=int, default=None, help="a projection-matching round after this "
                    "many images (default: none within --steps)")
    ap.add_argument("--workdir", default=None, help="keep the simulations and runs here (a simulation already "
                    "there is used again); default: a temporary folder")
    a = ap.parse_args()
    extra = [] if a.round_after is None else ["--set", f"refinement.start_images={a.round_after}"]
    eq = [sys.executable, "-m", "eqcryo.cli.main"]
    print("| box | apix (Å) | stack MiB | ab initio images/s | ab initio peak RSS MiB | finish s "
          "(per iteration: box) | final reconstruction s | half-maps (Å) | finish peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    with contextlib.ExitStack() as stack_ctx:
        tmp = a.workdir or stack_ctx.enter_context(tempfile.TemporaryDirectory())
        for box in a.boxes:
            apix = 6.6 * 64 / box
            d = Path(tmp) / f"sim{box}"
            if not (d / "particles.star").exists():
                subprocess.run(eq + ["simulate", "builtin:5nrl", "-o", str(d), "--n", str(a.n), "--box", str(box),
                                     "--apix", f"{apix:.4f}", "--seed", "41", "--snr", "1", "--no-progress"],
                               check=True, stdout=subprocess.DEVNULL)
            stack = sum(f.stat().st_size for f in d.glob("*.mrcs")) / 2 ** 20
            run = Path(tmp) / f"run{box}"
            shutil.rmtree(run, ignore_errors=True)
            _, rss_train, out = peak_rss_run(eq + ["train", str(d / "particles.star"), "-o", str(run), "--steps",
                                                   str(a.steps), "--threads", str(a.threads), "--no-progress",
                                                   "--set", "refinement.finish=no", *extra])
            s = json.loads((run / "summary.json").read_text())
            rate = s["images_seen"] / s["train_seconds"]
            _, rss_fin, out = peak_rss_run([sys.executable, "-c", FINISH, str(d), str(a.finish_iters),
                                            str(a.threads)])
            f = json.loads(out.strip().splitlines()[-1])
            its = [h for h in f["iterations"] if h.get("iteration", 0) > 0]
            final = next(h for h in f["iterations"] if h.get("final"))
            per = ", ".join(f"{h['seconds']:.0f}: {h['box']}" for h in its)
            res = "none" if f["resolution"] is None else f"{f['resolution']:.1f}"
            print(f"| {box} | {apix:.2f} | {stack:.0f} | {rate:.0f} | {rss_train:.0f} | {per} | "
                  f"{final['seconds']:.0f} | {res} | {rss_fin:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
