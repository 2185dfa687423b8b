"""Figures (matplotlib, non-interactive backend) written atomically."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from ..data.atomic import atomic_path  # noqa: E402
from ..physics.fsc import format_resolution  # noqa: E402


def _save(fig, path, dpi: int, fmt: str | None = "png") -> None:
    """Lay out, write ``fig`` to ``path`` atomically (``fmt`` None: from the suffix), close it."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt or str(path).rsplit(".", 1)[-1])
    plt.close(fig)


def _log_mse_axes(ax, xlabel: str, ylabel: str, threshold: float, ls: str) -> None:
    """A log pose-MSE axis with the convergence threshold drawn and a legend."""
    ax.axhline(threshold, color="grey", lw=0.8, ls=ls)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def plot_fsc(path, curves, thresholds=(0.5, 0.143)) -> None:
    """Plot FSC curves [(label, FSCResult), ...] against spatial frequency (1/Å)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, r in curves:
        res = format_resolution(r.resolution(0.5), 1, none="no crossing")
        ax.plot(r.freq_inv_angstrom, r.fsc, label=f"{label} ({res} @0.5)")
    for t in thresholds:
        ax.axhline(t, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=7)
    _save(fig, path, dpi=120, fmt=None)


def plot_joy(path, times, sizes, n_total: int) -> None:
    """Joy plot (paper Fig. 7): one histogram of |S_i| per evaluation, stacked over time."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 0.35 * len(times) + 1.5))
    bins = np.linspace(0, n_total, 31)
    for k, s in enumerate(sizes):
        h, _ = np.histogram(s, bins=bins)
        h = h / max(h.max(), 1)
        ax.fill_between(bins[:-1], k, k + 0.9 * h, step="post", alpha=0.8)
    ax.set_yticks(range(len(times)))
    ax.set_yticklabels([f"{t:.0f} s" for t in times], fontsize=6)
    ax.set_xlabel("|S_i| (images consistent with image i's alignment)")
    ax.set_ylabel("training time")
    _save(fig, path, dpi=110)


def plot_projective_plane(path, xy_gt, xy_pred) -> None:
    """Predicted vs true viewing directions on the projective plane, coloured by the truth
    (paper Figs. 8-10); poses aligned to the truth first."""
    import numpy as np

    colour = np.stack([(xy_gt[:, 0] + 1) / 2, (xy_gt[:, 1] + 1) / 2, 0.5 * np.ones(len(xy_gt))], 1).clip(0, 1)
    fig, ax = plt.subplots(1, 2, figsize=(8, 4))
    for a, xy, title in ((ax[0], xy_gt, "ground truth"), (ax[1], xy_pred, "predicted (aligned)")):
        a.scatter(xy[:, 0], xy[:, 1], c=colour, s=8)
        a.add_patch(plt.Circle((0, 0), 1, fill=False, color="grey"))
        a.set_aspect("equal")
        a.set_xlim(-1.05, 1.05)
        a.set_ylim(-1.05, 1.05)
        a.set_title(title)
    _save(fig, path, dpi=110)


def plot_series(path, series, ylabel: str, logy: bool = True, hline: float | None = None,
                title: str | None = None) -> None:
    """Lines [(label, x, y), ...] against training time. Lines that share a label (e.g. the seeds
    of one model) share a colour and one legend entry."""
    fig, ax = plt.subplots(figsize=(6, 4))
    colours: dict[str, str] = {}
    shared = len({label for label, _, _ in series}) < len(series)
    for label, x, y in series:
        first = label not in colours
        if first:
            colours[label] = f"C{len(colours) % 10}"
        (ax.semilogy if logy else ax.plot)(x, y, color=colours[label], label=label if first else None,
                                           lw=1.0 if shared else 1.5, alpha=0.8 if shared else 1.0)
    if hline is not None:
        ax.axhline(hline, color="grey", ls=":")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path, dpi=110)


def convergence_band(seeds: list) -> tuple | None:
    """(x (200,), median, low, high) of several seeds' (x, mse) curves on a common x: from the
    latest start to the earliest end of the seeds (no extrapolation); NaN evaluations dropped.
    None when no seed has two evaluations."""
    import numpy as np

    clean = []
    for x, y in seeds:
        x, y = np.asarray(x, float), np.asarray(y, float)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() > 1:
            clean.append((x[ok], y[ok]))
    if not clean:
        return None
    grid = np.linspace(max(x[0] for x, _ in clean), min(x[-1] for x, _ in clean), 200)
    ys = np.stack([np.interp(grid, x, y) for x, y in clean])
    return grid, np.median(ys, 0), ys.min(0), ys.max(0)


def model_colours(models) -> dict:
    """model -> matplotlib cycle colour ("C0", "C1", ...) in the order given, each model once: the one
    rule by which a model keeps its colour across figures and panels."""
    return {m: f"C{k}" for k, m in enumerate(dict.fromkeys(models))}


