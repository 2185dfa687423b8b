"""Batches of particles as tensors: the one place images and CTF images are read for a set of ids.

File formats live in the readers (:mod:`.io`, :mod:`.star`, ...) and yield a
:class:`~eqcryo.data.particles.ParticleTable`; this module turns a table into what a model or a
reconstruction consumes (cryoDRGN's ``source.py`` / ``dataset.py`` split):

- :meth:`ParticleDataset.batch` — images ``(B, L, L)`` times an intensity scale and CTF images
  ``(B, L, L)`` (centred Fourier lattice, :func:`eqcryo.physics.ctf.ctf_2d`) on a device;
- :meth:`ParticleDataset.batches` — consecutive batches in a given order;
- :meth:`ParticleDataset.prefetch` — the same read ahead by a background thread, so that disk
  reads overlap the model's compute.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..physics.ctf import ctf_2d
from .errors import InputError
from .particles import ParticleTable

__all__ = ["Batch", "ParticleDataset"]


@dataclass
class Batch:
    """``ids`` (B,) particle indices; ``images`` (B, L, L) scaled; ``ctf`` (B, L, L) or None."""

    ids: np.ndarray
    images: torch.Tensor
    ctf: torch.Tensor | None


class ParticleDataset:
    """A particle table's images and CTFs as tensors on ``device``.

    ``scale`` multiplies every image (training keeps losses O(1) with it); ``dtype`` is the
    tensors' real dtype. ``box`` and ``apix`` (Å) come from the table unless given.
    """

    def __init__(self, table: ParticleTable, device: str | torch.device = "cpu", scale: float = 1.0,
                 dtype: torch.dtype = torch.float32, box: int | None = None, apix: float | None = None):
        if table.images is None:
            raise InputError(f"{table.source}: no images")
        self.table, self.device, self.scale, self.dtype = table, torch.device(device), float(scale), dtype
        self.box = box if box is not None else table.images.box()
        self.apix = apix if apix is not None else (table.pixel_size() if table.apix is not None else 1.0)

    @property
    def n(self) -> int:
        return self.table.n

    def read_images(self, ids: np.ndarray) -> torch.Tensor:
        """Images (B, L, L) of particles ``ids`` times the scale, on the CPU."""
        x = self.table.images.read(ids)
        if self.scale != 1.0:
            x = x * self.scale
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.dtype)

    def ctf(self, ids: np.ndarray) -> torch.Tensor | None:
        """CTF images (B, L, L) of particles ``ids`` on the device; None when the data have no CTF."""
        p = self.table.ctf_params(ids)
        return None if p is None else ctf_2d(self.box, self.apix, p, self.dtype, self.device)

    def batch(self, ids: np.ndarray, images: torch.Tensor | None = None) -> Batch:
        """The batch of particles ``ids`` on the device (``images``: already read, e.g. by a prefetcher)."""
        x = self.read_images(ids) if images is None else images
        return Batch(np.asarray(ids), x.to(self.device), self.ctf(ids))

    def batches(self, order: np.ndarray, batch_size: int, drop_last: bool = False) -> Iterator[Batch]:
        """Consecutive batches of ``order`` (the last one shorter unless ``drop_last``)."""
        stop = len(order) - batch_size + 1 if drop_last else len(order)
        for s in range(0, max(stop, 0), batch_size):
            yield self.batch(order[s:s + batch_size])

    def prefetch(self, order: np.ndarray, batch_size: int, depth: int = 4) -> "Prefetcher":
        """Full batches of ``order`` read ahead by a background thread (close it when done early)."""
        return Prefetcher(self, order, batch_size, depth)


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
