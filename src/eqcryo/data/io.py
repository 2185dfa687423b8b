"""One entry point for particle data of any supported format, chosen by file extension.

========  ===========================================================================
.star     RELION 3.0 / 3.1 / 5 (:mod:`eqcryo.data.star`)
.cs       cryoSPARC (:mod:`eqcryo.data.cryosparc`)
.mrcs     an image stack (``.mrc`` too); poses and CTF from separate files
.txt      a list of image stacks, one path per line (relative to the list file)
.pkl      cryoDRGN poses; CTF from ``ctf=``, images from ``particles=``
========  ===========================================================================
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .atomic import require_file
from .cryodrgn import read_ctf_pkl, read_pose_pkl, write_ctf_pkl, write_pose_pkl
from .cryosparc import read_cs
from .errors import InputError
from .mrc import ImageStack
from .particles import ImageSource, ParticleTable
from .star import read_star, write_star

__all__ = ["load_particles", "save_metadata", "PARTICLE_EXTENSIONS", "METADATA_OUT_EXTENSIONS"]

PARTICLE_EXTENSIONS = (".star", ".cs", ".mrcs", ".mrc", ".txt", ".pkl")
METADATA_OUT_EXTENSIONS = (".star", ".pkl")


def _stack_source(paths: list[Path], origin: str) -> tuple[ImageSource, int, float | None]:
    all_p, all_i, box, apix = [], [], None, None
    for p in paths:
        st = ImageStack(p)
        if box is None:
            box, apix = st.box, st.apix
        elif st.box != box:
            raise InputError(f"{p}: box {st.box} px differs from {box} px of {paths[0]}")
        all_p += [str(Path(p).resolve())] * len(st)
        all_i += list(range(len(st)))
        st.close()
    assert box is not None  # (at least one stack)
    return ImageSource(np.array(all_p, dtype=object), np.array(all_i), origin=origin), box, apix


def load_particles(path: str | os.PathLike, *, poses: str | os.PathLike | None = None,
                   ctf: str | os.PathLike | None = None, particles: str | os.PathLike | None = None,
                   datadir: str | os.PathLike | None = None, box: int | None = None,
                   apix: float | None = None) -> ParticleTable:
    """Read particle metadata (and a lazy image source) from any supported format.

    ``poses`` / ``ctf`` (cryoDRGN pickles) replace or supply poses and CTF; ``particles`` gives
    the image stack when ``path`` is a pose pickle; ``box`` / ``apix`` override the file.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in PARTICLE_EXTENSIONS:
        raise InputError(f"{path}: unknown extension {ext!r}; expected one of {', '.join(PARTICLE_EXTENSIONS)}")
    require_file(path)
    if ext == ".star":
        t = read_star(path, datadir=datadir, box=box, apix=apix)
    elif ext == ".cs":
        t = read_cs(path, datadir=datadir, box=box, apix=apix)
    elif ext in (".mrcs", ".mrc", ".txt"):
        if ext == ".txt":
            lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            if not lines:
                raise InputError(f"{path}: the list of stacks is empty")
            stacks = [Path(ln) if os.path.isabs(ln) else (Path(datadir) if datadir else path.parent) / ln
                      for ln in lines]
        else:
            stacks = [path]
        src, bx, hp = _stack_source(stacks, str(path))
        n = len(src)
        px = apix if apix is not None else hp
        t = ParticleTable(n=n, box=bx if box is None else box, apix=None if px is None else np.full(n, float(px)),
                          images=src, image_names=np.array([f"{i + 1:06d}@{p}" for p, i in zip(src.paths, src.indices)],
                                                           dtype=object),
                          source=str(path), source_format="mrcs")
    else:  # .pkl poses as the primary metadata
        if box is None and particles is None and ctf is None:
            raise InputError(f"{path}: a pose pickle needs the box size: give --box, --particles or --ctf")
        t = ParticleTable(n=0, source=str(path), source_format="pkl")
        if particles is not None:
            t_img = load_particles(particles, datadir=datadir, box=box, apix=apix)
            t = t_img
            t.source, t.source_format = str(path), "pkl"
        poses = path
    if ctf is not None:
        c, cbox, capix = read_ctf_pkl(ctf)
        if t.n and len(c["defocus_u_angstrom"]) != t.n:
            raise InputError(f"{ctf}: holds CTF for {len(c['defocus_u_angstrom'])} particles but {path} has {t.n}")
        if t.n == 0:
            t = ParticleTable(n=len(c["defocus_u_angstrom"]), source=str(path), source_format=t.source_format)
        t.ctf = c
        if t.box is None:
            t.box = cbox if box is None else box
        if t.apix is None:
            t.apix = capix if apix is None else np.full(t.n, float(apix))
    if poses is not None:
        b = box or t.box
        if b is None:
            raise InputError(f"{poses}: pose pickles store shifts as a fraction of the box; give --box")
        rot, trans_px = read_pose_pkl(poses, b)
        if t.n and len(rot) != t.n:
            raise InputError(f"{poses}: holds poses for {len(rot)} particles but {t.source} has {t.n}")
        if t.n == 0:
            t = ParticleTable(n=len(rot), box=b, apix=None if apix is None else np.full(len(rot), float(apix)),
                              source=str(path), source_format="pkl")
        t.rotations, t.euler_degrees = rot, None
        if trans_px is not None:
            if t.apix is None:
                raise InputError(f"{poses}: converting shifts to Å needs the pixel size; give --apix")
            t.shifts_angstrom = trans_px * t.apix[:, None]
    if t.box is None and box is not None:
        t.box = box
    t.__post_init__()
    return t


def save_metadata(path: str | os.PathLike, t: ParticleTable, ctf_out: str | os.PathLike | None = None) -> list[str]:
    """Write a table as STAR (poses, CTF, images) or cryoDRGN pkl (poses; CTF to ``ctf_out``).

    Validates everything first, so an error leaves nothing written. Returns the files written.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in METADATA_OUT_EXTENSIONS:
        raise InputError(f"{path}: unknown output extension {ext!r}; expected one of "
                         f"{', '.join(METADATA_OUT_EXTENSIONS)}")
    if ctf_out is not None and Path(ctf_out).suffix.lower() != ".pkl":
        raise InputError(f"{ctf_out}: the CTF output must be a cryoDRGN .pkl")
    # Validate before writing anything.
    if ext == ".pkl" and t.rotations is None:
        raise InputError(f"{t.source}: has no poses to write to {path}")
    if ext == ".pkl" and t.shifts_angstrom is not None:
        t.shifts_px(), t.require_box()
    if ctf_out is not None:
        from .cryodrgn import ctf_to_array
        ctf_to_array(t)
    if ext == ".star":
        from .star import star_blocks
        star_blocks(t)
    written = []
    if ext == ".star":
        write_star(path, t)
    else:
        write_pose_pkl(path, t, dtype=np.float32 if t.source_format == "cs" else np.float64)
    written.append(str(path))
    if ctf_out is not None:
        write_ctf_pkl(ctf_out, t)
        written.append(str(ctf_out))
    return written
