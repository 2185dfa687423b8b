"""cryoDRGN pickles: poses ``(rot (N, 3, 3), trans (N, 2))`` and CTF ``(N, 9)``.

- ``rot`` is the RELION matrix; ``trans`` is RELION's origin divided by the box size (a
  fraction of the box), exactly what cryoDRGN's ``parse_pose_star`` / ``parse_pose_csparc``
  write. A bare ``rot`` array (no translations) is accepted on reading.
- CTF columns: box (px), pixel size (Å), defocus U, defocus V (Å), astigmatism angle (°),
  voltage (kV), Cs (mm), amplitude contrast, phase shift (°); float32 as cryoDRGN writes.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from .atomic import atomic_path, require_file
from .errors import InputError
from .particles import ParticleTable

__all__ = ["read_pose_pkl", "write_pose_pkl", "read_ctf_pkl", "write_ctf_pkl", "ctf_to_array", "ctf_from_array"]

CTF_COLUMNS = ("box_px", "apix_angstrom", "defocus_u_angstrom", "defocus_v_angstrom", "defocus_angle_degrees",
               "voltage_kv", "cs_mm", "amplitude_contrast", "phase_shift_degrees")


#: what a cryoDRGN pickle may reference: numpy arrays, dtypes and scalars (containers, numbers
#: and strings need no lookup). Anything else — os.system, a class with a __reduce__ — is refused
#: before it is called, so a crafted file cannot run code.
_ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a cryoDRGN pickle holds only numpy "
                                     f"arrays and tuples")


def _load(path: Path):
    require_file(path)
    try:
        with open(path, "rb") as fh:
            return _ArrayUnpickler(fh).load()
    except Exception as e:
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise InputError(f"{path}: not a readable cryoDRGN pickle ({msg})") from None


#: the most numbers a pickle's nested lists may expand to (~8 GB as float64); far beyond any pose
#: or CTF file (9 + 2 numbers per particle), far below what a few hundred bytes of shared
#: references can claim (a list of the same list of the same list ... is 10^12 numbers)
MAX_NUMBERS = 10**9


def _count_numbers(x: object, memo: dict[int, int], depth: int = 0) -> int:
    """How many numbers ``x`` expands to, each shared sub-list counted once per use but walked
    once (so a crafted pickle is measured in microseconds, not built)."""
    if isinstance(x, np.ndarray):
        return int(x.size)
    if not isinstance(x, (list, tuple)):
        return 1
    if depth > 64:
        return MAX_NUMBERS + 1  # (no pose file nests deeper than 3)
    key = id(x)
    if key not in memo:
        memo[key] = sum(_count_numbers(v, memo, depth + 1) for v in x)
    return memo[key]


def _array(x, path: Path, what: str) -> np.ndarray:
    n = _count_numbers(x, {})
    if n > MAX_NUMBERS:
        raise InputError(f"{path}: {what} would expand to more than {MAX_NUMBERS:.0e} numbers (nested lists "
                         f"sharing references); not a cryoDRGN pickle")
    try:
        return np.asarray(x, dtype=np.float64)
    except (ValueError, TypeError):
        raise InputError(f"{path}: {what} are not an array of numbers ({type(x).__name__})") from None
    except MemoryError:
        raise InputError(f"{path}: {what} do not fit in memory ({n} numbers)") from None


def read_pose_pkl(path: str | os.PathLike, box: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(rotations (N, 3, 3) float64, origins in **pixels** (N, 2) or None) from a cryoDRGN pose pkl."""
    path = Path(path)
    obj = _load(path)
    if isinstance(obj, (tuple, list)):
        if len(obj) not in (1, 2):
            raise InputError(f"{path}: expected (rot, trans) in a cryoDRGN pose pickle, got a tuple of {len(obj)}")
        rot, trans = obj[0], (obj[1] if len(obj) == 2 else None)
    elif isinstance(obj, np.ndarray):
        rot, trans = obj, None
    else:
        raise InputError(f"{path}: expected (rot (N, 3, 3), trans (N, 2)) in a cryoDRGN pose pickle, "
                         f"found a {type(obj).__name__}")
    rot = _array(rot, path, "rotations")
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise InputError(f"{path}: rotations must have shape (N, 3, 3), got {rot.shape}"
                         + ("; is this a CTF pickle?" if rot.ndim == 2 and rot.shape[1] == 9 else ""))
    if not np.isfinite(rot).all():
        first = int(np.nonzero(~np.isfinite(rot).all((1, 2)))[0][0])
        raise InputError(f"{path}: particle {first}: non-finite rotation")
    err = np.abs(rot @ rot.transpose(0, 2, 1) - np.eye(3)).max((1, 2))
    det = np.linalg.det(rot)
    bad = (err > 1e-3) | (det < 0)
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise InputError(f"{path}: particle {i}: not a rotation matrix (|R Rᵀ − I| = {err[i]:.2g}, "
                         f"det = {det[i]:.3g}; expected orthonormal with det +1)")
    if trans is not None:
        trans = _array(trans, path, "translations")
        if trans.shape != (len(rot), 2):
            raise InputError(f"{path}: translations must have shape ({len(rot)}, 2), got {trans.shape}")
        trans = trans * box
    return rot, trans


