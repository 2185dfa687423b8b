"""The run report: figures (pose error over time, FSC, slices and projections of the map) and
``RUN/report.md`` that shows them with the numbers."""

from __future__ import annotations

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


def write_report(out: Path, title: str, facts: list[str], metrics: dict[str, np.ndarray],
                 volume: np.ndarray | None, fsc_curves: list = (), files: list[str] = ()) -> Path:
    """Figures and ``out/report.md`` for a finished run: ``facts`` as bullet points, the last value of
    each metric (``metrics``: columns of the run's evaluations), the pose-error curve, the FSC
    curves (``fsc_curves``: (label, :class:`~eqcryo.physics.fsc.FSCResult`) pairs) and the map's
    central slices and projections (``volume`` (L, L, L) or None). Returns the report's path."""
    out = Path(out)
    m = metrics
    figs = []
    if "pose_mse" in m and np.isfinite(m["pose_mse"]).any():
        plot_pose_error(out / "pose_error.png", m)
        figs.append(("Pose error on the held-out particles", "pose_error.png"))
    if fsc_curves:
        plot_fsc(out / "fsc.png", list(fsc_curves))
        figs.append(("FSC: half-maps (no ground truth needed) and against the truth when known", "fsc.png"))
    if volume is not None:
        plot_map(out / "map.png", volume)
        figs.append(("Reconstruction: central slices and projections", "map.png"))
    last = {k: v[-1] for k, v in m.items()} if m else {}
    lines = [f"# {title}", ""] + [f"- {f}" for f in facts] + [""]
    if last:
        lines += ["| metric | last value |", "|---|---|"]
        for k in ("loss", "pose_mse", "pose_medse", "geodesic_median_deg", "view_median_deg", "shift_rmse_angstrom",
                  "resolution_0.5_angstrom", "resolution_0.143_angstrom"):
            if k in last and isinstance(last[k], (float, np.floating)) and not np.isnan(last[k]):
                lines.append(f"| {k} | {last[k]:.4g} |")
        lines.append("")
    for t, f in figs:
        lines += [f"## {t}", "", f"![{t}]({f})", ""]
    if files:
        lines += ["Files: " + ", ".join(f"`{f}`" for f in files) + ".", ""]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines))
    return out / "report.md"
