"""The run report: figures (loss and pose error over time, FSC curves, slices and projections of
the map, the predicted viewing directions) and two pages that show them with the numbers:
``RUN/report.md`` (figures beside it) and ``RUN/report.html``, one self-contained file (figures
embedded) a person opens in a browser."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def plot_loss(path: Path, m: dict[str, np.ndarray]) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy(m["train_seconds"], m["loss"], "o-")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("held-out loss (band-limited image MSE)")
    fig.tight_layout()
    _save(fig, path)


def plot_viewing_directions(path: Path, R: np.ndarray, max_points: int = 5000) -> None:
    """The predicted viewing directions z = R[2, :] (map frame) of up to ``max_points`` particles on
    the sphere (equal-area Mollweide map): uniform coverage, clusters, or a collapse onto a few axes."""
    z = R[:: max(1, len(R) // max_points), 2, :]
    lon, lat = np.arctan2(z[:, 1], z[:, 0]), np.arcsin(np.clip(z[:, 2], -1, 1))
    fig = plt.figure(figsize=(7, 3.8))
    ax = fig.add_subplot(111, projection="mollweide")
    ax.scatter(lon, lat, s=2, alpha=0.4)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"predicted viewing directions ({len(z)} particles)", fontsize=10)
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
                 volume: np.ndarray | None, fsc_curves: Sequence[tuple[str, Any]] = (), files: Sequence[str] = (),
                 rotations: np.ndarray | None = None) -> Path:
    """Figures and ``out/report.md`` for a finished run: ``facts`` as bullet points, the last value of
    each metric (``metrics``: columns of the run's evaluations), the pose-error curve, the FSC
    curves (``fsc_curves``: (label, :class:`~eqcryo.physics.fsc.FSCResult`) pairs) and the map's
    central slices and projections (``volume`` (L, L, L) or None). Returns the report's path."""
    out = Path(out)
    m = metrics
    figs = []
    if "loss" in m and np.isfinite(m["loss"]).any():
        plot_loss(out / "loss.png", m)
        figs.append(("Held-out loss", "loss.png"))
    if "pose_mse" in m and np.isfinite(m["pose_mse"]).any():
        plot_pose_error(out / "pose_error.png", m)
        figs.append(("Pose error on the held-out particles", "pose_error.png"))
    if fsc_curves:
        plot_fsc(out / "fsc.png", list(fsc_curves))
        figs.append(("FSC: half-maps (no ground truth needed) and against the truth when known", "fsc.png"))
    if volume is not None:
        plot_map(out / "map.png", volume)
        figs.append(("Reconstruction: central slices and projections", "map.png"))
    if rotations is not None:
        plot_viewing_directions(out / "viewing_directions.png", rotations)
        figs.append(("Predicted viewing directions (every particle)", "viewing_directions.png"))
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
        lines += ["Files: " + ", ".join(md_code(f) for f in files) + ".", ""]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines))
    write_html(out / "report.html", title, facts, last, figs, files)
    return out / "report.md"


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}"
          "h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}table{border-collapse:collapse}"
          "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}img{max-width:100%}"
          "code{background:#f4f4f4;padding:0 .2em}li{margin:.2em 0}")


def md_code(text: str) -> str:
    """``text`` as one Markdown code span, whatever it holds: a fence of more backticks than its
    longest run (CommonMark), so a file name with backticks or ``<img onerror=...>`` stays text."""
    import re

    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    pad = " " if longest else ""
    return f"{'`' * (longest + 1)}{pad}{text}{pad}{'`' * (longest + 1)}"


def _inline_md(s: str) -> str:
    """The little Markdown the facts use (`code`, **bold**) as HTML, everything else escaped."""
    import re

    s = html.escape(s)
    s = re.sub(r"`([^`]*)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]*)\*\*", r"<b>\1</b>", s)


def write_html(path: Path, title: str, facts: list[str], last: dict, figs: list[tuple[str, str]],
               files: Sequence[str]) -> None:
    """One self-contained HTML page: the facts, the last metrics and every figure embedded as a
    base64 PNG (it opens anywhere, e-mailed or copied alone)."""
    out = Path(path).parent
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><ul>"]
    parts += [f"<li>{_inline_md(f)}</li>" for f in facts]
    parts.append("</ul>")
    rows = [(k, last[k]) for k in ("loss", "pose_mse", "pose_medse", "geodesic_median_deg", "view_median_deg",
                                    "shift_rmse_angstrom", "resolution_0.5_angstrom", "resolution_0.143_angstrom")
            if k in last and isinstance(last[k], (float, np.floating)) and not np.isnan(last[k])]
    if rows:
        parts.append("<table><tr><th>metric (last evaluation)</th><th>value</th></tr>")
        parts += [f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>" for k, v in rows]
        parts.append("</table>")
    for t, f in figs:
        data = base64.b64encode((out / f).read_bytes()).decode("ascii")
        parts.append(f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='data:image/png;base64,{data}'>")
    if files:
        parts.append("<p>Files in the run folder: " + ", ".join(f"<code>{html.escape(x)}</code>" for x in files)
                     + ".</p>")
    parts.append("</body></html>\n")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(parts))
