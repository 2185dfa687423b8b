"""Projection matching (hard EM) on a Fourier band: the semi-amortized refinement of poses.

Beyond the paper. An amortized encoder that has stalled in the mirror state of the paper's
App. G (docs/training-notebook.md) predicts most poses well and about a quarter of them mirrored; the
map it trains then acquires a spurious mirror plane, and both explain the data equally well,
so gradient descent on the joint loss no longer moves. A direct reconstruction from the
encoder's poses is dominated by the well-posed majority instead, and a global search of every
image against it puts the mirrored minority back. One iteration:

1. reconstruct ``V`` from the current poses by Wiener-filtered Fourier backprojection
   (:class:`~eqcryo.reconstruction.backprojection.Backprojector`);
2. global search: for every image the best of ``n_rotations`` rotations (a seeded uniform
   sample of SO(3)) × a 3×3 grid of shift offsets around its current origin, and its
   current pose; the score is the L2 image loss restricted to the band ``|k| < radius``,
   ``‖Y − CTF·T_o·S_R‖²``, whose ``‖Y‖²`` term is the same for every candidate and dropped;
3. local refinement: ``refine_rounds`` rounds of a pattern search around the incumbent (± a
   step about each rotation axis and along each shift axis, the steps halving where nothing
   is better); the incumbent is always a candidate, so the score of an image never decreases
   within an iteration.

Candidates beyond the best one (``keep``, ``orbit``) are refined for ``keep_rounds`` rounds each
before only an image's best goes on. ``orbit`` = n adds the incumbent turned in the image plane
by 360°/n, 2·360°/n, …: an image nearly invariant under a half turn (a projection with a near
two-fold axis along the view) leaves an equivariant encoder unable to tell R from R_z(180°)·R —
exactly the C4 orbit of its prediction — and a refined wrong incumbent outscores the unrefined
grid point near the truth (docs/results.md, seed 3: every stuck particle was 169–180° off about
the viewing axis).

All functions are pure given their ``torch.Generator`` (deterministic on CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ..physics.lattice import fft2_centered, plane_coords
from ..physics.projection import FourierVolume, prepare_fourier_volume, shift_phase_at, slice_fourier_volume
from ..physics.rotations import axis_angle_to_matrix, random_rotations, rotation_z
from .backprojection import Backprojector

__all__ = ["MatchConfig", "BandData", "search_poses", "accumulate", "reconstruct", "projection_matching"]

#: ``read(ids) -> (images (k, L, L), ctf (k, L, L) or None)``, in the data's own intensity units.
Reader = Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class MatchConfig:
    """Settings of :func:`projection_matching`. Units in names; radius in Fourier shells."""

    radius: float = 16.0
    n_rotations: int = 8192  # about 12° between neighbours; 0: no global search (a local refinement)
    shift_step_px: float = 2.0  # global-search shift offsets {-s, 0, s}²; 0: only the current origin
    refine_rounds: int = 6
    refine_step_deg: float = 6.0  # local refinement's first rotation step (about each axis)
    refine_shift_px: float = 1.0  # and first shift step (along x and y)
    wiener: float = 0.01
    chunk: int = 256  # images scored at once (bounds memory: chunk × n_rotations scores)
    keep: int = 1  # candidates per image refined locally (the best of the global search; > 1: the k best)
    keep_rounds: int = 2  # with more than one candidate: local rounds for all of them, then only the best goes on
    orbit: int = 1  # in-plane turns of the incumbent tried as extra candidates: 2 = {180°}, 4 = {90°, 180°, 270°}
    orbit_shift_px: float = 4.0  # a turned candidate's origin is searched over ± this many px (1 px steps)
    seed: int = 0


@dataclass
class BandData:
    """Images and CTFs on the band's lattice points, one Hermitian half of it.

    ``F`` (n, M) complex64: the images' centred DFT; ``ctf`` (n, M) float32 (ones without CTF);
    ``pts`` (M, 3) the plane points (kx, ky, 0) with ``|k| < radius`` and ky > 0 or (ky = 0,
    kx ≥ 0); ``weight`` (M,) 2 on those points, 1 at k = 0; ``L`` the box. Images are real and
    slices of a real map Hermitian (:func:`~eqcryo.physics.projection.hermitian_lattice`), so a
    score summed over the whole disc equals the weighted sum over this half (half the cost).
    Single precision: scores are compared, never accumulated, and it halves the search's cost.
    """

    F: torch.Tensor
    ctf: torch.Tensor
    pts: torch.Tensor
    weight: torch.Tensor
    L: int

    @classmethod
    def read(cls, reader: Reader, ids: np.ndarray, L: int, radius: float, batch: int = 512) -> BandData:
        if radius > L / 2:
            # beyond Nyquist the disc would hold points (kx = -L/2) whose partners are off the lattice
            raise ValueError(f"match band radius {radius} shells is beyond Nyquist (box {L}: at most {L / 2})")
        k = plane_coords(L, torch.float64).reshape(-1, 3)
        kx, ky = k[:, 0], k[:, 1]
        keep = (k.norm(dim=-1) < radius) & ((ky > 0) | ((ky == 0) & (kx >= 0)))
        Fs, cs = [], []
        for s in range(0, len(ids), batch):
            x, c = reader(ids[s:s + batch])
            Fs.append(fft2_centered(x.double()).reshape(len(x), -1)[:, keep].to(torch.complex64))
            cs.append(torch.ones(len(x), int(keep.sum())) if c is None
                      else c.float().reshape(len(x), -1)[:, keep])
        pts = k[keep].float()
        weight = torch.where((pts[:, 0] == 0) & (pts[:, 1] == 0), 1.0, 2.0)
        return cls(torch.cat(Fs), torch.cat(cs), pts, weight, L)

    @cached_property
    def _ctf_w(self) -> torch.Tensor:  # weight · CTF (n, M), once, not per chunk and round
        return self.ctf * self.weight

    @cached_property
    def _ctf2_w(self) -> torch.Tensor:  # weight · CTF² (n, M)
        return self.ctf ** 2 * self.weight

    def ctf2(self, rows: slice | torch.Tensor) -> torch.Tensor:
        """``weight · CTF²`` (k, M) of images ``rows``: the |S|² term of the score."""
        return self._ctf2_w[rows]

    def weighted(self, rows: slice | torch.Tensor, origin_px: torch.Tensor) -> torch.Tensor:
        """``weight · CTF · T_o⁻¹ Y`` (k, M) (or (k, P, M) for origins (k, P, 2)): each image
        un-shifted by a candidate origin (px) and weighted by its CTF and the half-band weight,
        the term the score correlates."""
        F, c = self.F[rows], self._ctf_w[rows]
        kx, ky = self.pts[:, 0], self.pts[:, 1]
        origin_px = origin_px.float()
        if origin_px.dim() == 2:
            return F * c * shift_phase_at(kx, ky, self.L, origin_px).conj()
        k, P = origin_px.shape[:2]
        ph = shift_phase_at(kx, ky, self.L, origin_px.reshape(-1, 2)).reshape(k, P, -1)
        return (F * c)[:, None] * ph.conj()


def band_block(fv: FourierVolume, radius: float) -> FourierVolume:
    """The central block of ``fv`` that trilinear slices within ``radius`` shells read: indices
    within ±(ceil(pad·radius) + 1) of the centre, an odd cube centred like the full array, so
    :func:`~eqcryo.physics.projection.slice_fourier_volume` reads the same values from it. At
    64 px and 16 shells it is 67³ instead of 128³: it stays in cache, which the search's
    millions of scattered reads need. ``fv`` itself when the band reaches the edge."""
    N, c = fv.data.shape[-1], fv.data.shape[-1] // 2
    m = math.ceil(fv.pad * radius) + 1
    if c - m < 0 or c + m >= N:
        return fv
    return FourierVolume(fv.data[c - m:c + m + 1, c - m:c + m + 1, c - m:c + m + 1].contiguous(), fv.L, fv.pad)


def _slices(fv: FourierVolume, pts: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Values of the map's DFT (B, M) at the band's points rotated by R (B, 3, 3), in the
    precision of ``fv``."""
    return slice_fourier_volume(fv.data, (pts @ R.to(pts.dtype)) * fv.pad)


