"""The run report: figures (pose error over time, FSC, slices and projections of the map) and
``RUN/report.md`` that shows them with the numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..data.atomic import atomic_path  # noqa: E402
from .figures import plot_fsc  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def read_metrics(path: Path) -> dict[str, np.ndarray]:
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for k in (rows[0].keys() if rows else []):
        try:
            out[k] = np.array([float(r[k]) if r[k] not in ("", "None") else np.nan for r in rows])
        except ValueError:
            out[k] = np.array([r[k] for r in rows])
    return out


def plot_pose_error(path: Path, m: dict[str, np.ndarray]) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy(m["train_seconds"], m["pose_mse"], "o-", label="MSE")
    ax.semilogy(m["train_seconds"], m["pose_medse"], "s--", label="MedSE")
    ax.axhline(0.1, color="grey", ls=":", label="converged (0.1)")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("pose error ‖R Q − R_gt‖²_F")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_map(path: Path, vol: np.ndarray) -> None:
    L = vol.shape[0]
    fig, ax = plt.subplots(2, 3, figsize=(9, 6))
    for i, (name, sl, pr) in enumerate((("z", vol[L // 2], vol.sum(0)), ("y", vol[:, L // 2], vol.sum(1)),
                                        ("x", vol[:, :, L // 2], vol.sum(2)))):
        ax[0, i].imshow(sl, cmap="gray")
        ax[0, i].set_title(f"central slice, normal {name}")
        ax[1, i].imshow(pr, cmap="gray")
        ax[1, i].set_title(f"projection along {name}")
        for a in ax[:, i]:
            a.axis("off")
    fig.tight_layout()
    _save(fig, path)


def write_report(trainer, volume: np.ndarray) -> None:
    """Figures and report.md for a finished run; ``volume`` is its exported map (L, L, L)."""
    out = Path(trainer.out)
    m = read_metrics(out / "metrics.csv")
    figs = []
    if "pose_mse" in m and np.isfinite(m["pose_mse"]).any():
        plot_pose_error(out / "pose_error.png", m)
        figs.append(("Pose error on the held-out particles", "pose_error.png"))
    if getattr(trainer, "last_fsc", None) is not None:
        plot_fsc(out / "fsc.png", [("reconstruction vs ground truth", trainer.last_fsc)])
        figs.append(("FSC against the ground-truth map (after alignment)", "fsc.png"))
    plot_map(out / "map.png", volume)
    figs.append(("Reconstruction: central slices and projections", "map.png"))
    c = trainer.cfg
    last = {k: v[-1] for k, v in m.items()} if m else {}
    lines = [f"# eqcryo run: {c.model} ({c.profile} profile)", "",
             f"- particles: `{c.particles}` ({trainer.t.n}, {trainer.L} px, {trainer.apix} Å/px); "
             f"held-out for evaluation: {len(trainer.eval_ids)}",
             f"- steps: {trainer.step}, training time: {trainer.train_seconds:.0f} s, images seen: {trainer.images_seen}",
             "- converged (pose MSE < 0.1): " + (json.dumps(trainer.converged) if trainer.converged else "no"), ""]
    if last:
        lines += ["| metric | last value |", "|---|---|"]
        for k in ("loss", "pose_mse", "pose_medse", "geodesic_median_deg", "view_median_deg", "shift_rmse_angstrom",
                  "resolution_0.5_angstrom", "resolution_0.143_angstrom"):
            if k in last and not (isinstance(last[k], float) and np.isnan(last[k])):
                lines.append(f"| {k} | {last[k]:.4g} |")
        lines.append("")
    for title, f in figs:
        lines += [f"## {title}", "", f"![{title}]({f})", ""]
    lines += ["Files: `reconstruction.mrc`, `predicted_particles.star`, `predicted_poses.pkl`, `metrics.csv`, "
              "`config.yaml`, `checkpoint.pt`, `tensorboard/`.", ""]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines))
