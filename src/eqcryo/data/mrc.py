"""MRC/MRCS volumes and image stacks through ``mrcfile``.

- Stacks are opened memory-mapped (``mrcfile.mmap``): reading one image of a 100k-particle
  stack touches only that image's bytes.
- Every write goes through :func:`eqcryo.data.atomic.atomic_path` and sets the voxel size.
- Arrays are indexed [z, y, x] (volumes) and [n, y, x] (stacks), as mrcfile returns them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import mrcfile
import numpy as np

from .atomic import atomic_path, require_file
from .errors import InputError

#: bytes per value of each MRC mode (mrcfile's)
_MODE_BYTES = {0: 1, 1: 2, 2: 4, 3: 4, 4: 8, 6: 2, 12: 2, 101: 1}

__all__ = ["ImageStack", "read_volume", "write_volume", "write_stack", "StackWriter", "mrc_header_info"]


def _open_mmap(path: Path):
    """Open memory-mapped, tolerating old headers but never short or undecodable data.

    Many real stacks (old RELION, EMAN, IMAGIC exports) lack the ``MAP`` ID string or a machine
    stamp; mrcfile's strict mode rejects them, so we open permissively and check ourselves that
    the data block is complete.
    """
    require_file(path, "image file not found")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m = mrcfile.mmap(path, mode="r", permissive=True)
    except Exception as e:
        raise InputError(f"{path}: not a readable MRC file: {e}") from None
    h = m.header
    nx, ny, nz, mode = int(h.nx), int(h.ny), int(h.nz), int(h.mode)
    expected = nx * ny * nz
    if m.data is None or m.data.size != expected or expected == 0:
        m.close()
        size = _MODE_BYTES.get(mode)
        data_bytes = path.stat().st_size - 1024 - max(int(h.nsymbt), 0)
        if size and nx * ny and expected:
            whole = max(data_bytes, 0) // (nx * ny * size)
            raise InputError(f"{path}: truncated or corrupt MRC file: the header says {nz} section(s) of {nx} x {ny} "
                             f"(mode {mode}, {size} bytes per value) but the data hold {max(data_bytes, 0)} bytes, "
                             f"about {whole} complete section(s)")
        detail = "; ".join(str(w.message) for w in caught)
        raise InputError(f"{path}: truncated or corrupt MRC file: header says {nx} x {ny} x {nz} values, mode "
                         f"{mode}" + (f" ({detail})" if detail else ""))
    if m.data.dtype.kind == "c":
        m.close()
        raise InputError(f"{path}: complex-valued MRC data (mode {mode}); eqcryo reads real images and maps "
                         f"(modes 0, 1, 2, 6, 12)")
    return m


class ImageStack:
    """A lazily read, memory-mapped stack of square images (n, L, L).

    ``stack[i]`` returns a float32 copy of image i (0-based) and checks it is finite.
    A single 2-D image file counts as a stack of one.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._mrc = _open_mmap(self.path)
        data = self._mrc.data
        if data is None:
            raise InputError(f"{self.path}: MRC file holds no data")
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            raise InputError(f"{self.path}: expected a 2-D image or a stack, got shape {data.shape}")
        if data.shape[1] != data.shape[2]:
            raise InputError(f"{self.path}: images must be square, got {data.shape[2]} x {data.shape[1]} "
                             f"(x by y) pixels")
        self._data = data
        vs = float(self._mrc.voxel_size.x)
        self.apix: float | None = vs if vs > 0 else None

    def __len__(self) -> int:
        return self._data.shape[0]

    @property
    def box(self) -> int:
        return self._data.shape[-1]

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise InputError(f"{self.path}: image index {i} (0-based) out of range; the stack holds {len(self)}")
        img = np.array(self._data[i], dtype=np.float32)
        if not np.isfinite(img).all():
            raise InputError(f"{self.path}: image {i} (0-based) contains NaN or Inf pixels")
        return img

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Images at sorted-or-not 0-based ``indices`` -> float32 (k, L, L), each checked finite."""
        if not len(indices):
            return np.zeros((0, self.box, self.box), np.float32)
        return np.stack([self[int(i)] for i in indices])

    def close(self) -> None:
        self._mrc.close()


def mrc_header_info(path: str | os.PathLike) -> dict:
    """Shape (z, y, x), voxel size and mode of an MRC file, read from its header only."""
    path = Path(path)
    require_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = mrcfile.open(path, mode="r", header_only=True, permissive=True)
        with m:
            h = m.header
            return {"nx": int(h.nx), "ny": int(h.ny), "nz": int(h.nz), "mode": int(h.mode),
                    "voxel_size": float(m.voxel_size.x), "ispg": int(h.ispg)}
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path}: not a readable MRC file: {e}") from None


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, float | None]:
    """A cubic volume (L, L, L) float32 and its voxel size in Å (None if the header has 0)."""
    path = Path(path)
    m = _open_mmap(path)
    try:
        v = np.array(m.data, dtype=np.float32)
        vs = float(m.voxel_size.x)
    finally:
        m.close()
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise InputError(f"{path}: expected a cubic volume, got shape {v.shape} (z, y, x)")
    if not np.isfinite(v).all():
        raise InputError(f"{path}: volume contains NaN or Inf voxels")
    return v, (vs if vs > 0 else None)


def _fixed_label(m) -> None:
    """Replace mrcfile's time-stamped label: the same data must give the same bytes."""
    m.header.label[0] = b"eqcryo".ljust(80)
    m.header.nlabl = 1


