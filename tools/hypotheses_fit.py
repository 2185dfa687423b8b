"""How well a run's K pose hypotheses fit its refinement targets, per training particle: the
hypothesis the image loss picks (what ``predict`` returns) against the best of the K (an oracle
that knows the target). Needs a run trained with refinement (its checkpoint holds the targets).

    python tools/hypotheses_fit.py RUN PARTICLES.star

Prints, for both, the median angle to the target and the share more than 20° off, and how often
each hypothesis wins.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from eqcryo.data.io import load_particles
from eqcryo.physics.rotations import geodesic_angle_degrees
from eqcryo.training.inference import load_trained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("particles")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tm = load_trained(args.run)
    table = load_particles(args.particles)
    ds = tm.dataset(table)
    targets = tm.state["refinement"]["target_R"]
    if targets is None:
        raise SystemExit(f"{args.run}: no refinement targets in its checkpoint")
    ids = np.flatnonzero(targets.abs().sum((1, 2)).numpy() > 0)  # rows of held-out particles stay zero
    chosen, every, wins = [], [], []
    with torch.no_grad():
        for b in ds.batches(ids, 256):
            out = tm.model(b.images, b.ctf)
            chosen.append(out.R.double().cpu())
            wins.append(out.hypothesis.cpu())
            if tm.model.n_hypotheses > 1:
                every.append(tm.model.encoder.pose_hypotheses(b.images)[0].double().cpu())
            else:
                every.append(out.R.double().cpu()[:, None])
    T = targets[ids].double()
    R, Rk, w = torch.cat(chosen), torch.cat(every), torch.cat(wins)
    K = Rk.shape[1]
    e_chosen = geodesic_angle_degrees(R, T)
    e_best = torch.stack([geodesic_angle_degrees(Rk[:, k], T) for k in range(K)], 1).min(1).values
    print(f"{args.run}: K = {K}, {len(ids)} training particles with refinement targets")
    for name, e in (("picked by the image loss", e_chosen), ("best of the K", e_best)):
        print(f"  {name}: median {e.median():.2f}°, more than 20° off {float((e > 20).double().mean()) * 100:.1f}%")
    print("  win shares: " + " ".join(f"{x:.2f}" for x in np.bincount(w.numpy(), minlength=K) / len(w)))


if __name__ == "__main__":
    main()
