"""Simulated mixtures: several species and junk shuffled into one stack, with the truth beside it.

A lab's stack holds more than one complex and 10–50% junk picks. :func:`simulate_mixture`
makes such a set from the single-species simulator's parts (:mod:`.simulate`):

- **species** ``(structure, n)``: each rendered as :func:`~.simulate.simulate` would (its own
  poses, shifts and CTFs), its map scaled so that every species' clean CTF-applied images have
  the same mean variance (so "SNR" means the same for each); one noise σ for the whole stack;
- **junk** of four kinds, each with its own CTF and the same noise:
  ``noise`` (pure noise with the particles' standard deviation, signal + noise),
  ``edge`` (a carbon edge: a smoothed intensity step across the box at a random angle and
  offset, through the CTF, twice the particles' signal variance), ``ice`` (a dark smoothed disc
  of 1/6–1/3 of the box at a random place, through the CTF, the same variance) and
  ``aggregate`` (3–5 particles of random species at random offsets up to a quarter box,
  summed).

The order is shuffled; ``truth.csv`` gives each particle's class (1-based species, 0 junk) and
kind; ``gt_volume_<k>.mrc`` holds species k's map at the scale of the images. Streams are
seeded per purpose, as :mod:`.simulate`'s.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ..physics.ctf import ctf_2d
from ..physics.projection import prepare_fourier_volume, render_images
from ..physics.rotations import random_rotations
from .atomic import atomic_path
from .errors import InputError
from .mrc import StackWriter, write_volume
from .particles import ParticleTable
from .simulate import SimulationConfig, _rng, _versions, render_clean, sample_parameters
from .star import write_star
from .structure import load_structure_volume

__all__ = ["JUNK_KINDS", "simulate_mixture", "parse_mix", "parse_junk"]

JUNK_KINDS = ("noise", "edge", "ice", "aggregate")
_SPECIES, _JUNK, _ORDER = 11, 12, 13  # stream identifiers beside simulate's


def parse_mix(text: str) -> list[tuple[str, int]]:
    """``"builtin:5nrl:2400,map.mrc:1600"`` -> [(structure, n), ...] (a structure may hold ':')."""
    out = []
    for item in text.split(","):
        name, sep, count = item.strip().rpartition(":")
        if not sep or not name or not count.isdigit() or int(count) < 1:
            raise InputError(f"--mix {text!r}: each species is STRUCTURE:N with N >= 1 images (got {item!r})")
        out.append((name, int(count)))
    return out


def parse_junk(text: str) -> dict[str, int]:
    """``"800"`` (pure noise) or ``"noise:400,edge:200"`` -> {kind: n}."""
    if text.strip().isdigit():
        return {"noise": int(text)}
    out: dict[str, int] = {}
    for item in text.split(","):
        kind, sep, count = item.strip().partition(":")
        if kind not in JUNK_KINDS or not sep or not count.isdigit():
            raise InputError(f"--junk {text!r}: give N (pure noise) or KIND:N,... with KIND one of "
                             f"{', '.join(JUNK_KINDS)} (got {item!r})")
        out[kind] = out.get(kind, 0) + int(count)
    return out


def _smooth_step(L: int, angle: float, offset_px: float) -> torch.Tensor:
    """(L, L) an intensity step 0 -> 1 across the line at ``offset_px`` from the centre, normal at ``angle``."""
    c = torch.arange(L, dtype=torch.float64) - L / 2
    y, x = torch.meshgrid(c, c, indexing="ij")
    s = x * math.cos(angle) + y * math.sin(angle) - offset_px
    return torch.sigmoid(s / 1.0)  # one-pixel-wide edge


def _soft_disc(L: int, centre: tuple[float, float], radius_px: float) -> torch.Tensor:
    c = torch.arange(L, dtype=torch.float64) - L / 2
    y, x = torch.meshgrid(c, c, indexing="ij")
    r = torch.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2)
    return -torch.sigmoid((radius_px - r) / 1.5)  # dark: ice absorbs


def _apply_ctf(img: torch.Tensor, ctf: torch.Tensor | None) -> torch.Tensor:
    """Real images (k, L, L) through the CTF (k, L, L) on the centred lattice (the simulator's model)."""
    if ctf is None:
        return img
    F = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(img, dim=(-2, -1))), dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(F * ctf, dim=(-2, -1))), dim=(-2, -1)).real


