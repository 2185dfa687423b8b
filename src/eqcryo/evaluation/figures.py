"""Figures (matplotlib, non-interactive backend) written atomically."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..data.atomic import atomic_path  # noqa: E402


def plot_fsc(path, curves, thresholds=(0.5, 0.143)) -> None:
    """Plot FSC curves [(label, FSCResult), ...] against spatial frequency (1/Å)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, r in curves:
        ax.plot(r.freq_inv_angstrom, r.fsc, label=f"{label} ({r.resolution(0.5):.1f} Å @0.5)")
    for t in thresholds:
        ax.axhline(t, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=str(path).rsplit(".", 1)[-1])
    plt.close(fig)
