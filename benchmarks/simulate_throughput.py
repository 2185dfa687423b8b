"""Benchmark: simulation throughput (images/s written) and peak memory.

Each configuration runs in a fresh subprocess so that ru_maxrss is its own peak.
Usage: python benchmarks/simulate_throughput.py [--n 20000] [--box 128] [--threads 2]
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time, torch
from eqcryo.data.simulate import SimulationConfig, simulate
n, box, apix, snr, threads, out = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6]
torch.set_num_threads(threads)
cfg = SimulationConfig(n=n, box=box, apix=apix, seed=0, snr=None if snr == "none" else float(snr))
t0 = time.perf_counter()
simulate(cfg, out, progress=False)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(n, box, apix, snr, threads):
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(box), str(apix), snr, str(threads), d],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)) / 2 ** 20
    return r["seconds"], r["maxrss_mb"], size


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    print(f"simulation throughput, {a.threads} threads, {os.cpu_count()} CPUs visible")
    print("| box (px) | Å/px | images | SNR | seconds (incl. map) | images/s | peak RSS (MiB) | output (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for box, apix, n, snr in ((64, 6.6, a.n, "none"), (128, 3.3, a.n, "none"), (128, 3.3, a.n, "1.0"),
                              (128, 3.3, a.n // 4, "1.0")):
        dt, rss, size = run(n, box, apix, snr, a.threads)
        print(f"| {box} | {apix} | {n} | {snr} | {dt:.1f} | {n / dt:.0f} | {rss:.0f} | {size:.0f} |", flush=True)


if __name__ == "__main__":
    main()
