"""Discrete classes by projection matching: which map explains each particle, and junk.

Beyond the paper (RELION's Class3D and cryoSPARC's heterogeneous refinement do this by
marginalisation; this is the hard-EM version, the search of :mod:`.projection_matching`):

- every particle is searched against every class map (global grid + local refinement) and
  scored by the **normalised correlation** on the band, ``ρ = ⟨Y, CTF·T·S⟩ / (‖Y‖ ‖CTF·T·S‖)``
  at its best pose — a score that does not depend on a map's scale (a class reconstructed
  from few or mixed particles has weaker projections, not worse ones);
- the **junk sink** is the flat image: a particle joins no class when its best ρ is below what
  the maps give to images with the particles' own power spectra (CTF rings included) but no
  structure — the same images with their Fourier phases randomised (the null). The threshold
  is a high quantile of the null's best ρ;
- a particle joins the class of its highest ρ; each class map is reconstructed from its members
  at their poses in that class; repeat. A class left with fewer than ``min_members`` is reseeded
  from the particles worst explained by the others (cryoSPARC's guard against empty classes).

All functions are deterministic given their seeds (CPU).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..physics.projection import prepare_fourier_volume
from .projection_matching import BandData, MatchConfig, Reader, _slices, band_block, reconstruct, search_poses

__all__ = ["ClassifyConfig", "Classification", "normalised_correlation", "null_band", "score_classes",
           "junk_threshold", "assign", "classify", "otsu_split", "JUNK"]

#: the class number of a particle no class explains
JUNK = 0


@dataclass
class ClassifyConfig:
    """Settings of :func:`classify`. The band in Fourier shells."""

    iters: int = 3
    max_iters: int | None = None  # more rounds, up to this many, while a round still moves particles
    settle_fraction: float = 0.01  # ... more than this fraction of them between classes
    match: MatchConfig = field(default_factory=lambda: MatchConfig(radius=16.0, n_rotations=4096, refine_rounds=4))
    null_particles: int = 256  # phase-randomised images scored for the junk threshold
    null_quantile: float = 0.99  # the threshold: this quantile of the null's best ρ
    junk: bool = True  # False: every particle joins a class
    min_members: int = 20
    seed: int = 0


@dataclass
class Classification:
    """The result of :func:`classify` for particles ``ids`` (n of them) and K classes.

    ``label`` (n,) 1…K, or 0 = junk; ``ncc`` (n, K) each particle's ρ in each class; ``R`` (n, K,
    3, 3) and ``origin_px`` (n, K, 2) its pose in each class; ``maps`` K volumes (L, L, L);
    ``threshold`` the junk threshold on ρ (None: no junk sink); ``history`` one record per iteration.
    """

    label: np.ndarray
    ncc: torch.Tensor
    R: torch.Tensor
    origin_px: torch.Tensor
    maps: list[torch.Tensor]
    threshold: float | None
    history: list[dict]

    @property
    def score(self) -> np.ndarray:
        """(n,) each particle's ρ in its own class (its best ρ for junk)."""
        best = self.ncc.max(1).values.numpy()
        own = self.ncc.numpy()[np.arange(len(self.label)), np.clip(self.label - 1, 0, None)]
        return np.where(self.label == JUNK, best, own)

    def posterior(self, temperature: float = 0.02) -> np.ndarray:
        """(n, K) softmax of ρ / ``temperature`` over the classes: how clearly a particle's class
        wins (1/K: undecided). ρ differences of a few hundredths separate classes at SNR ~1."""
        return torch.softmax(self.ncc / temperature, dim=1).numpy()


def normalised_correlation(fv, band: BandData, R: torch.Tensor, origin_px: torch.Tensor,
                           chunk: int = 512) -> torch.Tensor:
    """(n,) ρ of every image of ``band`` with the map ``fv``'s slice at pose (R (n, 3, 3), origin (n, 2) px)."""
    band_radius = float(band.pts[:, :2].norm(dim=-1).max())
    fv = band_block(type(fv)(fv.data.to(torch.complex64), fv.L, fv.pad), band_radius)
    out = torch.empty(len(R))
    for a in range(0, len(R), chunk):
        rows = slice(a, min(len(R), a + chunk))
        S = _slices(fv, band.pts, R[rows])
        corr = (band.weighted(rows, origin_px[rows]).conj() * S).real.sum(-1)
        s2 = (band.ctf2(rows) * (S.real ** 2 + S.imag ** 2)).sum(-1)
        y2 = (band.weight * (band.F[rows].real ** 2 + band.F[rows].imag ** 2)).sum(-1)
        out[rows] = corr / torch.sqrt(s2 * y2).clamp_min(1e-30)
    return out


def null_band(band: BandData, ids: np.ndarray | torch.Tensor, generator: torch.Generator) -> BandData:
    """Rows ``ids`` of ``band`` with random Fourier phases (DC kept): each image's power spectrum
    and CTF, no structure. One Hermitian half is stored, so any phases give a real image."""
    F = band.F[ids]
    phase = torch.rand(F.shape, generator=generator) * (2 * math.pi)
    dc = (band.pts[:, 0] == 0) & (band.pts[:, 1] == 0)
    F = torch.where(dc, F, F.abs() * torch.polar(torch.ones_like(phase), phase))
    return BandData(F.to(torch.complex64), band.ctf[ids], band.pts, band.weight, band.L)


