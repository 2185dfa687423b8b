"""Batches of particles as tensors: the one place images and CTF images are read for a set of ids.

File formats live in the readers (:mod:`.io`, :mod:`.star`, ...) and yield a
:class:`~eqcryo.data.particles.ParticleTable`; this module turns a table into what a model or a
reconstruction consumes (cryoDRGN's ``source.py`` / ``dataset.py`` split):

- :meth:`ParticleDataset.batch` — images ``(B, L, L)`` times an intensity scale and CTF images
  ``(B, L, L)`` (centred Fourier lattice, :func:`eqcryo.physics.ctf.ctf_2d`) on a device;
- :meth:`ParticleDataset.batches` — consecutive batches in a given order;
- :meth:`ParticleDataset.prefetch` — the same read ahead by a background thread, so that disk
  reads overlap the model's compute.

With ``preload`` the whole stack is read once into one tensor on the device (RAM, or the GPU's
memory), and a batch is an index into it: no file reads, no reader thread in front of a GPU.
By default (``preload=None``) that happens when the stack takes at most a quarter of the free
memory of the device (the lazy, memory-mapped path serves larger data).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..physics.ctf import ctf_2d
from ..physics.lattice import fourier_crop_2d
from .errors import InputError
from .particles import ParticleTable

__all__ = ["Batch", "ParticleDataset", "free_memory_bytes"]


def free_memory_bytes(device: torch.device) -> int:
    """Free memory of ``device`` in bytes: the GPU's (CUDA), else the machine's available RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


@dataclass
class Batch:
    """``ids`` (B,) particle indices; ``images`` (B, L, L) scaled; ``ctf`` (B, L, L) or None."""

    ids: np.ndarray
    images: torch.Tensor
    ctf: torch.Tensor | None


#: pixels farther than this many (1%–99% quantile ranges) from the median are outliers (hot or
#: dead pixels, a corrupt image): ordinary data never reach it
OUTLIER_RANGES = 20.0


def pixel_range(sample: np.ndarray) -> tuple[float, float, float]:
    """(lo, hi, median) of a sample of images (raw values, float64): pixels outside [lo, hi] are
    outliers, read as the median (:class:`ParticleDataset`'s ``pixel_range``)."""
    x = np.asarray(sample, dtype=np.float64)
    med = float(np.median(x))
    q1, q99 = np.quantile(x, [0.01, 0.99])
    bound = OUTLIER_RANGES * max(float(q99 - q1), 1e-30)
    return med - bound, med + bound, med


def without_outliers(x: np.ndarray, rng: tuple[float, float, float] | None) -> np.ndarray:
    """``x`` with the pixels outside ``rng`` = (lo, hi, fill) set to fill; ``x`` itself when none are."""
    if rng is None:
        return x
    lo, hi, fill = rng
    bad = (x < lo) | (x > hi)
    return np.where(bad, np.asarray(fill, dtype=x.dtype), x) if bad.any() else x


