"""The one in-memory particle table every stage of eqcryo uses.

Units are in the field names. Poses follow :mod:`eqcryo.physics.rotations` (RELION matrices);
shifts are RELION *origins* in Å (``rlnOriginXAngst``: the particle sits at ``-origin`` from
the box centre); CTF parameters follow RELION (:mod:`eqcryo.physics.ctf`).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .mrc import ImageStack

__all__ = ["CTF_FIELDS", "ImageSource", "ParticleTable", "resolve_image_path"]

#: Per-particle CTF fields, each an (N,) float64 array.
CTF_FIELDS = (
    "defocus_u_angstrom",
    "defocus_v_angstrom",
    "defocus_angle_degrees",
    "voltage_kv",
    "cs_mm",
    "amplitude_contrast",
    "phase_shift_degrees",
    "bfactor_angstrom2",
)


def resolve_image_path(p: str, metadata_path: Path, datadir: str | os.PathLike | None = None) -> str:
    """Where an image file named in metadata lives.

    An absolute path is taken as is. A relative one is looked up under ``datadir`` (as given,
    then by basename: cryoDRGN's habit for moved data), then beside the metadata file (as
    given, then by basename); the first that exists wins (resolved). If none exists, the path
    beside the metadata file is returned and a later read reports it missing.
    """
    if os.path.isabs(p):
        return p
    cands = [Path(datadir) / p, Path(datadir) / Path(p).name] if datadir is not None else []
    cands += [metadata_path.parent / p, metadata_path.parent / Path(p).name]
    found = next((c for c in cands if c.exists()), None)
    return str(found.resolve()) if found is not None else str(metadata_path.parent / p)


class ImageSource:
    """Images addressed as (file, 0-based index) per particle, read lazily from MRC stacks.

    Files are opened (memory-mapped) on first use and kept in a small LRU cache, so a million
    particles spread over thousands of micrograph stacks is fine.
    """

    def __init__(self, paths: np.ndarray, indices: np.ndarray, origin: str = "", max_open: int = 64):
        self.paths = np.asarray(paths, dtype=object)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.origin = origin  # the metadata file these came from, for error messages
        self._open: OrderedDict[str, ImageStack] = OrderedDict()
        self._max_open = max_open

    def __len__(self) -> int:
        return len(self.paths)

    def _stack(self, path: str) -> ImageStack:
        st = self._open.get(path)
        if st is None:
            st = ImageStack(path)
            self._open[path] = st
            if len(self._open) > self._max_open:
                self._open.popitem(last=False)[1].close()
        else:
            self._open.move_to_end(path)
        return st

    def _where(self, i: int) -> str:
        src = f" (listed in {self.origin})" if self.origin else ""
        return f"particle {i}{src}"

    def get(self, i: int) -> np.ndarray:
        """Image of particle i as float32 (L, L); raises :class:`InputError` naming file and index."""
        path, idx = self.paths[i], int(self.indices[i])
        try:
            st = self._stack(path)
        except InputError as e:
            raise InputError(f"{e} -- needed by {self._where(i)}") from None
        if idx == -1:  # named without idx@: the file's only image
            if len(st) != 1:
                raise InputError(self._no_index_message(i, len(st)))
            idx = 0
        if not 0 <= idx < len(st):
            raise InputError(f"{path}: {self._where(i)} refers to image {idx + 1} (1-based) but the stack "
                             f"holds only {len(st)} images")
        try:
            return st[idx]
        except InputError as e:
            raise InputError(f"{e} -- {self._where(i)}") from None

    def _no_index_message(self, i: int, n_images: int) -> str:
        return (f"{self.paths[i]}: {self._where(i)} names the file without an image number (idx@file), which "
                f"means a single-image file, but it holds {n_images} images; write idx@file (1-based)")

    def read(self, ids) -> np.ndarray:
        """Images of particles ``ids`` -> float32 (k, L, L)."""
        return np.stack([self.get(int(i)) for i in ids])

    def box(self) -> int:
        """Box size from the first file's header (all files are checked by :meth:`validate`)."""
        return self._stack(self.paths[0]).box

    def header_apix(self) -> float | None:
        return self._stack(self.paths[0]).apix

    def validate(self, check_pixels: bool = False) -> None:
        """Check every file exists, is a square stack of one box size, and every index is in
        range (headers only), optionally that every pixel is finite. Raises on the first problem."""
        box: int | None = None
        for path in pd.unique(self.paths):
            sel = np.nonzero(self.paths == path)[0]
            try:
                st = self._stack(path)
            except InputError as e:
                raise InputError(f"{e} -- needed by {self._where(int(sel[0]))}") from None
            if box is None:
                box = int(st.box)
            elif st.box != box:
                raise InputError(f"{path}: box {st.box} px differs from {box} px of the other stacks "
                                 f"({self._where(int(sel[0]))})")
            if len(st) != 1 and (self.indices[sel] == -1).any():
                raise InputError(self._no_index_message(int(sel[self.indices[sel] == -1][0]), len(st)))
            bad = sel[(self.indices[sel] < -1) | (self.indices[sel] >= len(st))]
            if len(bad):
                i = int(bad[0])
                raise InputError(f"{path}: {self._where(i)} refers to image {int(self.indices[i]) + 1} (1-based) "
                                 f"but the stack holds only {len(st)} images")
            if check_pixels:
                for j in sel:
                    self.get(int(j))


