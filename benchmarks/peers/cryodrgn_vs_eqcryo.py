"""eqcryo and cryoDRGN ab initio on the same simulated data, budget and threads, evaluated by one code.

    bash benchmarks/peers/setup_cryodrgn.sh                     # once: cryoDRGN in its own venv
    eqcryo simulate builtin:5nrl -o D --n 4000 --box 64 --apix 6.6 --seed 23 --noiseless
    python benchmarks/peers/cryodrgn_vs_eqcryo.py D -o cmp --budget 600 --threads 2 [--eqcryo-run RUN]

eqcryo: ``eqcryo train D/particles.star`` with its default recipe (or an existing run folder given
with ``--eqcryo-run``); its budget is training wall time (evaluation excluded). cryoDRGN:
``cryodrgn abinit D/particles_000.mrcs --ctf D/ctf.pkl --zdim 0`` (homogeneous; the simulator
writes cryoDRGN's CTF pickle), stopped when its *process* has run ``--budget`` seconds (start-up,
pose search and SGD all counted; it evaluates nothing on the way). Both processes get
``--threads`` threads (OMP/MKL and torch) and run one after the other, never together.

Evaluation, the same functions for both (``eqcryo.evaluation.metrics``): pose MSE / MedSE after the
best global alignment (hand included) of every particle's predicted rotation to the truth, and the
FSC of the aligned map against the true map. cryoDRGN writes ``pose.E.pkl`` and
``reconstruct.E.mrc`` after each epoch E; the time of a pose file is its modification time after
the process started. eqcryo's time is its first held-out evaluation below MSE 0.1 (metrics.csv),
and its final poses (``predicted_poses.pkl``, all particles) are evaluated as cryoDRGN's are.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from eqcryo.data.cryodrgn import read_pose_pkl
from eqcryo.data.mrc import read_volume
from eqcryo.evaluation.metrics import fsc_to_ground_truth, pose_metrics

HERE = Path(__file__).resolve().parent
CRYODRGN = HERE / ".venv-cryodrgn" / "bin" / "cryodrgn"


def evaluate(pose_pkl: Path, gt_pkl: Path, vol_mrc: Path | None, gt_vol: torch.Tensor, box: int, apix: float) -> dict:
    R, _ = read_pose_pkl(pose_pkl, box)
    R_gt, _ = read_pose_pkl(gt_pkl, box)
    m, al = pose_metrics(torch.from_numpy(R), torch.from_numpy(R_gt))
    out = {"pose_mse": m["pose_mse"], "pose_medse": m["pose_medse"], "fsc05_A": None}
    if vol_mrc is not None and vol_mrc.exists():
        v, _ = read_volume(vol_mrc)
        f, _ = fsc_to_ground_truth(torch.from_numpy(v).double(), gt_vol, al, apix)
        out["fsc05_A"] = f.resolution(0.5)
    return out


def run_cryodrgn(data: Path, out: Path, budget: float, threads: int, seed: int) -> float:
    """Run cryoDRGN's abinit for ``budget`` seconds of process wall time; returns its start time."""
    if not CRYODRGN.exists():
        sys.exit(f"{CRYODRGN} not found: run bash benchmarks/peers/setup_cryodrgn.sh first")
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [str(CRYODRGN), "abinit", str(data / "particles_000.mrcs"), "--ctf", str(data / "ctf.pkl"), "--zdim", "0",
           "-o", str(out), "--seed", str(seed), "--num-epochs", "1000", "--num-workers", "0"]
    print(" ".join(cmd), flush=True)
    t0 = time.time()
    with open(out / "stdout.log", "w") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            p.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    (out / "start_time.txt").write_text(f"{t0}\n")
    return t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path, help="eqcryo simulate output folder")
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=600.0, help="seconds per tool (default 600)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eqcryo-run", type=Path, help="an eqcryo run folder on this data (else one is trained)")
    ap.add_argument("--skip-cryodrgn", action="store_true", help="evaluate an existing OUT/cryodrgn")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    d = a.data
    gt_vol_np, apix = read_volume(d / "gt_volume.mrc")
    gt_vol = torch.from_numpy(gt_vol_np).double()
    box = gt_vol.shape[0]
    n = len(read_pose_pkl(d / "gt_poses.pkl", box)[0])

    run = a.eqcryo_run
    if run is None:
        run = a.out / "eqcryo"
        subprocess.run([sys.executable, "-m", "eqcryo.cli.main", "train", str(d / "particles.star"), "-o", str(run),
                        "--time-budget", str(a.budget), "--threads", str(a.threads), "--seed", str(a.seed),
                        "--gt-poses", str(d / "gt_poses.pkl"), "--gt-volume", str(d / "gt_volume.mrc"),
                        "--no-progress"], check=True)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    conv = next((r for r in rows if r["pose_mse"] and float(r["pose_mse"]) < 0.1), None)
    last = rows[-1]
    eq = evaluate(run / "predicted_poses.pkl", d / "gt_poses.pkl", run / "reconstruction.mrc", gt_vol, box, apix)
    eq_rate = float(last["images_seen"]) / max(float(last["train_seconds"]), 1e-9)

    cd = a.out / "cryodrgn"
    t0 = float((cd / "start_time.txt").read_text()) if a.skip_cryodrgn else \
        run_cryodrgn(d, cd, a.budget, a.threads, a.seed)
    epochs = sorted((int(p.name.split(".")[1]), p) for p in cd.glob("pose.*.pkl"))
    cd_first, cd_last = None, None
    for e, p in epochs:
        t = p.stat().st_mtime - t0
        ev = evaluate(p, d / "gt_poses.pkl", cd / f"reconstruct.{e}.mrc", gt_vol, box, apix)
        print(f"cryoDRGN epoch {e}: {t:.0f} s, pose MSE {ev['pose_mse']:.3f}, MedSE {ev['pose_medse']:.3f}, "
              f"FSC 0.5 {ev['fsc05_A']}", flush=True)
        cd_last = (e, t, ev)
        if cd_first is None and ev["pose_mse"] < 0.1:
            cd_first = t
    # images per second from cryoDRGN's own log: each "Will ... on K particles" announces the next
    # epoch's images, each "Epoch: E finished in H:MM:SS" closes it
    phases, images, cd_rate = [], None, None
    for line in (cd / "run.log").read_text().splitlines() if (cd / "run.log").exists() else []:
        m = re.search(r"Will (pretrain|use pose search|train) on (\d+) particles", line)
        if m:
            images = (m.group(1), int(m.group(2)))
        m = re.search(r"(Pretrain )?Epoch: (\d+) finished in (\d+):(\d+):([\d.]+)", line)
        if m and images:
            sec = int(m.group(3)) * 3600 + int(m.group(4)) * 60 + float(m.group(5))
            phases.append((images[0], images[1], sec))
            print(f"cryoDRGN epoch {m.group(2)} ({images[0]}): {images[1]} images in {sec:.0f} s = "
                  f"{images[1] / sec:.1f} images/s", flush=True)
            images = None
    if images:
        print(f"cryoDRGN: an epoch ({images[0]}, {images[1]} images) was still running at the end of the budget")
    if phases:
        cd_rate = sum(p[1] for p in phases) / sum(p[2] for p in phases)

    def fmt(x, f="{:.3f}"):
        return "—" if x is None else f.format(x)

    print()
    print(f"data: {d} ({n} particles, {box} px, {apix:.3g} Å/px); budget {a.budget:.0f} s, {a.threads} threads, "
          f"seed {a.seed}")
    print("| tool | first pose MSE < 0.1 (s) | final pose MSE / MedSE (all particles) | FSC 0.5 vs truth (Å) | images/s |")
    print("|---|---|---|---|---|")
    print(f"| eqcryo (default recipe) | {fmt(conv and float(conv['train_seconds']), '{:.0f}')} (held-out) | "
          f"{eq['pose_mse']:.3f} / {eq['pose_medse']:.3f} | {fmt(eq['fsc05_A'], '{:.1f}')} | {eq_rate:.0f} |")
    if cd_last is None:
        print("| cryoDRGN abinit | — (no epoch finished in the budget) | — | — | — |")
    else:
        ev = cd_last[2]
        print(f"| cryoDRGN abinit ({cd_last[0] + 1} epochs) | {fmt(cd_first, '{:.0f}')} | "
              f"{ev['pose_mse']:.3f} / {ev['pose_medse']:.3f} | {fmt(ev['fsc05_A'], '{:.1f}')} | {fmt(cd_rate, '{:.0f}')} |")


if __name__ == "__main__":
    main()
