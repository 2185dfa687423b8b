"""Benchmark: forward+backward throughput, parameters, FLOPs and peak memory of every encoder
and decoder, at 64 and 128 px, for both profiles.

Each row runs in a fresh subprocess (own peak RSS, or peak CUDA memory on a GPU).
Usage: python benchmarks/models_throughput.py [--device cpu|cuda] [--batch 32] [--threads 2]
Prints a Markdown table (images/s = training images per second through that component).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _timing import TIMED_LOOP

CHILD = r"""
import json, resource, sys, time, torch
from torch.utils.flop_counter import FlopCounterMode
from eqcryo.models.presets import build_encoder, build_decoder
kind, name, profile, box, batch, device, threads = sys.argv[1:8]
box, batch, threads = int(box), int(batch), int(threads)
torch.set_num_threads(threads)
torch.manual_seed(0)
if kind == "encoder":
    m = build_encoder(name, profile, box).to(device)
    x = torch.randn(batch, box, box, device=device)
    def step():
        R, d = m(x)
        (R.sum() + d.sum()).backward()
else:
    m = build_decoder(name, box, profile).to(device)
    from eqcryo.physics.rotations import random_rotations
    R = random_rotations(batch).float().to(device)
    def step():
        s = m.slice(R)
        (s.real.square().mean() + s.imag.square().mean()).backward()
params = sum(p.numel() for p in m.parameters())
with FlopCounterMode(display=False) as fc:
    step()
flops = fc.get_total_flops() / batch
step()
MIN_SECONDS = 3.0
""" + TIMED_LOOP + r"""
mem = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"img_s": n * batch / dt, "params": params, "gflop_per_img": flops / 1e9, "mem_mb": mem}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    print(f"device {a.device}, batch {a.batch}, {a.threads} threads; forward + backward")
    print("| component | name | profile | box | params | GFLOP/img (fwd+bwd) | images/s | peak mem (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for profile in ("cpu", "paper"):
        for box in (64, 128):
            rows += [("encoder", n, profile, box) for n in ("standard", "c4-l2", "d4-l2")]
            rows += [("decoder", n, profile, box) for n in ("voxel", "fouriernet")]
    for kind, name, profile, box in rows:
        if kind == "decoder" and name == "voxel" and profile == "paper":
            continue  # the voxel decoder has no size knob: same as the cpu row
        out = subprocess.run([sys.executable, "-c", CHILD, kind, name, profile, str(box), str(a.batch), a.device,
                              str(a.threads)], capture_output=True, text=True)
        if out.returncode:
            print(f"| {kind} | {name} | {profile} | {box} | failed: {out.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        label = name.replace("-l2", "") if kind == "encoder" else name
        print(f"| {kind} | {label} | {profile} | {box} | {r['params']:,} | {r['gflop_per_img']:.3f} | "
              f"{r['img_s']:.0f} | {r['mem_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