@dataclass
class ParticleTable:
    """N particles: image source, optics, CTF, and (optionally) poses.

    Attributes
    ----------
    n : number of particles.
    box : image size in pixels, or None if not known yet.
    apix : (N,) pixel size in Å per particle (optics groups may differ), or None.
    images : lazily read image source, or None (metadata only).
    image_names : (N,) RELION-style ``"idx@path"`` names as given in the source file, or None.
    ctf : dict of :data:`CTF_FIELDS` -> (N,) float64, or None when the data carry no CTF.
    rotations : (N, 3, 3) float64 RELION pose matrices, or None.
    shifts_angstrom : (N, 2) float64 RELION origins (x, y) in Å, or None.
    optics_group : (N,) int, 1-based RELION optics group.
    optics_extra : per-optics-group columns kept for writing back (RELION), indexed by group.
    extra : per-particle columns not interpreted by eqcryo, kept for round trips.
    euler_degrees : (N, 3) source Euler angles (rot, tilt, psi), written back verbatim while
        they still describe ``rotations`` (so STAR -> table -> STAR is exact).
    source : the metadata file this came from.
    source_format : "star", "cs", "pkl", "mrcs", ...
    """

    n: int
    box: int | None = None
    apix: np.ndarray | None = None
    images: ImageSource | None = None
    image_names: np.ndarray | None = None
    ctf: dict[str, np.ndarray] | None = None
    rotations: np.ndarray | None = None
    shifts_angstrom: np.ndarray | None = None
    optics_group: np.ndarray = None  # type: ignore[assignment]  # (None given: all group 1, set below)
    optics_extra: pd.DataFrame | None = None
    extra: pd.DataFrame | None = None
    euler_degrees: np.ndarray | None = None
    source: str = ""
    source_format: str = ""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.optics_group is None:
            self.optics_group = np.ones(self.n, dtype=np.int64)
        for name, arr, shape in (("rotations", self.rotations, (self.n, 3, 3)),
                                 ("shifts_angstrom", self.shifts_angstrom, (self.n, 2)),
                                 ("apix", self.apix, (self.n,))):
            if arr is not None and arr.shape != shape:
                raise InputError(f"{self.source}: {name} has shape {arr.shape}, expected {shape}")
        if self.ctf is not None:
            for k in CTF_FIELDS:
                if k not in self.ctf or self.ctf[k].shape != (self.n,):
                    raise InputError(f"{self.source}: CTF field {k} missing or not of length {self.n}")

    # -- convenience -------------------------------------------------------------------
    def pixel_size(self) -> float:
        """The single pixel size (Å) of the data set; error if unknown or mixed."""
        if self.apix is None:
            raise InputError(f"{self.source}: pixel size unknown; give it with --apix")
        u = np.unique(np.round(self.apix, 6))
        if len(u) > 1:
            groups = "?"
            if getattr(self, "optics_group", None) is not None:
                g = np.asarray(self.optics_group)
                groups = ", ".join(f"{int(k)}: {float(np.round(self.apix[g == k][0], 6)):g} Å" for k in np.unique(g))
            raise InputError(f"{self.source}: optics groups have different pixel sizes {[float(x) for x in u]} Å "
                             f"(group: pixel size — {groups}); this step needs one (re-extract or rescale the groups "
                             f"to a common pixel size, or select one group)")
        return float(u[0])

    def ctf_params(self, ids: np.ndarray) -> dict | None:
        """The CTF parameters of particles ``ids`` as torch tensors (k,), the argument of
        :func:`eqcryo.physics.ctf.ctf_2d`; None when the data carry no CTF."""
        import torch

        if self.ctf is None:
            return None
        return {k: torch.from_numpy(np.ascontiguousarray(v[ids])) for k, v in self.ctf.items()}

    def validate_images(self, check_pixels: bool = False) -> int:
        """Check the image files (:meth:`ImageSource.validate`) and that their box agrees with the
        metadata's (e.g. rlnImageSize); returns the box. A header pixel size that differs from the
        metadata's by more than 1% is noted (``notes``), since the metadata's is what is used."""
        if self.images is None:
            raise InputError(f"{self.source}: no images referenced")
        self.images.validate(check_pixels=check_pixels)
        L = self.images.box()
        if self.box is not None and self.box != L:
            raise InputError(f"{self.images.paths[0]}: images are {L} px but {self.source} says the box is "
                             f"{self.box} px; fix the metadata (or the stack) so that they agree")
        hp = self.images.header_apix()
        if hp and self.apix is not None:
            u = np.unique(np.round(self.apix, 6))
            if len(u) == 1 and abs(hp - u[0]) > 0.01 * u[0]:
                note = (f"pixel size {u[0]:g} Å from {self.source} differs from {hp:g} Å in the header of "
                        f"{self.images.paths[0]}; using {u[0]:g} Å (give --apix to choose)")
                if note not in self.notes:
                    self.notes.append(note)
        return L

    def referenced_files(self) -> list[str]:
        """Every image file this table reads (absolute paths): outputs must never land on one."""
        return [] if self.images is None else [str(p) for p in pd.unique(self.images.paths)]

    def require_box(self) -> int:
        if self.box is None:
            raise InputError(f"{self.source}: box size unknown (no readable images); give it with --box")
        return self.box

    def shifts_px(self) -> np.ndarray | None:
        if self.shifts_angstrom is None:
            return None
        if self.apix is None:
            raise InputError(f"{self.source}: shifts need a pixel size; give it with --apix")
        return self.shifts_angstrom / self.apix[:, None]

    def ctf_array(self, i: np.ndarray | slice = slice(None)) -> dict[str, np.ndarray]:
        if self.ctf is None:
            raise InputError(f"{self.source}: no CTF parameters in this file; pass them with --ctf CTF.pkl")
        return {k: v[i] for k, v in self.ctf.items()}

    def apply_ctf_rule(self, no_ctf: bool | None) -> None:
        """The one rule of every verb that models images with a CTF: ``no_ctf`` drops the CTF
        (CTF-free or phase-flipped images); otherwise data without a CTF are refused, never used
        silently without one. None (runs written before the rule): the data decide."""
        if no_ctf:
            self.ctf = None
        elif self.ctf is None and no_ctf is not None:
            raise InputError(f"{self.source}: no CTF parameters; give --ctf CTF.pkl, or --no-ctf for images "
                             f"without a CTF (CTF-free or phase-flipped)")

    def subset(self, idx: np.ndarray) -> ParticleTable:
        """A new table with particles ``idx`` (shares the image files)."""
        idx = np.asarray(idx)

        def take(a):
            return None if a is None else a[idx]

        imgs = None if self.images is None else ImageSource(self.images.paths[idx], self.images.indices[idx],
                                                            self.images.origin)
        return ParticleTable(
            n=len(idx), box=self.box, apix=take(self.apix), images=imgs, image_names=take(self.image_names),
            ctf=None if self.ctf is None else {k: v[idx] for k, v in self.ctf.items()},
            rotations=take(self.rotations), shifts_angstrom=take(self.shifts_angstrom),
            optics_group=take(self.optics_group), optics_extra=self.optics_extra,
            extra=None if self.extra is None else self.extra.iloc[idx].reset_index(drop=True),
            euler_degrees=take(self.euler_degrees), source=self.source, source_format=self.source_format)

    def set_columns(self, columns: dict[str, np.ndarray]) -> None:
        """Set per-particle metadata columns (RELION labels, e.g. ``rlnClassNumber``) written with
        the table: replaced where the table already has them, appended otherwise."""
        new = pd.DataFrame(columns)
        self.extra = new if self.extra is None else pd.concat(
            [self.extra.drop(columns=list(new.columns), errors="ignore").reset_index(drop=True), new], axis=1)

    def summary(self) -> dict:
        """What a user wants to know about the file (``eqcryo info``)."""
        s = {"file": self.source, "format": self.source_format, "particles": self.n, "box_px": self.box}
        if self.apix is not None:
            u = np.unique(np.round(self.apix, 6))
            s["apix_angstrom"] = float(u[0]) if len(u) == 1 else [float(x) for x in u]
        s["optics_groups"] = int(len(np.unique(np.asarray(self.optics_group))))
        s["images"] = "none (metadata only)" if self.images is None else f"{len(pd.unique(self.images.paths))} file(s)"
        s["ctf"] = self.ctf is not None
        if self.ctf is not None:
            d = (self.ctf["defocus_u_angstrom"] + self.ctf["defocus_v_angstrom"]) / 2
            s["defocus_angstrom_range"] = [float(d.min()), float(d.max())]
            s["voltage_kv"] = sorted({float(x) for x in self.ctf["voltage_kv"]})
        s["poses"] = self.rotations is not None
        s["shifts"] = self.shifts_angstrom is not None
        if self.notes:
            s["notes"] = list(self.notes)
        return s
