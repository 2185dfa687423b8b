"""RELION STAR files (3.0 without optics table, 3.1+ and 5 with one) through ``starfile``.

Reading maps columns to :class:`~eqcryo.data.particles.ParticleTable` fields:

=======================================  =====================================================
RELION                                   eqcryo
=======================================  =====================================================
rlnImageName ``idx@path`` (1-based)      images (path resolved against --datadir, then the
                                         STAR file's folder)
rlnAngleRot/Tilt/Psi (deg)               rotations (via :mod:`eqcryo.physics.rotations`)
rlnOriginXAngst/YAngst (Å), or           shifts_angstrom (RELION origin)
rlnOriginX/Y (px, RELION 3.0)
rlnDefocusU/V (Å), rlnDefocusAngle (deg) ctf defocus_u/v_angstrom, defocus_angle_degrees
rlnVoltage, rlnSphericalAberration,      ctf voltage_kv, cs_mm, amplitude_contrast
rlnAmplitudeContrast (optics or particle)
rlnPhaseShift (deg), rlnCtfBfactor (Å²)  ctf phase_shift_degrees, bfactor_angstrom2
rlnImagePixelSize / rlnDetectorPixelSize apix (per optics group)
·1e4/rlnMagnification
rlnImageSize                             box
=======================================  =====================================================

A missing amplitude contrast defaults to 0.1 (as cryoDRGN); a note is recorded.
Writing produces the RELION 3.1 layout (``data_optics`` + ``data_particles``, origins in Å),
which RELION 3.1-5 and cryoSPARC import.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
import torch
from starfile.writer import StarWriter

from ..physics.rotations import euler_relion_to_matrix, matrix_to_euler_relion
from .atomic import atomic_path, require_file
from .errors import InputError
from .particles import ImageSource, ParticleTable, resolve_image_path

__all__ = ["read_star", "write_star", "parse_image_names", "DEFAULT_AMPLITUDE_CONTRAST"]

DEFAULT_AMPLITUDE_CONTRAST = 0.1

_CTF_COLS = {
    "rlnDefocusU": "defocus_u_angstrom",
    "rlnDefocusV": "defocus_v_angstrom",
    "rlnDefocusAngle": "defocus_angle_degrees",
    "rlnVoltage": "voltage_kv",
    "rlnSphericalAberration": "cs_mm",
    "rlnAmplitudeContrast": "amplitude_contrast",
    "rlnPhaseShift": "phase_shift_degrees",
    "rlnCtfBfactor": "bfactor_angstrom2",
}
_OPTICS_OWNED = {"rlnOpticsGroup", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                 "rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality"}
_PARTICLE_OWNED = {"rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginX", "rlnOriginY",
                   "rlnOriginXAngst", "rlnOriginYAngst", "rlnOpticsGroup", *_CTF_COLS}


def numeric(values, path: Path, column: str, integer: bool = False) -> np.ndarray:
    """``values`` as float64 (or int64), or an :class:`InputError` naming the first particle whose
    ``column`` holds something that is not a number."""
    a = np.asarray(values)
    try:
        out = a.astype(np.float64)
    except (ValueError, TypeError):
        for i, v in enumerate(a.ravel()):
            try:
                float(v)
            except (ValueError, TypeError):
                raise InputError(f"{path}: particle {i}: {column} is {str(v)!r}, not a number") from None
        raise InputError(f"{path}: {column} holds values that are not numbers") from None
    if integer:
        bad = ~np.isfinite(out) | (out != np.round(out))
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            raise InputError(f"{path}: particle {i}: {column} is {a.ravel()[i]!s}, not a whole number")
        return out.astype(np.int64)
    return out


def parse_image_names(names, star_path: Path, datadir: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray]:
    """``"idx@path"`` names (1-based idx) -> (absolute paths, 0-based indices).

    A name without ``idx@`` is RELION's way to name a single-image file; it gets index -1 here,
    which :meth:`ImageSource.validate <eqcryo.data.particles.ImageSource.validate>` accepts only
    for a file that holds exactly one image (never silently image 1 of a stack).

    Paths are found by :func:`~eqcryo.data.particles.resolve_image_path` (``datadir``, then
    beside the STAR file).
    """
    paths, idx = [], []
    cache: dict[str, str] = {}
    for i, name in enumerate(names):
        s = str(name)
        if "@" in s:
            a, p = s.split("@", 1)
            try:
                k = int(a)
            except ValueError:
                raise InputError(f"{star_path}: particle {i}: rlnImageName {s!r} is not of the form idx@path") from None
        else:
            k, p = 0, s  # -> index -1: "the file's only image"
        if k < 1 and "@" in s:
            raise InputError(f"{star_path}: particle {i}: image index {k} in {s!r} must be >= 1 (RELION counts from 1)")
        if p not in cache:
            cache[p] = resolve_image_path(p, star_path, datadir)
        paths.append(cache[p])
        idx.append(k - 1)
    return np.array(paths, dtype=object), np.array(idx, dtype=np.int64)


def _blocks(path: Path) -> tuple[pd.DataFrame | None, pd.DataFrame]:
    require_file(path)
    try:
        d = starfile.read(path, always_dict=True)
    except Exception as e:
        raise InputError(f"{path}: could not parse as a STAR file: {e}") from None
    d = {k: v for k, v in d.items() if isinstance(v, pd.DataFrame)}
    optics = d.get("optics")
    parts = d.get("particles")
    if parts is None:
        others = [v for k, v in d.items() if k != "optics"]
        if len(others) != 1:
            raise InputError(f"{path}: expected a data_particles block (or one data block), found {list(d)}")
        parts = others[0]
    return optics, parts.reset_index(drop=True)


def _data_row_lines(path: Path, block: str) -> list[int]:
    """1-based line numbers of the data rows of ``data_<block>`` (for messages)."""
    lines, inside, out = path.read_text(errors="replace").splitlines(), False, []
    for i, line in enumerate(lines, 1):
        t = line.strip()
        if t.startswith("data_"):
            inside = t == f"data_{block}"
        elif inside and t and not t.startswith(("loop_", "_", "#")):
            out.append(i)
    return out


def _refuse_duplicate_optics_groups(path: Path, optics: pd.DataFrame) -> None:
    """An optics group defined twice is ambiguous (which voltage? which pixel size?): refused."""
    if "rlnOpticsGroup" not in optics:
        return
    groups = numeric(optics["rlnOpticsGroup"].to_numpy(), path, "data_optics rlnOpticsGroup", integer=True)
    seen: dict[int, int] = {}
    for row, g in enumerate(groups):
        if int(g) in seen:
            lines = _data_row_lines(path, "optics")
            where = (f"lines {lines[seen[int(g)]]} and {lines[row]}" if len(lines) == len(groups)
                     else f"rows {seen[int(g)] + 1} and {row + 1} of data_optics")
            raise InputError(f"{path}: optics group {int(g)} is defined twice ({where}); each group must be "
                             f"defined once")
        seen[int(g)] = row


def read_star(path: str | os.PathLike, datadir: str | os.PathLike | None = None, box: int | None = None,
              apix: float | None = None, amplitude_contrast: float | None = None) -> ParticleTable:
    """Read a RELION STAR file into a :class:`ParticleTable` (images are not opened yet).

    ``box`` / ``apix`` override (or supply) what the file and image headers say.
    """
    path = Path(path)
    optics, parts = _blocks(path)
    if optics is not None:
        _refuse_duplicate_optics_groups(path, optics)
    n = len(parts)
    notes: list[str] = []
    if n == 0:
        raise InputError(f"{path}: the particle block is empty")

    if "rlnOpticsGroup" in parts:
        og = numeric(parts["rlnOpticsGroup"].to_numpy(), path, "rlnOpticsGroup", integer=True)
    else:
        og = np.ones(n, dtype=np.int64)

    # Per-particle view of optics columns (optics table joined on the group).
    def col(name: str) -> np.ndarray | None:
        if name in parts:
            return parts[name].to_numpy()
        if optics is not None and name in optics:
            if "rlnOpticsGroup" not in optics:
                raise InputError(f"{path}: data_optics has no rlnOpticsGroup column")
            table = dict(zip(numeric(optics["rlnOpticsGroup"], path, "data_optics rlnOpticsGroup", integer=True),
                             optics[name]))
            missing = set(np.unique(og)) - set(table)
            if missing:
                raise InputError(f"{path}: particles use optics group(s) {sorted(int(g) for g in missing)} that "
                                 f"data_optics lacks")
            return np.array([table[g] for g in og])
        return None

    # Pixel size.
    px = col("rlnImagePixelSize")
    if px is not None:
        px = numeric(px, path, "rlnImagePixelSize")
    elif col("rlnDetectorPixelSize") is not None and col("rlnMagnification") is not None:
        px = numeric(col("rlnDetectorPixelSize"), path, "rlnDetectorPixelSize") * 1e4 / \
            numeric(col("rlnMagnification"), path, "rlnMagnification")
    if apix is not None:
        px = np.full(n, float(apix))
    if px is not None and not (np.isfinite(px) & (px > 0)).all():
        i = int(np.nonzero(~(np.isfinite(px) & (px > 0)))[0][0])
        raise InputError(f"{path}: particle {i}: pixel size {px[i]:g} Å; expected > 0 (or give --apix)")

    # Images.
    images = names = None
    if "rlnImageName" in parts:
        names = parts["rlnImageName"].astype(str).to_numpy()
        paths, idx = parse_image_names(names, path, datadir)
        images = ImageSource(paths, idx, origin=str(path))
    size_col = col("rlnImageSize")
    bx: int | None = None
    if box is not None:
        bx = int(box)
    elif size_col is not None:
        u = np.unique(numeric(size_col, path, "rlnImageSize", integer=True))
        if (u <= 0).any():
            raise InputError(f"{path}: rlnImageSize {int(u.min())}; expected > 0")
        if len(u) > 1:
            raise InputError(f"{path}: optics groups have different image sizes {[int(x) for x in u]}")
        bx = int(u[0])
    elif images is not None and Path(images.paths[0]).exists():
        bx = images.box()
    if px is None and images is not None and Path(images.paths[0]).exists():
        hp = images.header_apix()
        if hp:
            px = np.full(n, hp)
            notes.append(f"pixel size {hp} Å taken from the MRC header of {images.paths[0]}")

    # Poses.
    rot = euler = None
    angle_cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    present = [c for c in angle_cols if c in parts]
    if present and len(present) < 3:
        raise InputError(f"{path}: has {present} but is missing required column(s) "
                         f"{[c for c in angle_cols if c not in parts]} for poses")
    if present:
        euler = np.stack([numeric(parts[c].to_numpy(), path, c) for c in angle_cols], 1)
        if not np.isfinite(euler).all():
            i = int(np.nonzero(~np.isfinite(euler).all(1))[0][0])
            raise InputError(f"{path}: particle {i}: Euler angles are not finite")
        rot = euler_relion_to_matrix(*torch.from_numpy(euler).T).numpy()
    shifts = None
    if "rlnOriginXAngst" in parts or "rlnOriginYAngst" in parts:
        for c in ("rlnOriginXAngst", "rlnOriginYAngst"):
            if c not in parts:
                raise InputError(f"{path}: missing required column {c} (the other origin column is present)")
        shifts = np.stack([numeric(parts[c].to_numpy(), path, c) for c in ("rlnOriginXAngst", "rlnOriginYAngst")], 1)
    elif "rlnOriginX" in parts or "rlnOriginY" in parts:
        for c in ("rlnOriginX", "rlnOriginY"):
            if c not in parts:
                raise InputError(f"{path}: missing required column {c} (the other origin column is present)")
        if px is None:
            raise InputError(f"{path}: origins are in pixels (rlnOriginX/Y) but the pixel size is unknown; "
                             f"give it with --apix")
        shifts = np.stack([numeric(parts[c].to_numpy(), path, c) for c in ("rlnOriginX", "rlnOriginY")], 1)
        shifts = shifts * px[:, None]

    if shifts is not None and not np.isfinite(shifts).all():
        i = int(np.nonzero(~np.isfinite(shifts).all(1))[0][0])
        raise InputError(f"{path}: particle {i}: origin (shift) is not finite")

    # CTF.
    ctf = None
    if any(c in parts for c in ("rlnDefocusU", "rlnDefocusV")):
        ctf = {}
        for c in ("rlnDefocusU", "rlnDefocusV", "rlnVoltage", "rlnSphericalAberration"):
            v = col(c)
            if v is None:
                raise InputError(f"{path}: CTF column {c} is missing (needed with rlnDefocusU)")
            ctf[_CTF_COLS[c]] = numeric(v, path, c)
        for c, default in (("rlnDefocusAngle", 0.0), ("rlnPhaseShift", 0.0), ("rlnCtfBfactor", 0.0),
                           ("rlnAmplitudeContrast", None)):
            v = col(c)
            if v is None:
                if c == "rlnAmplitudeContrast":
                    default = DEFAULT_AMPLITUDE_CONTRAST if amplitude_contrast is None else amplitude_contrast
                    notes.append(f"no rlnAmplitudeContrast: using {default}")
                v = np.full(n, default)
            ctf[_CTF_COLS[c]] = numeric(v, path, c)
        if amplitude_contrast is not None:
            ctf["amplitude_contrast"] = np.full(n, float(amplitude_contrast))
        for k, v in ctf.items():
            if not np.isfinite(v).all():
                i = int(np.nonzero(~np.isfinite(v))[0][0])
                raise InputError(f"{path}: particle {i}: CTF field {k} is not finite")

    extra = parts[[c for c in parts.columns if c not in _PARTICLE_OWNED]].copy()
    optics_extra = None
    if optics is not None:
        optics_extra = optics.set_index(optics["rlnOpticsGroup"].astype(np.int64))
        optics_extra = optics_extra[[c for c in optics_extra.columns if c not in _OPTICS_OWNED]]
    return ParticleTable(n=n, box=bx, apix=px, images=images, image_names=names, ctf=ctf, rotations=rot,
                         shifts_angstrom=shifts, optics_group=og, optics_extra=optics_extra, extra=extra,
                         euler_degrees=euler, source=str(path), source_format="star", notes=notes)


def _euler_for_write(t: ParticleTable) -> np.ndarray:
    assert t.rotations is not None  # (the caller writes poses)
    if t.euler_degrees is not None:
        R = euler_relion_to_matrix(*torch.from_numpy(t.euler_degrees).T).numpy()
        if np.allclose(R, t.rotations, atol=1e-9):
            return t.euler_degrees
    return matrix_to_euler_relion(torch.from_numpy(np.asarray(t.rotations, np.float64))).numpy()


def star_blocks(t: ParticleTable, image_names: np.ndarray | None = None) -> dict[str, pd.DataFrame]:
    """The ``optics`` and ``particles`` blocks (RELION 3.1 layout) for a table."""
    names = image_names if image_names is not None else t.image_names
    if t.apix is None:
        raise InputError(f"{t.source}: pixel size unknown; give it with --apix to write a STAR file")
    box = t.require_box()
    groups = np.unique(t.optics_group)
    orows = []
    for g in groups:
        i = int(np.nonzero(t.optics_group == g)[0][0])
        row = {"rlnOpticsGroup": int(g), "rlnOpticsGroupName": f"opticsGroup{g}"}
        if t.optics_extra is not None and g in t.optics_extra.index:
            row.update(t.optics_extra.loc[g].to_dict())
        if t.ctf is not None:
            row.update({"rlnVoltage": t.ctf["voltage_kv"][i], "rlnSphericalAberration": t.ctf["cs_mm"][i],
                        "rlnAmplitudeContrast": t.ctf["amplitude_contrast"][i]})
        row.update({"rlnImagePixelSize": float(t.apix[i]), "rlnImageSize": int(box), "rlnImageDimensionality": 2})
        orows.append(row)
    optics = pd.DataFrame(orows)
    p: dict[str, np.ndarray] = {}
    if names is not None:
        p["rlnImageName"] = np.asarray(names, dtype=object)
    p["rlnOpticsGroup"] = t.optics_group.astype(np.int64)
    if t.ctf is not None:
        for c in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift"):
            p[c] = t.ctf[_CTF_COLS[c]]
        p["rlnCtfBfactor"] = t.ctf["bfactor_angstrom2"]
    if t.rotations is not None:
        e = _euler_for_write(t)
        p["rlnAngleRot"], p["rlnAngleTilt"], p["rlnAnglePsi"] = e[:, 0], e[:, 1], e[:, 2]
    if t.shifts_angstrom is not None:
        p["rlnOriginXAngst"], p["rlnOriginYAngst"] = t.shifts_angstrom[:, 0], t.shifts_angstrom[:, 1]
    parts = pd.DataFrame(p)
    if t.extra is not None and len(t.extra.columns):
        parts = pd.concat([t.extra.reset_index(drop=True), parts], axis=1)
    return {"optics": optics, "particles": parts}


def write_star(path: str | os.PathLike, t: ParticleTable, image_names: np.ndarray | None = None) -> None:
    """Write a RELION 3.1-layout STAR file atomically."""
    blocks = star_blocks(t, image_names)
    text = StarWriter(blocks, filename=None, float_format="%.10g").to_string()
    # starfile's first line carries the time of writing; RELION's own header keeps outputs
    # byte-identical for identical inputs.
    text = "# version 30001 (written by eqcryo)\n" + text.split("\n", 1)[1]
    with atomic_path(path) as tmp:
        tmp.write_text(text)
