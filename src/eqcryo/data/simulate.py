"""Simulated cryo-EM data sets: images = CTF · shift · projection (+ Gaussian noise).

The image model is :func:`eqcryo.physics.projection.render_images`, the same code path the
decoders use. Definitions (written to ``dataset.json`` too):

- poses uniform on SO(3), or with ``preferred_view`` κ the viewing direction drawn from a
  von Mises–Fisher distribution of concentration κ about the map's z axis (in-plane angle
  uniform): preferred orientations; shifts = RELION origins drawn from N(0, trans_std²) per axis (Å);
- **SNR** = mean over the data set of var(clean, CTF-applied image_i) (whole box) / σ²_noise;
  σ is set from the first ``min(n, 2000)`` clean images (a pilot pass), and the SNR actually
  realised over the whole set is measured and recorded.

Randomness comes in independent streams derived from ``seed`` (poses, shifts, CTF, noise), so
the same seed with another SNR gives identical clean images, poses, shifts and CTFs, and the
noise of image i depends only on (seed, i): chunking never changes the data.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..physics.ctf import ctf_2d
from ..physics.projection import prepare_fourier_volume, render_images
from ..physics.rotations import random_rotations
from .atomic import atomic_path
from .cryodrgn import read_ctf_pkl, write_ctf_pkl, write_pose_pkl
from .errors import InputError
from .mrc import StackWriter, write_volume
from .particles import ParticleTable
from .star import write_star
from .structure import DEFAULT_STRUCTURE, load_structure_volume

__all__ = ["SimulationConfig", "RECIPES", "simulate", "sample_parameters", "render_clean"]

# Stream identifiers: each quantity has its own generator (SeedSequence(seed, spawn_key=(id,))).
_POSES, _SHIFTS, _CTF, _NOISE = 1, 2, 3, 4


@dataclass
class SimulationConfig:
    """Everything that defines a simulated data set (units in the names)."""

    structure: str = DEFAULT_STRUCTURE
    n: int = 3000
    box: int = 64
    apix: float = 6.6
    seed: int = 0
    resolution_angstrom: float | None = None  # molmap resolution, default 2·apix
    map_apix: float | None = None  # voxel size of an input map whose header lacks it
    trans_std_angstrom: float = 20.0
    # None: uniform poses. κ > 0: viewing directions from a von Mises–Fisher distribution about
    # the map's z axis (κ = 10: 90% of views within 40° of it), in-plane angles uniform
    preferred_view: float | None = None
    ctf: bool = True
    ctf_from: str | None = None  # cryoDRGN CTF table to sample rows from
    defocus_min_angstrom: float = 10000.0
    defocus_max_angstrom: float = 25000.0
    defocus_lognormal: tuple[float, float] | None = None  # (median Å, sigma of log)
    astigmatism_std_angstrom: float = 200.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    snr: float | None = None  # None = noiseless
    chunk: int = 10000  # images per .mrcs file
    batch: int = 128  # images per projection batch
    pad: int = 2


#: The paper's data sets (App. C) at two scales. ``paper``: 128 px, 100k images; ``cpu``: 64 px
#: at twice the pixel size, 4000 images. Pixel sizes: ribosome 3.77 Å (cryoAI's 80S config);
#: spliceosome 3.3 Å (so 5NRL's 352 Å fits the 422 Å box, as the 64 px × 6.6 Å CPU sets).
RECIPES: dict[str, dict] = {}
for _name, _apix in (("spliceosome", 3.3), ("ribosome", 3.77)):
    for _level, _snr in (("noiseless", None), ("snr1", 1.0), ("snr0.75", 0.75), ("snr0.625", 0.625),
                         ("snr0.5", 0.5), ("snr0.375", 0.375), ("snr0.25", 0.25)):
        if _name == "spliceosome" and _level not in ("noiseless", "snr1"):
            continue
        RECIPES[f"{_name}-{_level}-paper"] = dict(box=128, apix=_apix, n=100000, snr=_snr,
                                                  defocus_lognormal=(20000.0, 0.3))
        RECIPES[f"{_name}-{_level}-cpu"] = dict(box=64, apix=2 * _apix, n=4000, snr=_snr,
                                                defocus_lognormal=(20000.0, 0.3))


def _rng(seed: int, stream: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, *extra)))


def preferred_view_rotations(n: int, kappa: float, rng: np.random.Generator) -> np.ndarray:
    """Rotations (n, 3, 3) whose viewing direction (third row: the projection axis in the map's
    frame) follows a von Mises–Fisher distribution of concentration ``kappa`` about z, with a
    uniform in-plane angle. P(angle to z < θ) = (1 − e^{−κ(1−cos θ)}) / (1 − e^{−2κ})."""
    u = rng.random(n)
    c = 1.0 + np.log(u + (1.0 - u) * np.exp(-2.0 * kappa)) / kappa  # cos θ, exact inverse CDF
    phi, psi = rng.uniform(0, 2 * np.pi, n), rng.uniform(0, 2 * np.pi, n)
    s = np.sqrt(np.clip(1.0 - c ** 2, 0.0, None))
    v = np.stack([s * np.cos(phi), s * np.sin(phi), c], 1)
    # an orthonormal frame (a, b, v) per view: a ⟂ v from the axis least aligned with v
    helper = np.where(np.abs(v[:, [0]]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    a = np.cross(helper, v)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = np.cross(v, a)
    A = np.stack([a, b, v], 1)  # rows a, b, v: det +1
    cz, sz = np.cos(psi), np.sin(psi)
    Rz = np.zeros((n, 3, 3))
    Rz[:, 0, 0], Rz[:, 0, 1], Rz[:, 1, 0], Rz[:, 1, 1], Rz[:, 2, 2] = cz, -sz, sz, cz, 1.0
    return Rz @ A  # mixes the first two rows only: the third row stays v


def sample_parameters(cfg: SimulationConfig) -> ParticleTable:
    """Poses, shifts and CTFs of the whole data set (small arrays), each from its own stream."""
    n = cfg.n
    g = torch.Generator().manual_seed(int(_rng(cfg.seed, _POSES).integers(2 ** 62)))
    rot = random_rotations(n, g).numpy() if not cfg.preferred_view else \
        preferred_view_rotations(n, cfg.preferred_view, _rng(cfg.seed, _POSES, 1))
    shifts = _rng(cfg.seed, _SHIFTS).normal(0.0, cfg.trans_std_angstrom, (n, 2))
    ctf = None
    if cfg.ctf:
        r = _rng(cfg.seed, _CTF)
        if cfg.ctf_from:
            table, _, _ = read_ctf_pkl(cfg.ctf_from)
            rows = r.integers(0, len(table["defocus_u_angstrom"]), n)
            ctf = {k: v[rows].astype(np.float64) for k, v in table.items()}
        else:
            if cfg.defocus_lognormal is not None:
                med, sig = cfg.defocus_lognormal
                mean = med * np.exp(sig * r.standard_normal(n))
            else:
                if cfg.defocus_max_angstrom < cfg.defocus_min_angstrom:
                    raise InputError("defocus range: the maximum is below the minimum")
                mean = r.uniform(cfg.defocus_min_angstrom, cfg.defocus_max_angstrom, n)
            half_astig = np.abs(r.normal(0.0, cfg.astigmatism_std_angstrom, n)) / 2
            ctf = {
                "defocus_u_angstrom": mean + half_astig,
                "defocus_v_angstrom": mean - half_astig,
                "defocus_angle_degrees": r.uniform(-90.0, 90.0, n),
                "voltage_kv": np.full(n, cfg.voltage_kv),
                "cs_mm": np.full(n, cfg.cs_mm),
                "amplitude_contrast": np.full(n, cfg.amplitude_contrast),
                "phase_shift_degrees": np.zeros(n),
            }
        ctf["bfactor_angstrom2"] = np.zeros(n)
    return ParticleTable(n=n, box=cfg.box, apix=np.full(n, cfg.apix), ctf=ctf, rotations=rot,
                         shifts_angstrom=shifts, source="simulation", source_format="simulation")


def render_clean(fv, t: ParticleTable, ids: np.ndarray, apix: float) -> torch.Tensor:
    """Clean (noise-free) images (k, L, L) float64 of particles ``ids``."""
    L = t.require_box()
    assert t.rotations is not None and t.shifts_angstrom is not None  # (a simulation's table has both)
    R = torch.from_numpy(t.rotations[ids])
    params = t.ctf_params(ids)
    ctf = None if params is None else ctf_2d(L, apix, params, torch.float64)
    origin_px = torch.from_numpy(t.shifts_angstrom[ids] / apix)
    return render_images(fv.slice(R), ctf, origin_px)


def _noise(seed: int, i: int, L: int) -> np.ndarray:
    return _rng(seed, _NOISE, i).standard_normal((L, L))


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("eqcryo", "numpy", "torch", "mrcfile", "starfile", "gemmi"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def simulate(cfg: SimulationConfig, out_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Simulate a data set into ``out_dir``; returns the ``dataset.json`` content.

    Writes ``particles.star`` (RELION 3.1, true poses and CTF), ``particles_NNN.mrcs`` (``chunk``
    images each), ``gt_volume.mrc``, ``gt_poses.pkl`` and ``ctf.pkl`` (cryoDRGN layout) and
    ``dataset.json``. Memory is bounded by ``batch`` images plus the padded volume.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.n < 1 or cfg.box < 8 or cfg.box % 2:
        raise InputError(f"simulate: need n >= 1 and an even box >= 8 (got n={cfg.n}, box={cfg.box})")
    if cfg.snr is not None and not cfg.snr > 0:
        raise InputError(f"simulate: --snr must be > 0 (got {cfg.snr}); use --noiseless for no noise")
    vol = load_structure_volume(cfg.structure, cfg.box, cfg.apix, cfg.resolution_angstrom, cfg.map_apix)
    t = sample_parameters(cfg)
    L, apix = cfg.box, cfg.apix
    fv = prepare_fourier_volume(torch.from_numpy(vol).double(), pad=cfg.pad)

    sigma = None
    if cfg.snr is not None:
        pilot = np.arange(min(cfg.n, 2000))
        var = torch.cat([render_clean(fv, t, pilot[s:s + cfg.batch], apix).var(dim=(-2, -1))
                         for s in range(0, len(pilot), cfg.batch)])
        sigma = math.sqrt(var.mean().item() / cfg.snr)

    n_files = (cfg.n + cfg.chunk - 1) // cfg.chunk
    names, ratio_sum, sig_var, noise_var = [], 0.0, 0.0, 0.0
    bar = tqdm(total=cfg.n, desc="simulate", unit="img", disable=not progress)
    for f in range(n_files):
        lo, hi = f * cfg.chunk, min((f + 1) * cfg.chunk, cfg.n)
        fname = f"particles_{f:03d}.mrcs"
        with StackWriter(out / fname, hi - lo, L, apix) as w:
            for s in range(lo, hi, cfg.batch):
                ids = np.arange(s, min(s + cfg.batch, hi))
                clean = render_clean(fv, t, ids, apix).numpy()
                if sigma is not None:
                    noise = np.stack([_noise(cfg.seed, int(i), L) for i in ids]) * sigma
                    vc, vn = clean.var(axis=(-2, -1)), noise.var(axis=(-2, -1))
                    ratio_sum += float((vc / vn).sum())
                    sig_var += float(vc.sum())
                    noise_var += float(vn.sum())
                    clean = clean + noise
                w.write(s - lo, clean.astype(np.float32))
                bar.update(len(ids))
        names += [f"{i - lo + 1:06d}@{fname}" for i in range(lo, hi)]
    bar.close()
    t.image_names = np.array(names, dtype=object)
    write_star(out / "particles.star", t)
    write_pose_pkl(out / "gt_poses.pkl", t)
    if t.ctf is not None:
        write_ctf_pkl(out / "ctf.pkl", t)
    write_volume(out / "gt_volume.mrc", vol, apix)
    info = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "snr_definition": "mean_i var(clean CTF-applied image_i, whole box) / sigma_noise^2",
        "noise_sigma": sigma,
        "snr_measured_mean_ratio": ratio_sum / cfg.n if sigma is not None else None,
        "snr_measured_ratio_of_means": sig_var / noise_var if sigma is not None else None,
        "files": {"particles": "particles.star", "stacks": [f"particles_{f:03d}.mrcs" for f in range(n_files)],
                  "gt_volume": "gt_volume.mrc", "gt_poses": "gt_poses.pkl",
                  "ctf": "ctf.pkl" if t.ctf is not None else None},
        "conventions": "poses: RELION matrices; shifts: RELION origins (Å); CTF: RELION sign",
        "versions": _versions(),
    }
    with atomic_path(out / "dataset.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    return info