def write_pose_pkl(path: str | os.PathLike, t: ParticleTable, dtype=np.float64) -> None:
    """Write ``(rot, trans)`` with ``trans = origin_px / box`` atomically."""
    if t.rotations is None:
        raise InputError(f"{t.source}: no poses to write")
    box = t.require_box()
    px = t.shifts_px()
    sh = px if px is not None else np.zeros((t.n, 2))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            pickle.dump((np.asarray(t.rotations, dtype=dtype), np.asarray(sh / box, dtype=dtype)), fh)


def ctf_to_array(t: ParticleTable) -> np.ndarray:
    """The (N, 9) float32 cryoDRGN CTF array of a table."""
    c = t.ctf_array()
    if t.apix is None:
        raise InputError(f"{t.source}: pixel size unknown; give it with --apix")
    box = t.require_box()
    cols = [np.full(t.n, box), t.apix, c["defocus_u_angstrom"], c["defocus_v_angstrom"], c["defocus_angle_degrees"],
            c["voltage_kv"], c["cs_mm"], c["amplitude_contrast"], c["phase_shift_degrees"]]
    return np.stack(cols, 1).astype(np.float32)


def ctf_from_array(arr: np.ndarray, path: str = "") -> tuple[dict[str, np.ndarray], int, np.ndarray]:
    """(ctf dict, box, apix (N,)) from a (N, 9) array."""
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{path}: expected a cryoDRGN CTF array (N, 9), found a {type(arr).__name__}"
                         + ("; is this a pose pickle?" if isinstance(arr, (tuple, list)) else ""))
    arr = _array(arr, Path(path), "CTF parameters")
    if arr.ndim != 2 or arr.shape[1] != 9:
        raise InputError(f"{path}: a cryoDRGN CTF array must have shape (N, 9), got {arr.shape}")
    if not np.isfinite(arr).all():
        i = int(np.nonzero(~np.isfinite(arr).all(1))[0][0])
        raise InputError(f"{path}: particle {i}: non-finite CTF parameters")
    a = arr.astype(np.float64)
    if len(a) == 0:
        raise InputError(f"{path}: the CTF array is empty")
    for j, k in ((0, "box_px"), (1, "apix_angstrom"), (5, "voltage_kv")):
        if (a[:, j] <= 0).any():
            i = int(np.nonzero(a[:, j] <= 0)[0][0])
            raise InputError(f"{path}: particle {i}: {k} is {a[i, j]:g}; expected > 0")
    if (a[:, 0] != np.round(a[:, 0])).any() or len(np.unique(a[:, 0])) > 1:
        raise InputError(f"{path}: box_px column holds {np.unique(a[:, 0])[:3].tolist()}; expected one whole number")
    ctf = {k: a[:, j] for j, k in enumerate(CTF_COLUMNS) if j >= 2}
    ctf["bfactor_angstrom2"] = np.zeros(len(a))
    return ctf, int(a[0, 0]), a[:, 1].copy()


def read_ctf_pkl(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], int, np.ndarray]:
    path = Path(path)
    return ctf_from_array(_load(path), str(path))


def write_ctf_pkl(path: str | os.PathLike, t: ParticleTable) -> None:
    arr = ctf_to_array(t)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            pickle.dump(arr, fh)