def plot_convergence(path, curves: dict, xlabel: str, threshold: float = 0.1,
                     colours: dict | None = None) -> None:
    """Held-out pose MSE against ``xlabel`` (images or seconds) per model: the median over its seeds
    as a line, the range of the seeds as a band (:func:`convergence_band`). ``curves``: model ->
    [(x (n,), mse (n,)), ...], one pair per seed; ``colours``: model -> colour, to keep a model's
    colour across figures."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    _draw_bands(ax, curves, colours)
    _log_mse_axes(ax, xlabel, "held-out pose MSE", threshold, "--")
    _save(fig, path, dpi=120)


def _draw_bands(ax, curves: dict, colours: dict | None = None) -> None:
    """Per model, the median of its seeds and their range; colour from ``colours`` (model -> colour,
    kept across panels) or by the model's order in ``curves``."""
    for k, (model, seeds) in enumerate(curves.items()):
        band = convergence_band(seeds)
        if band is None:
            continue
        grid, med, lo, hi = band
        c = (colours or {}).get(model, f"C{k}")
        ax.fill_between(grid, lo, hi, color=c, alpha=0.2, lw=0)
        what = "1 seed" if len(seeds) == 1 else f"median of {len(seeds)} seeds, range shaded"
        ax.plot(grid, med, color=c, label=f"{model} ({what})")


def plot_snr_sweep(path, panels: dict, xlabel: str = "images seen", threshold: float = 0.1,
                   colours: dict | None = None) -> None:
    """The paper's Table 2 as curves: one panel per SNR level (in the order given), held-out pose
    MSE against ``xlabel`` per model as in :func:`plot_convergence`, on one shared y axis.
    ``panels``: title (e.g. "SNR 0.625") -> {model -> [(x (n,), mse (n,)), ...]}; ``colours`` as in
    :func:`plot_convergence` (by default :func:`model_colours` of the panels' models)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.8, 3.8), sharex=True, sharey=True,
                             squeeze=False)
    # a model keeps its colour in every panel, whichever models a level has runs of
    colours = colours or model_colours(m for c in panels.values() for m in c)
    for i, (ax, (title, curves)) in enumerate(zip(axes[0], panels.items())):
        _draw_bands(ax, curves, colours)
        _log_mse_axes(ax, xlabel, "held-out pose MSE" if i == 0 else "", threshold, "--")
        ax.set_title(title, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(4))  # six-digit counts: few ticks, written in thousands
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v else "0"))
    _save(fig, path, dpi=110)


def plot_memorisation(path, curves: dict, xlabel: str = "images seen") -> None:
    """Held-out (solid) and training-set (dashed) pose MSE (left) and MedSE (right) against
    ``xlabel`` per label (a data set or model), each the median over its seeds: a dashed line well
    below its solid one is an encoder that learned its training images' poses without
    generalising. ``curves``: label -> [(x (n,), {"held-out": (mse (n,), medse (n,)),
    "training": (mse (n,), medse (n,))}), ...], one pair per seed."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for col, (ax, what) in enumerate(zip(axes, ("pose MSE", "pose MedSE"))):
        for k, (label, seeds) in enumerate(curves.items()):
            for style, name in (("-", "held-out"), ("--", "training")):
                band = convergence_band([(x, errs[name][col]) for x, errs in seeds])
                if band is not None:
                    ax.plot(band[0], band[1], color=f"C{k}", ls=style,
                            label=f"{label}, {name} (median of {len(seeds)} seeds)")
        _log_mse_axes(ax, xlabel, what, 0.1, ":")
    _save(fig, path, dpi=110)


def class_maps_figure(maps, sizes: list[int], junk: int, apix: float, path) -> None:
    """One row per class map (L, L, L): its projections along z, y and x, titled with its size
    (the share of all particles, junk included)."""
    n = sum(sizes) + junk
    fig, axes = plt.subplots(len(maps), 3, figsize=(6, 2 * len(maps)), squeeze=False)
    for k, (vol, m) in enumerate(zip(maps, sizes)):
        for j, (ax, name) in enumerate(zip(axes[k], ("z", "y", "x"))):
            ax.imshow(vol.sum(axis=j), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"class {k + 1}\n{m} ({100 * m / max(n, 1):.0f}%)", fontsize=8)
            if k == 0:
                ax.set_title(f"along {name}", fontsize=8)
    fig.suptitle(f"{len(maps)} classes, {junk} junk ({100 * junk / max(n, 1):.0f}%), {apix:.3g} Å/px", fontsize=9)
    _save(fig, path, dpi=100, fmt=None)


def class_averages_figure(panels, path) -> None:
    """Per class two rows: its 2-D class averages (images (m, L, L)) and the class map's
    projections at the same poses (m, L, L), each column titled with the images averaged.
    ``panels``: one (averages, projections, counts) per class, or None for an empty class."""
    m = max([len(p[0]) for p in panels if p is not None] + [1])
    fig, axes = plt.subplots(2 * len(panels), m, figsize=(1.5 * m + 0.6, 3.0 * len(panels)), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for k, p in enumerate(panels):
        axes[2 * k, 0].set_ylabel(f"class {k + 1}\naverages", fontsize=8)
        axes[2 * k + 1, 0].set_ylabel("map", fontsize=8)
        if p is None:
            continue
        for j, (avg, proj, n) in enumerate(zip(*p)):
            axes[2 * k, j].imshow(avg, cmap="gray")
            axes[2 * k, j].set_title(f"{int(n)} image{'' if n == 1 else 's'}", fontsize=7)
            axes[2 * k + 1, j].imshow(proj, cmap="gray")
    fig.suptitle("2-D class averages (phase-flipped, centred, turned onto one pose) and the map there", fontsize=9)
    _save(fig, path, dpi=100, fmt=None)