class ParticleDataset:
    """A particle table's images and CTFs as tensors on ``device``.

    ``scale`` multiplies every image (training keeps losses O(1) with it); ``dtype`` is the
    tensors' real dtype. ``box`` and ``apix`` (Å) come from the table unless given.
    ``pixel_range`` (lo, hi, fill), raw values: pixels outside [lo, hi] read as fill (one hot
    pixel must not dominate a loss or a decision; see :func:`pixel_range`).
    ``work_box``: read the images Fourier-cropped to this box (the working box of a run on a large
    stack); ``box``/``apix`` are then the working box and pixel size, ``input_box``/``input_apix``
    the stack's. Only the cropped images are ever held in memory.
    """

    def __init__(self, table: ParticleTable, device: str | torch.device = "cpu", scale: float = 1.0,
                 dtype: torch.dtype = torch.float32, box: int | None = None, apix: float | None = None,
                 preload: bool | None = False, pixel_range: tuple[float, float, float] | None = None,
                 work_box: int | None = None):
        if table.images is None:
            raise InputError(f"{table.source}: no images")
        self.table, self.device, self.scale, self.dtype = table, torch.device(device), float(scale), dtype
        self.pixel_range = pixel_range
        self.input_box = box if box is not None else table.images.box()
        self.input_apix = apix if apix is not None else (table.pixel_size() if table.apix is not None else 1.0)
        self.box, self.apix = self.input_box, self.input_apix
        if work_box is not None and work_box != self.input_box:
            if work_box > self.input_box or work_box % 2:
                raise InputError(f"{table.source}: working box {work_box} px: expected an even box no larger than "
                                 f"the stack's {self.input_box} px")
            self.box, self.apix = work_box, self.input_apix * self.input_box / work_box
        self.memory: torch.Tensor | None = None  # (n, L, L) on the device when preloaded
        need = table.n * self.box * self.box * torch.finfo(dtype).bits // 8
        if preload or (preload is None and need <= free_memory_bytes(self.device) // 4):
            self._preload()

    def _preload(self, chunk: int = 4096) -> None:
        """Read every image once (scaled, as :meth:`read_images` would) into device memory."""
        n, L = self.table.n, self.box
        if self.box != self.input_box:  # cropping transforms each chunk at the stack's box: ~2^24 pixels at once
            chunk = min(chunk, max(64, 2 ** 24 // self.input_box ** 2))
        mem = torch.empty(n, L, L, dtype=self.dtype, device=self.device)
        if n > 20000:
            print(f"reading {n} images into {self.device} memory ...", file=sys.stderr)
        for s in range(0, n, chunk):
            ids = torch.arange(s, min(s + chunk, n)).numpy()
            mem[s:s + len(ids)] = self.read_images(ids).to(self.device)
        self.memory = mem

    @property
    def n(self) -> int:
        return self.table.n

    def at_box(self, box: int) -> ParticleDataset:
        """The same particles (scale, outlier rule, contrast) read Fourier-cropped to ``box``
        (≤ the stack's box), lazily, on the CPU."""
        return ParticleDataset(self.table, "cpu", self.scale, self.dtype, self.input_box, self.input_apix,
                               preload=False, pixel_range=self.pixel_range, work_box=box)

    def read_images(self, ids: np.ndarray, scaled: bool = True) -> torch.Tensor:
        """Images (B, L, L) of particles ``ids`` at the working box, times the scale (``scaled``;
        otherwise in the stack's own units), on the CPU."""
        if self.table.images is None:
            raise InputError(f"{self.table.source}: no images referenced")
        return self.prepare(self.table.images.read(ids), scaled)

    def prepare(self, raw: np.ndarray, scaled: bool = True) -> torch.Tensor:
        """Images (B, L_in, L_in) as read from the stack -> as this dataset reads them (B, L, L):
        outliers read as the median, times the scale (``scaled``), at the working box."""
        x = without_outliers(raw, self.pixel_range)
        if scaled and self.scale != 1.0:
            x = x * self.scale
        t = torch.from_numpy(np.ascontiguousarray(x))
        if self.box != self.input_box:  # the working box: the stack's low frequencies, its physical size
            t = fourier_crop_2d(t, self.box)
        return t.to(self.dtype)

    def ctf(self, ids: np.ndarray) -> torch.Tensor | None:
        """CTF images (B, L, L) of particles ``ids`` on the device; None when the data have no CTF."""
        p = self.table.ctf_params(ids)
        return None if p is None else ctf_2d(self.box, self.apix, p, self.dtype, self.device)

    def batch(self, ids: np.ndarray, images: torch.Tensor | None = None) -> Batch:
        """The batch of particles ``ids`` on the device (``images``: already read, e.g. by a prefetcher)."""
        ids = np.asarray(ids)
        if images is None and self.memory is not None:
            images = self.memory[torch.from_numpy(ids).to(self.device)]
        x = self.read_images(ids) if images is None else images
        return Batch(ids, x.to(self.device), self.ctf(ids))

    def batches(self, order: np.ndarray, batch_size: int, drop_last: bool = False) -> Iterator[Batch]:
        """Consecutive batches of ``order`` (the last one shorter unless ``drop_last``)."""
        stop = len(order) - batch_size + 1 if drop_last else len(order)
        for s in range(0, max(stop, 0), batch_size):
            yield self.batch(order[s:s + batch_size])

    def prefetch(self, order: np.ndarray, batch_size: int, depth: int = 4) -> Prefetcher | _InMemory:
        """Full batches of ``order`` read ahead by a background thread (close it when done early);
        from memory when preloaded (no thread)."""
        if self.memory is not None:
            return _InMemory(self, order, batch_size)
        return Prefetcher(self, order, batch_size, depth)


class _InMemory:
    """Full batches of ``order`` from the preloaded tensor (the Prefetcher's interface)."""

    def __init__(self, ds: ParticleDataset, order: np.ndarray, batch_size: int):
        self.ds, self.order, self.b = ds, order, batch_size

    def __iter__(self) -> Iterator[Batch]:
        for s in range(0, len(self.order) - self.b + 1, self.b):
            yield self.ds.batch(self.order[s:s + self.b])

    def close(self) -> None:
        pass


class Prefetcher:
    """Iterates :class:`Batch` es of ``order``; the disk reads happen in a thread, ``depth`` ahead."""

    def __init__(self, ds: ParticleDataset, order: np.ndarray, batch_size: int, depth: int = 4):
        self.ds = ds
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = False

        def work():
            try:
                for s in range(0, len(order) - batch_size + 1, batch_size):
                    if self._stop:
                        return
                    ids = order[s:s + batch_size]
                    self.q.put((ids, ds.read_images(ids)))
                self.q.put(None)
            except Exception as e:  # surfaced in the consumer's thread
                self.q.put(e)

        self.th = threading.Thread(target=work, daemon=True)
        self.th.start()

    def __iter__(self) -> Iterator[Batch]:
        while True:
            item = self.q.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield self.ds.batch(item[0], item[1])

    def close(self) -> None:
        self._stop = True
        while not self.q.empty():
            self.q.get_nowait()
