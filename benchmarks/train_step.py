"""Benchmark: one full training step (encoder + decoder + loss, forward + backward + Adam) for
the settings of docs/training.md: full band vs band-limited loss (frequency marching) and the
binned encoder input; with ``--hypotheses 1,2,4,8`` the cost of K pose hypotheses (d4-l2, bin 2).

Each row runs in a fresh subprocess. Usage:
    python benchmarks/train_step.py [--device cpu|cuda] [--batch 32] [--threads 2] [--box 64]
    python benchmarks/train_step.py --hypotheses 1,2,4,8
    python benchmarks/train_step.py --bf16 [--rounds 2]   # encoder trunk float32 vs bfloat16, interleaved
    python benchmarks/train_step.py --compile [--rounds 2]  # encoder trunk eager vs torch.compile, interleaved
    python benchmarks/train_step.py --distill [--rounds 2] # poses-only distillation steps, simulated share 0 / 0.5
Prints a Markdown table (images/s = training images per second).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _timing import TIMED_LOOP

CHILD = r"""
import json, sys, time, torch
from eqcryo.models.presets import build_model
model, profile, box, batch, device, threads, band, bin, K = sys.argv[1:10]
variant = sys.argv[10] if len(sys.argv) > 10 else "fp32"   # fp32 | bf16 | compile
box, batch, threads, bin, K = int(box), int(batch), int(threads), int(bin), int(K)
torch.set_num_threads(threads)
torch.manual_seed(0)
m = build_model(model, profile, box, encoder_bin=bin, hypotheses=K).to(device)
m.encoder.bf16 = variant == "bf16"
if variant == "compile":  # the convolutional trunk through TorchInductor; compiled in the warm-up steps
    if hasattr(m.encoder, "trunk"):
        m.encoder.trunk.compile()
    else:
        m.encoder.features = torch.compile(m.encoder.features)
radius = None if band == "full" else float(band)
opt = torch.optim.Adam(m.parameters(), lr=1e-4, amsgrad=True)
x = torch.randn(batch, box, box, device=device)
def step():
    loss = m(x, band_radius=radius).loss.mean()
    opt.zero_grad(); loss.backward(); opt.step()
step(); step()
MIN_SECONDS = 4.0
""" + TIMED_LOOP + r"""
print(json.dumps({"img_s": n * batch / dt, "step_s": dt / n}))
"""


# A poses-only distillation step as the trainer takes it (Trainer.distillation_batch): the first
# `share` of the batch rendered from the decoder's map at random poses plus noise of a given
# spectrum, every image turned in-plane, the encoder pulled to the (turned) targets.
CHILD_DISTILL = r"""
import json, math, sys, time, torch
from eqcryo.models.autoencoder import ModelOutput
from eqcryo.models.presets import build_model
from eqcryo.physics.group import in_plane_turn, turn_images
from eqcryo.physics.rotations import random_rotations
from eqcryo.training.refinement import Refinement
profile, box, batch, device, threads, share = sys.argv[1:7]
box, batch, threads, share = int(box), int(batch), int(threads), float(share)
torch.set_num_threads(threads)
torch.manual_seed(0)
m = build_model("d4-l2", profile, box, encoder_bin=2).to(device)
ref = Refinement(1, 16.0, 1.0, 0)
ref.noise_psd = torch.ones(box, box) * box ** 2  # white, unit variance per pixel
opt = torch.optim.Adam(m.encoder.parameters(), lr=1e-4, amsgrad=True)
x = torch.randn(batch, box, box, device=device)
R_t, d_t = random_rotations(batch, dtype=torch.float32).to(device), torch.zeros(batch, 2, device=device)
gen = torch.Generator().manual_seed(0)
n_sim = int(round(share * batch))
def step():
    images, R = x, R_t
    if n_sim:
        with torch.no_grad():
            R_s = random_rotations(n_sim, gen, dtype=torch.float32).to(device)
            sim = m.render(R_s, d_t[:n_sim]) + ref.simulate_noise(n_sim, gen).to(device)
        images, R = torch.cat([sim, x[n_sim:]]), torch.cat([R_s, R_t[n_sim:]])
    g = in_plane_turn(2 * math.pi * torch.rand(batch, generator=gen)).to(device)
    out = m(turn_images(images, g), poses_only=True)
    loss = ref.pose_distance(out, R, d_t, g)
    opt.zero_grad(); loss.backward(); opt.step()
