"""The GPU check, in one go: whole training steps per model at 64 and 128 px (paper
profile), their FLOP rate against the device's peak, and a paper-scale convergence probe of
d4-l2 against c4-mirror. Self-contained: run it from the repository root on a GPU machine.

    python benchmarks/gpu_check.py [--device cuda] [--tf32] [--peak-tflops 495] [--probe-steps 3000]
        [--probe-n 16000] [--budget 420] [--eval-seconds 60] [--out gpu_check.md]

- Needs PyTorch with CUDA plus eqcryo's field packages (mrcfile, starfile, gemmi, roma, ...). It
  says which are missing and how to bring them (wheels: see the device README) before starting.
- Timing: CUDA is synchronised before every clock read; warm-up steps are not timed.
- images/s is for whole steps (encoder + decoder + loss + Adam, batch 64, full band); GFLOP per
  image from ``torch.utils.flop_counter`` (FFTs and grid_sample are not counted, so the fraction
  of peak is a lower bound).
- The probe simulates the paper's spliceosome at 128 px (``--probe-n`` particles) and trains each
  model with the ``paper`` recipe for ``--probe-steps`` steps or ``--budget`` seconds, evaluating
  every 60 s; it prints the held-out pose MSE over time and whether it fell below 0.1.

On a CPU with tiny sizes it checks itself: ``--device cpu --boxes 32 --probe-n 200 --probe-steps 4``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NEEDED = ["torch", "numpy", "scipy", "mrcfile", "starfile", "gemmi", "roma", "pandas", "yaml", "matplotlib", "tqdm"]


def missing_packages() -> list[str]:
    out = []
    for m in NEEDED:
        try:
            importlib.import_module(m)
        except ImportError:
            out.append(m)
    return out


def step_rate(model: str, box: int, batch: int, device: str, seconds: float) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from eqcryo.models.presets import build_model

    torch.manual_seed(0)
    m = build_model(model, "paper", box).to(device)
    opt = torch.optim.Adam(m.parameters(), lr=1e-4, amsgrad=True)
    x = torch.randn(batch, box, box, device=device)

    def step():
        loss = m(x).loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as fc:
        step()
    step()

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        step()
        n += 1
        if n % 10 == 0:
            sync()
    sync()
    dt = time.perf_counter() - t0
    return {"img_s": n * batch / dt, "gflop_img": fc.get_total_flops() / batch / 1e9}


def probe(model: str, data: Path, box: int, out: Path, device: str, steps: int, budget: float,
          eval_seconds: float) -> list[dict]:
    # the paper trains at the stack's own box: no working box below it
    cmd = [sys.executable, "-m", "eqcryo.cli.main", "train", str(data / "particles.star"), "-o", str(out),
           "--recipe", "paper", "--model", model, "--steps", str(steps), "--time-budget", str(budget),
           "--device", device, "--gt-poses", str(data / "gt_poses.pkl"), "--set", f"data.working_box={box}",
           "--set", f"evaluation.every_seconds={eval_seconds:g}", "--set", "evaluation.n_images=256", "--no-progress"]
    subprocess.run(cmd, check=True)
    import csv
    return [{k: r[k] for k in ("step", "train_seconds", "images_seen", "pose_mse")}
            for r in csv.DictReader(open(out / "metrics.csv"))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matrix products (Ampere and later)")
    ap.add_argument("--peak-tflops", type=float, default=495.0, help="the device's peak (H200 TF32: ~495)")
    ap.add_argument("--boxes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=8.0, help="timed seconds per row")
    ap.add_argument("--probe-n", type=int, default=16000)
    ap.add_argument("--probe-steps", type=int, default=3000)
    ap.add_argument("--budget", type=float, default=420.0, help="seconds per probe run")
    ap.add_argument("--eval-seconds", type=float, default=60.0, help="seconds of training between evaluations")
    ap.add_argument("--out", default="gpu_check.md")
    a = ap.parse_args()
    miss = missing_packages()
    if miss:
        print(f"missing packages: {', '.join(miss)}. Install them (pip install {' '.join(miss)}), or bring wheels "
              f"(see the device README) and put them on PYTHONPATH.", file=sys.stderr)
        return 2
    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here; use --device cpu for a self-check", file=sys.stderr)
        return 2
    if a.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(a.out)
    out.write_text("")

    def emit(*new: str) -> None:
        # appended as it goes: a run stopped by a time limit still leaves every finished row
        with out.open("a") as f:
            f.write("\n".join(new) + "\n")
        print("\n".join(new), flush=True)

    name = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "cpu"
    emit(f"# GPU check: {name}, {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, TF32 for matrix products "
         f"{torch.backends.cuda.matmul.allow_tf32}, for cuDNN convolutions {torch.backends.cudnn.allow_tf32}", "",
         "| model | box | images/s | GFLOP/img (counted) | TFLOP/s | fraction of peak |", "|---|---|---|---|---|---|")
    for box in a.boxes:
        for model in ("standard", "c4-l2", "c4-mirror", "d4-l2"):
            r = step_rate(model, box, a.batch, a.device, a.seconds)
            tf = r["img_s"] * r["gflop_img"] / 1e3
            emit(f"| {model} | {box} | {r['img_s']:.0f} | {r['gflop_img']:.2f} | {tf:.1f} | {tf / a.peak_tflops:.1%} |")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        box = max(a.boxes)
        subprocess.run([sys.executable, "-m", "eqcryo.cli.main", "simulate", "builtin:5nrl", "-o", str(data), "--n",
                        str(a.probe_n), "--box", str(box), "--apix", str(3.3 * 128 / box), "--seed", "7",
                        "--no-progress"], check=True, stdout=subprocess.DEVNULL)
        for model in ("d4-l2", "c4-mirror"):
            t0 = time.perf_counter()
            rows = probe(model, data, box, Path(tmp) / model, a.device, a.probe_steps, a.budget, a.eval_seconds)
            conv = next((r for r in rows if r["pose_mse"] and float(r["pose_mse"]) < 0.1), None)
            last = rows[-1]
            rate = float(last["images_seen"]) / max(float(last["train_seconds"]), 1e-9)
            emit("", f"probe {model}: " + json.dumps(rows), f"probe {model}: " +
                 (f"converged at step {conv['step']}, {float(conv['images_seen']):.0f} images, "
                  f"{float(conv['train_seconds']):.0f} s" if conv else "not converged") +
                 f"; {rate:.0f} images/s over {float(last['images_seen']):.0f} images; the command took "
                 f"{time.perf_counter() - t0:.0f} s")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