def score_classes(maps: list[torch.Tensor], band: BandData, R: torch.Tensor, origin_px: torch.Tensor,
                  cfg: MatchConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every image of ``band`` searched against every map, from poses R (n, K, 3, 3), origins (n,
    K, 2) px. Returns (R, origin_px, ρ (n, K))."""
    R, origin_px = R.clone(), origin_px.clone()
    ncc = torch.empty(R.shape[:2])
    for k, vol in enumerate(maps):
        fv = prepare_fourier_volume(vol.double(), 2)
        R[:, k], origin_px[:, k], _ = search_poses(fv, band, R[:, k], origin_px[:, k], cfg, generator)
        ncc[:, k] = normalised_correlation(fv, band, R[:, k], origin_px[:, k])
    return R, origin_px, ncc


def junk_threshold(maps: list[torch.Tensor], band: BandData, cfg: ClassifyConfig, generator: torch.Generator) -> float:
    """The ``null_quantile`` of the best ρ (over the maps) of ``null_particles`` phase-randomised images."""
    n = min(cfg.null_particles, len(band.F))
    pick = torch.randperm(len(band.F), generator=generator)[:n]
    nb = null_band(band, pick, generator)
    eye = torch.eye(3, dtype=torch.float64).expand(n, len(maps), 3, 3)
    _, _, ncc = score_classes(maps, nb, eye, torch.zeros(n, len(maps), 2, dtype=torch.float64), cfg.match, generator)
    return float(torch.quantile(ncc.max(1).values.double(), cfg.null_quantile))


def otsu_split(x: np.ndarray, bins: int = 128) -> float:
    """The threshold that splits ``x`` into two groups of least within-group variance (Otsu)."""
    x = np.asarray(x, dtype=np.float64)
    hist, edges = np.histogram(x, bins=bins)
    mids = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * mids) / np.maximum(w0, 1)
    m1 = ((hist * mids).sum() - np.cumsum(hist * mids)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[1:][int(np.argmax(between))])


def assign(ncc: torch.Tensor, threshold: float | None) -> np.ndarray:
    """(n,) each particle's class from its ρ in each class (n, K): the best, 1…K, or
    :data:`JUNK` where that best is below ``threshold`` (None: no junk sink)."""
    best, k = ncc.max(1)
    label = (k + 1).numpy()
    if threshold is not None:
        label[(best < threshold).numpy()] = JUNK
    return label


def classify(reader: Reader, ids: np.ndarray, L: int, maps: list[torch.Tensor], R: torch.Tensor,
             origin_px: torch.Tensor, cfg: ClassifyConfig, log: Callable[[str], None] = print,
             deadline: float | None = None, clock: Callable[[], float] | None = None,
             band: BandData | None = None) -> Classification:
    """``cfg.iters`` rounds of score → assign → reconstruct (then more, up to ``cfg.max_iters``,
    while a round moves more than ``cfg.settle_fraction`` of the particles), from ``maps`` (K of them, (L, L, L))
    and poses R (n, K, 3, 3) / origins (n, K, 2) px of particles ``ids`` in each class. A round
    starts only when ``deadline`` (on ``clock``, default ``time.perf_counter``) leaves time for
    it, judged by the last round's length; the first always runs. ``band``: the particles' band
    data (:meth:`BandData.read` of ``ids`` at ``cfg.match.radius``) when the caller has it."""
    clock = clock or time.perf_counter
    g = torch.Generator().manual_seed(cfg.seed)
    band = band if band is not None else BandData.read(reader, ids, L, cfg.match.radius)
    R, origin_px = R.double().clone(), origin_px.double().clone()
    maps = [m.double() for m in maps]
    history: list[dict] = []
    threshold = None
    label = np.zeros(len(ids), dtype=int)
    ncc = torch.zeros(len(ids), len(maps))
    last = None
    for it in range(max(cfg.iters, cfg.max_iters or 0)):
        t0 = clock()
        if it >= cfg.iters and history[-1]["changed_fraction"] <= cfg.settle_fraction:
            break
        if it and deadline is not None and last is not None and t0 + last > deadline:
            log(f"classification: stopping after {it} round(s) (time budget)")
            break
        R, origin_px, ncc = score_classes(maps, band, R, origin_px, cfg.match, g)
        threshold = junk_threshold(maps, band, cfg, g) if cfg.junk else None
        new = assign(ncc, threshold)
        # a class with too few members is reseeded from the particles the others explain worst
        for k in range(1, len(maps) + 1):
            if (new == k).sum() < cfg.min_members:
                others = ncc.max(1).values.numpy().copy()
                others[new == JUNK] = np.inf  # junk stays junk
                worst = np.argsort(others)[:max(cfg.min_members, len(ids) // (4 * len(maps)))]
                new[worst] = k
                log(f"classification: class {k} was nearly empty; reseeded from {len(worst)} poorly explained "
                    f"particles")
        changed = float((new != label).mean())
        label = new
        maps = [reconstruct(reader, ids[label == k], R[label == k, k - 1], origin_px[label == k, k - 1], L,
                            cfg.match.wiener) if (label == k).any() else maps[k - 1]
                for k in range(1, len(maps) + 1)]
        rec: dict = {"round": it + 1, "seconds": round(clock() - t0, 1), "changed_fraction": round(changed, 4),
               "junk_threshold": threshold, "members": [int((label == k).sum()) for k in range(len(maps) + 1)]}
        history.append(rec)
        log(f"classification round {it + 1}: members per class {rec['members'][1:]}, junk {rec['members'][0]}, "
            f"changed {100 * changed:.1f}%, junk threshold ρ {threshold if threshold is None else round(threshold, 3)}")
        last = clock() - t0
    return Classification(label, ncc, R, origin_px, maps, threshold, history)