step(); step()
MIN_SECONDS = 4.0
""" + TIMED_LOOP + r"""
print(json.dumps({"img_s": n * batch / dt, "step_s": dt / n}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--hypotheses", help="comma-separated K: time d4-l2 (bin 2) with K pose hypotheses instead")
    ap.add_argument("--bf16", action="store_true", help="time the encoder trunk in float32 and in bfloat16 instead")
    ap.add_argument("--compile", action="store_true",
                    help="time the encoder trunk eager and through torch.compile instead")
    ap.add_argument("--rounds", type=int, default=2,
                    help="with --bf16/--compile/--distill: alternating rounds (the best is kept)")
    ap.add_argument("--distill", action="store_true",
                    help="time poses-only distillation steps (d4-l2, bin 2) with 0 and half of each batch simulated")
    a = ap.parse_args()
    if a.distill:
        print(f"device {a.device}, batch {a.batch}, {a.threads} threads, box {a.box}, profile {a.profile}, d4-l2, "
              f"encoder bin 2; one poses-only distillation step (images turned in-plane, encoder forward + backward "
              f"+ Adam), best of {a.rounds} interleaved rounds")
        print("| simulated share | s / step | images/s | × share 0 |")
        print("|---|---|---|---|")
        best = {}
        for _ in range(a.rounds):
            for share in ("0", "0.5"):
                out = subprocess.run([sys.executable, "-c", CHILD_DISTILL, a.profile, str(a.box), str(a.batch),
                                      a.device, str(a.threads), share], capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(out.stderr.strip().splitlines()[-1])
                best[share] = min(best.get(share, 1e9), json.loads(out.stdout.strip().splitlines()[-1])["step_s"])
        for share in ("0", "0.5"):
            print(f"| {share} | {best[share]:.4f} | {a.batch / best[share]:.0f} | {best[share] / best['0']:.2f} |")
        return
    if a.bf16 or a.compile:
        other = "bf16" if a.bf16 else "compile"
        what = ("float32 vs bfloat16 (autocast)" if a.bf16
                else "eager vs torch.compile (TorchInductor; compile time excluded)")
        print(f"device {a.device}, batch {a.batch}, {a.threads} threads, box {a.box}, profile {a.profile}; one Adam "
              f"step incl. forward + backward; encoder trunk {what}, best of {a.rounds} interleaved rounds")
        print(f"| model | loss band (shells) | encoder bin | float32 eager s/step | {other} s/step | speed-up | "
              f"{other} images/s |")
        print("|---|---|---|---|---|---|---|")
        for model in ("d4-l2", "standard"):
            for band in ("full", "16"):
                for bin in (1, 2):
                    best = {}
                    for _ in range(a.rounds):
                        for variant in ("fp32", other):
                            out = subprocess.run([sys.executable, "-c", CHILD, model, a.profile, str(a.box),
                                                  str(a.batch), a.device, str(a.threads), band, str(bin), "1",
                                                  variant], capture_output=True, text=True)
                            if out.returncode:
                                raise SystemExit(out.stderr.strip().splitlines()[-1])
                            r = json.loads(out.stdout.strip().splitlines()[-1])
                            best[variant] = min(best.get(variant, 1e9), r["step_s"])
                    print(f"| {model} | {band} | {bin} | {best['fp32']:.3f} | {best[other]:.3f} | "
                          f"{best['fp32'] / best[other]:.2f}× | {a.batch / best[other]:.0f} |", flush=True)
        return
    if a.hypotheses:
        print(f"device {a.device}, batch {a.batch}, {a.threads} threads, box {a.box}, profile {a.profile}, d4-l2, "
              "encoder bin 2; one Adam step incl. forward + backward")
        print("| pose hypotheses K | loss band (shells) | s / step | images/s | × K = 1 |")
        print("|---|---|---|---|---|")
        for band in ("8", "16", "full"):
            base = None
            for K in (int(k) for k in a.hypotheses.split(",")):
                out = subprocess.run([sys.executable, "-c", CHILD, "d4-l2", a.profile, str(a.box), str(a.batch),
                                      a.device, str(a.threads), band, "2", str(K)], capture_output=True, text=True)
                if out.returncode:
                    print(f"| {K} | {band} | failed: {out.stderr.strip().splitlines()[-1]} | | |")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                base = base or r["step_s"]
                print(f"| {K} | {band} | {r['step_s']:.3f} | {r['img_s']:.0f} | {r['step_s'] / base:.2f} |",
                      flush=True)
        return
    print(f"device {a.device}, batch {a.batch}, {a.threads} threads, box {a.box}, profile {a.profile}; "
          "one Adam step incl. forward + backward")
    print("| model | loss band (shells) | encoder bin | s / step | images/s |")
    print("|---|---|---|---|---|")
    for model in ("d4-l2", "standard"):
        for band in ("full", "16", "8"):
            for bin in (1, 2):
                out = subprocess.run([sys.executable, "-c", CHILD, model, a.profile, str(a.box), str(a.batch),
                                      a.device, str(a.threads), band, str(bin), "1"], capture_output=True, text=True)
                if out.returncode:
                    print(f"| {model} | {band} | {bin} | failed: {out.stderr.strip().splitlines()[-1]} | |")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"| {model} | {band} | {bin} | {r['step_s']:.3f} | {r['img_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
