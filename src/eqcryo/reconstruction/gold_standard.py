"""The gold-standard finish: poses refined independently per half-set up to the stack's own box.

After ab initio at a working box, the particles are split into two fixed random halves. Each
iteration reconstructs each half's map from that half's particles alone, reads the resolution
from the two maps' FSC, and refines each half's poses by a local search against its own map
(:func:`~eqcryo.reconstruction.projection_matching.search_poses` without the global grid:
rotations and shifts, a pattern search whose first steps match the resolution). The images are
read at the smallest even box whose Nyquist covers the band searched (a few shells beyond the
current resolution, so it can improve), up to the stack's box: low-resolution iterations are
cheap and the last ones use every pixel. No pose is ever refined against the other half's
data: the halves share only the band limit (whole shells, read from their FSC), as in RELION's
and cryoSPARC's gold standard, so the FSC beyond the starting resolution measures signal, not
shared noise. At the end each half is reconstructed at the stack's
box; the FSC is masked by :func:`~.resolution.auto_mask` and corrected by phase randomisation
(:func:`~.resolution.gold_standard_fsc`), and the full map is filtered by that FSC.

Units: origins in Å (the same at every box), resolution in Å, ``apix`` Å/px of the stack.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..physics.fsc import FSCResult, fsc
from ..physics.lattice import fourier_resize_3d
from ..physics.projection import prepare_fourier_volume
from ..physics.rotations import geodesic_angle_degrees
from .backprojection import soft_sphere_mask
from .projection_matching import BandData, MatchConfig, Reader, accumulate, reconstruct, search_poses
from .resolution import GoldStandardFSC, auto_mask, fsc_weighted, gold_standard_fsc

__all__ = ["FinishConfig", "FinishResult", "split_halves", "box_for_band", "final_box", "largest_final_box",
           "gold_standard_finish"]


@dataclass
class FinishConfig:
    """Settings of :func:`gold_standard_finish`."""

    max_iters: int = 8  # iterations at most (each: two reconstructions and two local searches)
    margin_shells: float = 4.0  # shells searched beyond the current resolution's
    refine_rounds: int = 4  # pattern-search rounds per iteration (steps halve when nothing is better)
    wiener: float = 0.01
    settle_fraction: float = 0.01  # stop once the resolution improves by less than this fraction ...
    settle_iters: int = 2  # ... for this many iterations at the stack's box
    max_final_box: int | None = None  # the final maps' box at most (memory); None: the stack's
    seed: int = 0


@dataclass
class FinishResult:
    """Poses of every particle after the finish, both halves, the full map and the record."""

    R: torch.Tensor  # (n, 3, 3) float64
    origin_angstrom: torch.Tensor  # (n, 2)
    half: np.ndarray  # (n,) 0 / 1
    half_maps: tuple[torch.Tensor, torch.Tensor]  # (L, L, L) each, the stack's box
    full_map: torch.Tensor  # (L, L, L), all particles, FSC-weighted
    mask: torch.Tensor  # (L, L, L)
    fsc: GoldStandardFSC
    iterations: list[dict] = field(default_factory=list)

    def record(self) -> dict:
        """fsc_halfmaps.json: halves, mask, every curve and the iterations."""
        boxes = [h["box"] for h in self.iterations if "iteration" in h and h["iteration"] > 0]
        return {"n_half1": int((self.half == 0).sum()), "n_half2": int((self.half == 1).sum()),
                "refined_up_to_box": max(boxes) if boxes else None,
                "mask": "automatic (mask.mrc): the map low-pass filtered, thresholded, dilated, soft edge",
                "poses": "refined independently per half", **self.fsc.to_dict(),
                "resolution_0.143_corrected": self.fsc.resolution, "iterations": self.iterations}


def split_halves(n: int, seed: int) -> np.ndarray:
    """Two fixed random halves (n,) of 0 / 1, sizes differing by at most one."""
    return np.random.default_rng(seed).permutation(n) % 2


#: peak bytes of the final reconstruction per voxel of the final box (b³): two halves'
#: twice-oversampled accumulators (complex128 + float64 weights, 8 b³ points each), one absorbed
#: into the other, and the transforms; measured 11.2 GiB at 256 px (docs/benchmarks.md)
FINAL_BYTES_PER_VOXEL = 720


def largest_final_box(memory_bytes: float) -> int:
    """The largest even box whose final reconstruction (:data:`FINAL_BYTES_PER_VOXEL`) fits in
    ``memory_bytes``."""
    b = int((memory_bytes / FINAL_BYTES_PER_VOXEL) ** (1 / 3))
    return max(2, b - b % 2)


def final_box(L: int, apix: float, resolution: float, margin_shells: float, max_box: int | None) -> int:
    """The box of the final maps: the stack's ``L`` when it is at most ``max_box`` (the FSC then
    runs to the stack's Nyquist); else the shells to half again the resolution reached (plus the
    margin), at most ``max_box``: beyond them the half-maps hold no measured signal, and the
    maps are Fourier-padded to ``L`` afterwards."""
    if max_box is None or L <= max_box:
        return L
    radius = min(L / 2 - 1, 1.5 * L * apix / resolution + margin_shells)
    return min(box_for_band(radius, L, 2), max(2, max_box - max_box % 2))


def box_for_band(radius_shells: float, L: int, min_box: int) -> int:
    """The smallest even box (≥ ``min_box``, ≤ L) whose Nyquist (box/2 shells) reaches a band of
    ``radius_shells`` shells plus one. Fourier cropping keeps the box's width in Å, so a
    frequency is the same number of shells at every box."""
    need = 2 * math.ceil(radius_shells + 1)
    return int(min(L, max(min_box, need + need % 2)))


def _resolution(curve: FSCResult) -> float:
    """Å at FSC 0.143, or Nyquist when the curve never crosses it (or the lowest shell's when
    it starts below)."""
    r = curve.resolution(0.143)
    return 2 * curve.apix if r is None and curve.fsc[1] >= 0.143 else (r or curve.box * curve.apix)


def gold_standard_finish(read_at: Callable[[int], Reader], n: int, L: int, apix: float, R: torch.Tensor,
                         origin_angstrom: torch.Tensor, start_box: int, start_resolution: float,
                         cfg: FinishConfig, deadline: float | None = None,
                         log: Callable[[str], None] = print) -> FinishResult:
    """Refine poses R (n, 3, 3) and origins (n, 2) Å per half from ``start_resolution`` Å, then
    reconstruct at the stack's box L (``apix`` Å/px). ``read_at(box)`` gives the images (in
    the data's own units, contrast oriented) and CTFs Fourier-cropped to ``box``; ``deadline``
    (``time.perf_counter()`` seconds) ends the iterations early so that the final
    reconstruction fits before it."""
    t0 = time.perf_counter()
    half = split_halves(n, cfg.seed)
    ids = [np.nonzero(half == h)[0] for h in (0, 1)]
    R, o_A = R.double().clone(), origin_angstrom.double().clone()
    D = L * apix  # the box's width in Å: shells = D / resolution at every box
    g = torch.Generator().manual_seed(cfg.seed)
    # where the halves stand before any refinement: at the start box, from the poses given
    reader0, apix0 = read_at(start_box), apix * L / start_box
    maps0 = [reconstruct(reader0, ids[h], R[ids[h]], o_A[ids[h]] / apix0, start_box, cfg.wiener) for h in (0, 1)]
    res = max(start_resolution, _resolution(fsc(maps0[0], maps0[1], apix0, soft_sphere_mask(start_box))))
    log(f"finish: half-maps {res:.1f} Å at the start ({start_box} px, the poses given, sphere mask)")
    best, flat = math.inf, 0
    history: list[dict] = [{"iteration": 0, "box": start_box, "resolution_angstrom": round(res, 2)}]
    last_cost = 0.0
    for it in range(cfg.max_iters):
        # a resolution is D / res shells at every box (the box's width in Å is the same)
        # whole shells: the band, the one thing both halves share, moves only in steps
        radius_L = min(L / 2 - 1, math.ceil(D / res) + cfg.margin_shells)
        b = box_for_band(radius_L, L, start_box)
        radius = min(b / 2 - 1, radius_L)
        if deadline is not None and it > 0:
            # the next iteration at this box, then the final reconstruction (about half an iteration)
            est = last_cost * (b / history[-1]["box"]) ** 2 * 1.5
            if time.perf_counter() + est > deadline:
                left = deadline - time.perf_counter()
                log(f"finish: stopping before iteration {it + 1} (the time budget leaves {left:.0f} s, an iteration "
                    f"at {b} px takes ~{est / 1.5:.0f} s)")
                break
        t_it = time.perf_counter()
        reader, apix_b = read_at(b), apix * L / b
        maps = [reconstruct(reader, ids[h], R[ids[h]], o_A[ids[h]] / apix_b, b, cfg.wiener) for h in (0, 1)]
        curve = fsc(maps[0], maps[1], apix_b, soft_sphere_mask(b))
        res = _resolution(curve)
        # the search's first steps: a rotation that moves the band's edge by ~2 voxels, 1 px
        step_deg = math.degrees(2.0 / max(radius, 4.0))
        mc = MatchConfig(radius=radius, n_rotations=0, shift_step_px=0.0, refine_rounds=cfg.refine_rounds,
                         refine_step_deg=step_deg, refine_shift_px=1.0, wiener=cfg.wiener, seed=cfg.seed)
        moved = []
        for h in (0, 1):
            band = BandData.read(reader, ids[h], b, radius)
            R_h, o_h, _ = search_poses(prepare_fourier_volume(maps[h], 2), band, R[ids[h]], o_A[ids[h]] / apix_b,
                                       mc, g)
            moved.append(geodesic_angle_degrees(R[ids[h]], R_h))
            R[ids[h]], o_A[ids[h]] = R_h, o_h * apix_b
        last_cost = time.perf_counter() - t_it
        mv = torch.cat(moved)
        history.append({"iteration": it + 1, "box": b, "band_shells": round(radius, 2), "resolution_angstrom":
                        round(res, 2), "step_deg": round(step_deg, 3), "median_move_deg": round(mv.median().item(), 3),
                        "seconds": round(last_cost, 2)})
        log(f"finish {it + 1}: box {b} px, half-maps {res:.1f} Å (sphere mask, before this iteration), band "
            f"{radius:.1f} shells, median move {mv.median().item():.2f}°, {last_cost:.0f} s")
        if b == L:
            flat = flat + 1 if res > best * (1 - cfg.settle_fraction) else 0
            if flat >= cfg.settle_iters:
                break
        best = min(best, res)
    # the final maps, each from its own half, at the stack's box unless the resolution reached
    # (or the memory) calls for fewer shells: then Fourier-padded to the stack's box
    t_end = time.perf_counter()
    bf = final_box(L, apix, res, cfg.margin_shells, cfg.max_final_box)
    if bf < L:  # (only with a max_final_box below L; final_box rounds an odd one down, hence the - 1)
        why = (f"the shells that the half-maps' {res:.1f} Å needs" if bf < (cfg.max_final_box or L) - 1
               else "at most refinement.finish_max_box or what the free memory holds")
        log(f"finish: final maps at {bf} px (Nyquist {2 * apix * L / bf:.1f} Å: {why}), padded to the stack's {L} px")
    reader, apix_f = read_at(bf), apix * L / bf
    bps = [accumulate(reader, ids[h], R[ids[h]], o_A[ids[h]] / apix_f, bf) for h in (0, 1)]
    maps = [bp.reconstruct(cfg.wiener).double() for bp in bps]
    full = bps[0].absorb(bps[1]).reconstruct(cfg.wiener).double()  # every particle; two lattices at most
    del bps
    mask = auto_mask((maps[0] + maps[1]) / 2, apix_f)
    gs = gold_standard_fsc(maps[0], maps[1], apix_f, mask, seed=cfg.seed)
    full = fsc_weighted(full, gs.corrected)
    if bf < L:
        # an image cropped to bf keeps its pixel values, sums along L voxels' worth of path: so
        # the map at bf reads L / bf too high, and is scaled back to read as one made at L
        maps = [fourier_resize_3d(m, L) * (bf / L) for m in maps]
        full = fourier_resize_3d(full, L) * (bf / L)
        mask = auto_mask((maps[0] + maps[1]) / 2, apix)
    now = time.perf_counter()
    history.append({"final": True, "box": bf, "output_box": L, "resolution_angstrom": gs.resolution,
                    "seconds": round(now - t_end, 2), "total_seconds": round(now - t0, 2), "config": asdict(cfg)})
    return FinishResult(R, o_A, half, (maps[0], maps[1]), full, mask, gs, history)