def _normalise(x: torch.Tensor, var: float) -> torch.Tensor:
    """Each image (k, L, L) scaled to variance ``var`` (a constant image stays constant)."""
    v = x.var(dim=(-2, -1), keepdim=True)
    return (x - x.mean(dim=(-2, -1), keepdim=True)) * torch.sqrt(var / v.clamp_min(1e-30))


def simulate_mixture(species: list[tuple[str, int]], junk: dict[str, int], cfg: SimulationConfig,
                     out_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Simulate a shuffled mixture into ``out_dir`` (see the module); returns ``dataset.json``'s content.

    ``cfg`` gives the box, pixel size, SNR, CTF, shifts and seed shared by all; its ``structure``
    and ``n`` are replaced by each species'. Memory: every species' padded map plus a batch.
    """
    out = Path(out_dir)
    if not species:
        raise InputError("simulate --mix: give at least one species")
    if cfg.box < 8 or cfg.box % 2:
        raise InputError(f"simulate: need an even box >= 8 (got {cfg.box})")
    L, apix = cfg.box, cfg.apix
    n_sp = [n for _, n in species]
    n_junk = sum(junk.values())
    n = sum(n_sp) + n_junk
    # each species' table from its own seed; junk gets CTFs from another
    tables, fvs, vols, var = [], [], [], []
    for k, (structure, n_k) in enumerate(species):
        sub = replace(cfg, structure=structure, n=n_k, seed=int(_rng(cfg.seed, _SPECIES, k).integers(2 ** 31)))
        t = sample_parameters(sub)
        vol = load_structure_volume(structure, L, apix, cfg.resolution_angstrom, cfg.map_apix)
        fv = prepare_fourier_volume(torch.from_numpy(vol).double(), pad=cfg.pad)
        pilot = np.arange(min(n_k, 500))
        v = torch.cat([render_clean(fv, t, pilot[s:s + cfg.batch], apix).var(dim=(-2, -1))
                       for s in range(0, len(pilot), cfg.batch)]).mean().item()
        if not v > 0:
            raise InputError(f"{structure}: its projections are empty in a {L} px box at {apix} Å/px")
        tables.append(t)
        fvs.append(fv)
        vols.append(vol)
        var.append(v)
    gain = [math.sqrt(var[0] / v) for v in var]  # every species' clean variance becomes species 1's
    signal_var = var[0]
    sigma = None if cfg.snr is None else math.sqrt(signal_var / cfg.snr)
    total_var = signal_var + (sigma or 0.0) ** 2  # a particle image's variance: the junk's scale
    jt = sample_parameters(replace(cfg, n=max(n_junk, 1), seed=int(_rng(cfg.seed, _JUNK).integers(2 ** 31))))
    jr = _rng(cfg.seed, _JUNK, 1)

    # sources: (class 1..S or 0, kind, index within its source)
    src = [(k + 1, "species", j) for k, n_k in enumerate(n_sp) for j in range(n_k)]
    src += [(0, kind, j) for kind, c in junk.items() for j in range(c)]
    order = _rng(cfg.seed, _ORDER).permutation(n)
    src = [src[i] for i in order]
    junk_index = {}
    j0 = 0
    for kind, c in junk.items():
        junk_index[kind] = j0
        j0 += c

    rot = np.zeros((n, 3, 3))
    shifts = np.zeros((n, 2))
    ctf_cols: dict[str, np.ndarray] | None = None if not cfg.ctf else \
        {f: np.zeros(n) for f in (tables[0].ctf or {})}
    junk_R = random_rotations(max(n_junk, 1), torch.Generator().manual_seed(cfg.seed)).numpy()

    def junk_image(kind: str, ctf: torch.Tensor | None) -> torch.Tensor:
        if kind == "noise":
            return torch.zeros(L, L, dtype=torch.float64)
        if kind == "edge":
            img = _smooth_step(L, jr.uniform(0, 2 * np.pi), jr.uniform(-L / 4, L / 4))
            return _normalise(_apply_ctf(img[None], ctf), 2 * signal_var)[0]
        if kind == "ice":
            img = _soft_disc(L, tuple(jr.uniform(-L / 4, L / 4, 2)), jr.uniform(L / 6, L / 3))
            return _normalise(_apply_ctf(img[None], ctf), 2 * signal_var)[0]
        # aggregate: a few particles of random species, overlapping
        img = torch.zeros(L, L, dtype=torch.float64)
        for _ in range(int(jr.integers(3, 6))):
            k = int(jr.integers(len(species)))
            R = torch.from_numpy(random_rotations(1, torch.Generator().manual_seed(int(jr.integers(2 ** 31)))).numpy())
            o = torch.from_numpy(jr.uniform(-L / 4, L / 4, (1, 2)))
            img = img + gain[k] * render_images(fvs[k].slice(R), None if ctf is None else ctf[None], o)[0]
        return img

    out.mkdir(parents=True, exist_ok=True)
    noise_rng = _rng(cfg.seed, _JUNK, 2)
    n_files = (n + cfg.chunk - 1) // cfg.chunk
    names = []
    bar = tqdm(total=n, desc="simulate mixture", unit="img", disable=not progress)
    for f in range(n_files):
        lo, hi = f * cfg.chunk, min((f + 1) * cfg.chunk, n)
        fname = f"particles_{f:03d}.mrcs"
        with StackWriter(out / fname, hi - lo, L, apix) as w:
            for s in range(lo, hi, cfg.batch):
                imgs = []
                for p in range(s, min(s + cfg.batch, hi)):
                    cls, kind, j = src[p]
                    if cls:
                        t = tables[cls - 1]
                        assert t.rotations is not None and t.shifts_angstrom is not None  # (a simulation's)
                        img = gain[cls - 1] * render_clean(fvs[cls - 1], t, np.array([j]), apix)[0]
                        rot[p], shifts[p] = t.rotations[j], t.shifts_angstrom[j]
                        params = None if t.ctf is None else {k2: v2[j] for k2, v2 in t.ctf.items()}
                    else:
                        jj = junk_index[kind] + j
                        params = None if jt.ctf is None else {k2: v2[jj] for k2, v2 in jt.ctf.items()}
                        ctf = None if params is None else ctf_2d(
                            L, apix, {k2: torch.tensor([float(v2)], dtype=torch.float64) for k2, v2 in params.items()},
                            torch.float64)[0]
                        img = junk_image(kind, ctf)
                        rot[p] = junk_R[jj]
                    if ctf_cols is not None and params is not None:
                        for k2 in ctf_cols:
                            ctf_cols[k2][p] = params[k2]
                    imgs.append(img)
                x = torch.stack(imgs).numpy()
                if sigma is not None:
                    x = x + noise_rng.standard_normal(x.shape) * sigma
                for i, p in enumerate(range(s, s + len(imgs))):  # pure noise: the particles' std
                    if src[p][1] == "noise":
                        x[i] = noise_rng.standard_normal((L, L)) * math.sqrt(total_var)
                w.write(s - lo, x.astype(np.float32))
                bar.update(len(imgs))
        names += [f"{i - lo + 1:06d}@{fname}" for i in range(lo, hi)]
    bar.close()
    table = ParticleTable(n=n, box=L, apix=np.full(n, apix), ctf=ctf_cols, rotations=rot, shifts_angstrom=shifts,
                          source="simulation", source_format="simulation")
    table.image_names = np.array(names, dtype=object)
    write_star(out / "particles.star", table)
    truth = pd.DataFrame({"particle": np.arange(1, n + 1), "class": [c for c, _, _ in src],
                          "kind": [kind if c == 0 else f"species{c}" for c, kind, _ in src]})
    with atomic_path(out / "truth.csv") as tmp:
        truth.to_csv(tmp, index=False)
    for k, vol in enumerate(vols):
        write_volume(out / f"gt_volume_{k + 1}.mrc", vol * gain[k], apix)
    info = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()
                   if k not in ("structure", "n")},
        "n": n,
        "species": [{"class": k + 1, "structure": s, "n": c, "gain": gain[k], "gt_volume": f"gt_volume_{k + 1}.mrc"}
                    for k, (s, c) in enumerate(species)],
        "junk": junk,
        "noise_sigma": sigma,
        "signal_variance": signal_var,
        "snr_definition": "every species: mean_i var(clean CTF-applied image_i, whole box) / sigma_noise^2",
        "files": {"particles": "particles.star", "truth": "truth.csv",
                  "stacks": [f"particles_{f:03d}.mrcs" for f in range(n_files)]},
        "conventions": "poses: RELION matrices (junk: random, meaningless); shifts: RELION origins (Å)",
        "versions": _versions(),
    }
    with atomic_path(out / "dataset.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    return info
