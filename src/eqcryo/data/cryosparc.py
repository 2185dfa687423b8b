"""cryoSPARC ``.cs`` particle files (numpy structured arrays).

- ``blob/path`` (a leading ``>`` is stripped) + ``blob/idx`` (0-based) -> images; paths are
  found by :func:`~eqcryo.data.particles.resolve_image_path` (``--datadir``, then beside the .cs).
- ``ctf/*``: defocus ``df1_A``/``df2_A`` (Å), ``df_angle_rad`` and ``phase_shift_rad`` (radians
  -> degrees), ``accel_kv``, ``cs_mm``, ``amp_contrast``, ``bfactor`` when present.
- ``alignments3D/pose`` (axis-angle; its exponential is the transpose of the RELION matrix) and
  ``alignments3D/shift`` (px, taken as RELION origins, as cryoDRGN does). Files with only
  ``alignments2D`` carry no 3-D poses.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..physics.rotations import cryosparc_pose_to_matrix
from .atomic import require_file
from .errors import InputError
from .particles import ImageSource, ParticleTable, resolve_image_path

__all__ = ["read_cs"]


def read_cs(path: str | os.PathLike, datadir: str | os.PathLike | None = None, box: int | None = None,
            apix: float | None = None) -> ParticleTable:
    """Read a cryoSPARC ``.cs`` file into a :class:`ParticleTable`."""
    path = Path(path)
    require_file(path)
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as e:
        raise InputError(f"{path}: not a cryoSPARC .cs (numpy structured array) file: {e}") from None
    if a.dtype.names is None:
        raise InputError(f"{path}: not a cryoSPARC .cs file (no named fields)")
    names = set(a.dtype.names)
    n = len(a)
    notes = []
    if n == 0:
        raise InputError(f"{path}: holds no particles")

    #: the shape of one particle's value of each field eqcryo reads (scalars: ())
    widths = {"blob/shape": (2,), "alignments3D/pose": (3,), "alignments3D/shift": (2,)}

    def finite(k: str, positive: bool = False) -> np.ndarray:
        want = widths.get(k, ())
        if a[k].shape[1:] != want:
            raise InputError(f"{path}: field {k} holds {a[k].shape[1:] or 'one number'} per particle; expected "
                             f"{want or 'one number'}")
        try:
            v = a[k].astype(np.float64)
        except (ValueError, TypeError):
            raise InputError(f"{path}: field {k} is not numbers ({a[k].dtype})") from None
        bad = ~np.isfinite(v) | ((v <= 0) if positive else False)
        if bad.any():
            i = int(np.nonzero(bad.reshape(n, -1).any(1))[0][0])
            raise InputError(f"{path}: particle {i}: {k} is {v[i]}; expected a finite number"
                             + (" > 0" if positive else ""))
        return v
    for req in ("blob/path", "blob/idx"):
        if req not in names:
            raise InputError(f"{path}: missing required field {req}")
    raw = [p.decode() if isinstance(p, bytes) else str(p) for p in a["blob/path"]]
    raw = [p[1:] if p.startswith(">") else p for p in raw]
    cache: dict[str, str] = {}
    paths = np.array([cache.setdefault(p, resolve_image_path(p, path, datadir)) for p in raw], dtype=object)
    idx = a["blob/idx"].astype(np.int64)
    if (idx < 0).any():
        i = int(np.nonzero(idx < 0)[0][0])
        raise InputError(f"{path}: particle {i}: blob/idx is {idx[i]}; expected >= 0")
    images = ImageSource(paths, idx, origin=str(path))
    image_names = np.array([f"{i + 1:06d}@{p}" for i, p in zip(idx, raw)], dtype=object)

    bx = int(box) if box is not None else (finite("blob/shape", True)[0][0] if "blob/shape" in names else None)
    if bx is not None and (bx < 1 or bx != int(bx)):
        raise InputError(f"{path}: blob/shape {bx:g}; expected a whole number of pixels")
    bx = None if bx is None else int(bx)
    px = np.full(n, float(apix)) if apix is not None else (
        finite("blob/psize_A", True) if "blob/psize_A" in names else None)

    ctf = None
    if "ctf/df1_A" in names:
        # without these the CTF would be silently wrong (0 kV gives an all-NaN map)
        missing = [k for k in ("ctf/df2_A", "ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast") if k not in names]
        if missing:
            raise InputError(f"{path}: has ctf/df1_A but lacks {', '.join(missing)}; export the particles with their "
                             f"full CTF from cryoSPARC (or convert to STAR and supply the values there)")

        def f(k, default=0.0):
            return finite(k, k == "ctf/accel_kv") if k in names else np.full(n, default)
        ctf = {
            "defocus_u_angstrom": f("ctf/df1_A"),
            "defocus_v_angstrom": f("ctf/df2_A"),
            "defocus_angle_degrees": np.degrees(f("ctf/df_angle_rad")),
            "voltage_kv": f("ctf/accel_kv"),
            "cs_mm": f("ctf/cs_mm"),
            "amplitude_contrast": f("ctf/amp_contrast"),
            "phase_shift_degrees": np.degrees(f("ctf/phase_shift_rad")),
            "bfactor_angstrom2": f("ctf/bfactor"),
        }
        for k in ("voltage_kv", "cs_mm"):
            if not np.isfinite(ctf[k]).all() or (k == "voltage_kv" and (ctf[k] <= 0).any()):
                i = int(np.nonzero(~np.isfinite(ctf[k]) | (ctf[k] <= 0 if k == "voltage_kv" else False))[0][0])
                raise InputError(f"{path}: particle {i}: {k} is {ctf[k][i]:g}")
    rot = shifts = None
    if "alignments3D/pose" in names:
        rot = cryosparc_pose_to_matrix(torch.from_numpy(finite("alignments3D/pose"))).numpy()
        if "alignments3D/shift" in names:
            sp = finite("alignments3D/psize_A", True) if "alignments3D/psize_A" in names else px
            if sp is None:
                raise InputError(f"{path}: shifts need a pixel size; give it with --apix")
            shifts = finite("alignments3D/shift") * sp[:, None]
    elif "alignments2D/pose" in names:
        notes.append("only 2-D alignments (no 3-D poses)")
    return ParticleTable(n=n, box=bx, apix=px, images=images, image_names=image_names, ctf=ctf, rotations=rot,
                         shifts_angstrom=shifts, source=str(path), source_format="cs", notes=notes)