def _score(Fw: torch.Tensor, c2: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """``2 Re⟨CTF·T⁻¹Y, S⟩ − ⟨CTF², |S|²⟩`` = ``‖Y‖² − ‖Y − CTF·T·S‖²`` summed over the band
    (broadcasting over leading dimensions); ``Fw`` and ``c2`` carry the half-band weight
    (:meth:`BandData.weighted`, :meth:`BandData.ctf2`)."""
    return 2 * (Fw.conj() * S).real.sum(-1) - (c2 * (S.real ** 2 + S.imag ** 2)).sum(-1)


def search_poses(fv: FourierVolume, band: BandData, R: torch.Tensor, origin_px: torch.Tensor,
                 cfg: MatchConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global search then local refinement against one map.

    ``R`` (n, 3, 3) and ``origin_px`` (n, 2) are the current poses (RELION origins in px);
    returns the new (R, origin_px, score (n,)): poses in float64, scores computed in float32.
    With ``cfg.keep`` = k > 1 the k best of {incumbent, grid × offsets} are each refined locally
    for ``keep_rounds`` rounds, then each image's best goes on alone (a grid point near the true
    pose can score below an already refined wrong pose until it is refined itself).
    """
    n = len(R)
    band_radius = float(band.pts[:, :2].norm(dim=-1).max())  # the farthest point the slices read
    fv = band_block(FourierVolume(fv.data.to(torch.complex64), fv.L, fv.pad), band_radius)
    pts = band.pts
    s = cfg.shift_step_px
    offsets = [(0.0, 0.0)] if s == 0 else [(a, b) for a in (-s, 0.0, s) for b in (-s, 0.0, s)]
    if cfg.n_rotations > 0:
        grid = random_rotations(cfg.n_rotations, generator)
        S_grid = _slices(fv, pts, grid)  # (K, M)
        B = torch.cat([S_grid.real, S_grid.imag], 1)  # (K, 2M): scores as one matrix product
        S2 = S_grid.real ** 2 + S_grid.imag ** 2
    else:  # a local search: the incumbent (and its turns) alone go on to the pattern search
        offsets = []
    k = max(1, min(cfg.keep, cfg.n_rotations))
    # the incumbent's in-plane turns by 360°·j/orbit, j = 1 … orbit - 1 (left factors: rotations in the
    # image frame, as the local refinement's): (t, 3, 3), t = orbit - 1
    turns = rotation_z(torch.arange(1, max(1, cfg.orbit), dtype=torch.float64) * (2 * math.pi / max(1, cfg.orbit))
                       ).to(R.dtype)
    if len(turns):  # a turned candidate's origin offsets (P, 2) px and their phases (P, M)
        w = cfg.orbit_shift_px
        orbit_offsets = torch.tensor([(a, b) for a in np.arange(-w, w + 0.5) for b in np.arange(-w, w + 0.5)],
                                     dtype=origin_px.dtype)
        ph_orbit = shift_phase_at(pts[:, 0], pts[:, 1], band.L, orbit_offsets.float())
    kk = k + len(turns)  # candidates per image
    cand_R = R[:, None].repeat(1, kk, 1, 1).clone()  # (n, kk, 3, 3)
    cand_o = origin_px[:, None].repeat(1, kk, 1).clone()
    cand_s = torch.empty(n, kk)
    for a in range(0, n, cfg.chunk):
        rows: slice | torch.Tensor = slice(a, min(n, a + cfg.chunk))
        c2 = band.ctf2(rows)
        # the incumbent first, so a search that finds nothing better keeps it (ties: the incumbent)
        sc_all = [_score(band.weighted(rows, origin_px[rows]), c2, _slices(fv, pts, R[rows]))[:, None]]
        R_all, o_all = [R[rows, None]], [origin_px[rows, None]]
        for dx, dy in offsets:
            o = origin_px[rows] + torch.tensor([dx, dy], dtype=origin_px.dtype)
            Fw = band.weighted(rows, o)
            sc = 2 * torch.cat([Fw.real, Fw.imag], 1) @ B.T - c2 @ S2.T  # (c, K)
            v, j = sc.topk(k, dim=1)
            sc_all.append(v)
            R_all.append(grid[j].to(R.dtype))
            o_all.append(o[:, None].expand(-1, k, -1))
        sc_cat, R_cat, o_cat = torch.cat(sc_all, 1), torch.cat(R_all, 1), torch.cat(o_all, 1)
        v, j = sc_cat.topk(k, dim=1)  # stable enough: the incumbent is column 0
        idx = torch.arange(v.shape[0])[:, None]
        cand_s[rows, :k], cand_R[rows, :k], cand_o[rows, :k] = v, R_cat[idx, j], o_cat[idx, j]
        if len(turns):
            # the incumbent's in-plane turns, each at its best shift offset, join unconditionally
            R_t = turns @ R[rows, None]  # (c, t, 3, 3)
            S_t = _slices(fv, pts, R_t.reshape(-1, 3, 3)).reshape(len(R_t), len(turns), -1)
            # every origin offset at once: a shift multiplies the image's DFT by a phase, so the
            # correlation term over offsets is one complex matrix product (c·t, M) @ (M, P)
            corr = (band.weighted(rows, origin_px[rows]).conj()[:, None] * S_t) @ ph_orbit.T  # (c, t, P)
            sc = 2 * corr.real - (c2[:, None] * (S_t.real ** 2 + S_t.imag ** 2)).sum(-1, keepdim=True)
            v, j = sc.max(2)
            cand_s[rows, k:], cand_R[rows, k:] = v, R_t
            cand_o[rows, k:] = origin_px[rows, None] + orbit_offsets[j]
    # Pattern search on every kept candidate: each round tries the candidate moved by ± its step
    # about each of the three axes and along each shift axis (the rotation applied in the image
    # frame); a candidate whose position stays best halves its steps. Deterministic, and precise
    # to step / 2^rounds.
    k = kk
    img = torch.arange(n).repeat_interleave(k)  # the image of each flattened candidate
    R_f, o_f, best_f = cand_R.reshape(n * k, 3, 3), cand_o.reshape(n * k, 2), cand_s.reshape(n * k)
    step_r = torch.full((n * k,), math.radians(cfg.refine_step_deg), dtype=torch.float64)
    step_t = torch.full((n * k,), cfg.refine_shift_px, dtype=torch.float64)
    live = torch.ones(n * k, dtype=torch.bool)
    for rnd in range(cfg.refine_rounds):
        if k > 1 and rnd == cfg.keep_rounds:
            # from here on only each image's best candidate is refined further (cost ~ k·keep_rounds
            # + the remaining rounds, instead of k·refine_rounds); the others keep their scores,
            # which the refined best can only exceed, so the final argmax still picks it
            live = torch.zeros(n * k, dtype=torch.bool)
            live[torch.arange(n) * k + best_f.reshape(n, k).argmax(1)] = True
        for a in range(0, n * k, cfg.chunk):
            rows = torch.arange(a, min(n * k, a + cfg.chunk))
            rows = rows[live[rows]]
            if len(rows) == 0:
                continue
            m = len(rows)
            # 11 candidates: the current pose (0), ± a step about each axis (1-6, the current
            # origin), ± a step along each shift axis (7-10, the current rotation); so 7 slices
            # and 5 origins' phases serve all 11 scores
            rv = torch.zeros(m, 7, 3, dtype=torch.float64)
            ov = torch.zeros(m, 5, 2, dtype=torch.float64)
            for i in range(3):
                rv[:, 1 + 2 * i, i], rv[:, 2 + 2 * i, i] = step_r[rows], -step_r[rows]
            for i in range(2):
                ov[:, 1 + 2 * i, i], ov[:, 2 + 2 * i, i] = step_t[rows], -step_t[rows]
            cand_r = axis_angle_to_matrix(rv) @ R_f[rows, None]  # (m, 7, 3, 3); 0 = current
            co = o_f[rows, None] + ov  # (m, 5, 2); 0 = current
            S = _slices(fv, pts, cand_r.reshape(-1, 3, 3)).reshape(m, 7, -1)
            Fw = band.weighted(img[rows], co)  # (m, 5, M)
            c2 = band.ctf2(img[rows])[:, None]
            sc = torch.cat([_score(Fw[:, :1], c2, S), _score(Fw[:, 1:], c2, S[:, :1])], 1)  # (m, 11)
            cand = torch.cat([cand_r, cand_r[:, :1].expand(-1, 4, -1, -1)], 1)
            co = torch.cat([co[:, :1].expand(-1, 7, -1), co[:, 1:]], 1)
            j = sc.argmax(1)
            ar = torch.arange(m)
            R_f[rows], o_f[rows], best_f[rows] = cand[ar, j], co[ar, j], sc[ar, j]
            stay = j == 0
            step_r[rows] = torch.where(stay, step_r[rows] / 2, step_r[rows])
            step_t[rows] = torch.where(stay, step_t[rows] / 2, step_t[rows])
    pick = torch.arange(n) * k + best_f.reshape(n, k).argmax(1)
    return R_f[pick], o_f[pick], best_f[pick]


def accumulate(reader: Reader, ids: np.ndarray, R: torch.Tensor, origin_px: torch.Tensor, L: int,
               batch: int = 512) -> Backprojector:
    """Particles ``ids`` at poses R (n, 3, 3), origins (n, 2) px, backprojected (float32
    accumulators: ~3× faster than float64 and within ~4e-7 of it relative to the map's maximum,
    4000 images at 64 px, far below what a search resolves)."""
    bp = Backprojector(L, dtype=torch.float32)
    for s in range(0, len(ids), batch):
        x, c = reader(ids[s:s + batch])
        bp.add(x, R[s:s + batch], origin_px[s:s + batch], c)
    return bp


def reconstruct(reader: Reader, ids: np.ndarray, R: torch.Tensor, origin_px: torch.Tensor, L: int,
                wiener: float = 0.01, batch: int = 512) -> torch.Tensor:
    """Wiener-filtered backprojection (L, L, L) float64 of particles ``ids`` at poses R (n, 3, 3),
    origins (n, 2) px (:func:`accumulate`)."""
    return accumulate(reader, ids, R, origin_px, L, batch).reconstruct(wiener).double()


def projection_matching(reader: Reader, ids: np.ndarray, L: int, R: torch.Tensor, origin_px: torch.Tensor,
                        n_iter: int, cfg: MatchConfig,
                        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                        recon: np.ndarray | None = None, band: BandData | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n_iter`` iterations of reconstruct → :func:`search_poses`, starting from poses R (n, 3, 3)
    and origins (n, 2) px of particles ``ids``. Returns (R, origin_px, the map reconstructed from
    the final poses (L, L, L) in the data's intensity units). ``callback(iteration, R, origin_px)``
    is called after each search (e.g. to report pose error against a ground truth). ``recon``
    (k,) positions in ``ids``: only those particles make the maps (all are searched). ``band``:
    the particles' band data (:meth:`BandData.read` of ``ids`` at ``cfg.radius``) when the
    caller has it."""
    g = torch.Generator().manual_seed(cfg.seed)
    band = band if band is not None else BandData.read(reader, ids, L, cfg.radius)
    R, origin_px = R.double().clone(), origin_px.double().clone()
    use = slice(None) if recon is None else torch.as_tensor(recon, dtype=torch.long)
    rids = ids if recon is None else ids[recon]
    for it in range(n_iter):
        vol = reconstruct(reader, rids, R[use], origin_px[use], L, cfg.wiener)
        R, origin_px, _ = search_poses(prepare_fourier_volume(vol, 2), band, R, origin_px, cfg, g)
        if callback is not None:
            callback(it, R, origin_px)
    return R, origin_px, reconstruct(reader, rids, R[use], origin_px[use], L, cfg.wiener)