def write_volume(path: str | os.PathLike, volume: np.ndarray, apix: float) -> None:
    """Write a volume (L, L, L) as float32 MRC with voxel size ``apix`` Å, atomically."""
    volume = np.asarray(volume, dtype=np.float32)
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as m:
            m.set_data(volume)
            m.voxel_size = apix
            m.set_volume()
            _fixed_label(m)


def write_stack(path: str | os.PathLike, images: np.ndarray, apix: float) -> None:
    """Write an image stack (n, L, L) as float32 MRCS with pixel size ``apix`` Å, atomically."""
    with StackWriter(path, len(images), images.shape[-1], apix) as w:
        w.write(0, images)


class StackWriter:
    """Stream a large stack to disk chunk by chunk with bounded memory; atomic on close.

    The header is written by ``mrcfile`` (voxel size, stack flag); image data go to their
    offsets with plain positional writes (not a memory map, whose resident pages would grow
    with the file), and the header statistics are accumulated on the way.

    >>> with StackWriter("p.mrcs", n=100000, box=128, apix=1.0) as w:
    ...     w.write(start, chunk)      # chunk (k, 128, 128)
    """

    def __init__(self, path: str | os.PathLike, n: int, box: int, apix: float):
        self.path, self.n, self.box, self.apix = Path(path), n, box, apix
        self._ctx = atomic_path(self.path)

    def __enter__(self) -> StackWriter:
        self._tmp = self._ctx.__enter__()
        with mrcfile.new_mmap(self._tmp, shape=(self.n, self.box, self.box), mrc_mode=2, overwrite=True) as m:
            m.set_image_stack()
            m.voxel_size = self.apix
            _fixed_label(m)
            self._offset = m.header.nbytes + int(m.header.nsymbt)
            self._dtype = m.data.dtype
        self._fh = open(self._tmp, "r+b")
        self._min, self._max, self._sum, self._sumsq = np.inf, -np.inf, 0.0, 0.0
        return self

    def write(self, start: int, images: np.ndarray) -> None:
        a = np.ascontiguousarray(images, dtype=self._dtype)
        self._fh.seek(self._offset + start * self.box * self.box * a.itemsize)
        self._fh.write(a.tobytes())
        a64 = a.astype(np.float64)
        self._min, self._max = min(self._min, float(a64.min())), max(self._max, float(a64.max()))
        self._sum += float(a64.sum())
        self._sumsq += float((a64 ** 2).sum())

    def __exit__(self, exc_type, exc, tb):
        try:
            self._fh.close()
            if exc_type is None:
                count = self.n * self.box * self.box
                mean = self._sum / count
                with mrcfile.mmap(self._tmp, mode="r+") as m:
                    m.header.dmin, m.header.dmax, m.header.dmean = self._min, self._max, mean
                    m.header.rms = float(np.sqrt(max(self._sumsq / count - mean ** 2, 0.0)))
        except BaseException as e:  # the temporary file is discarded, and the error still raised
            self._ctx.__exit__(type(e), e, e.__traceback__)
            raise
        return self._ctx.__exit__(exc_type, exc, tb)
