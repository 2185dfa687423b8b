"""The training data: particles read and checked once, the held-out split, the intensity scale and
the seeded order of batches.

- held-out: ``eval_n`` particles (at most a tenth), drawn by the seed, never trained on;
- scale: ``1 / std`` of up to 512 training images, so that losses are O(1) for any data;
- order: epoch ``e`` is the permutation ``randperm(seed · 1000003 + e)`` of the training
  particles, so a resumed run at (epoch, position) sees exactly the batches it would have seen.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from ..data.dataset import ParticleDataset, Prefetcher, _InMemory, pixel_range
from ..data.errors import InputError
from ..data.fingerprint import differences, fingerprint
from ..data.io import load_particles
from ..data.particles import ParticleTable
from ..reconstruction.contrast import orient_contrast
from .config import EvaluationConfig, TrainConfig, resolve_device

__all__ = ["TrainingData"]


#: the smallest box the encoders take (their pooling needs at least 24 px)
MIN_BOX = 24
#: pixel sizes (Å) of real cryo-EM data; outside it a pixel size is a unit mistake
APIX_RANGE = (0.3, 20.0)

#: the working box a large stack is trained at unless data.working_box says otherwise: Nyquist at
#: twice the pixel size of a 64 px box, what ab initio resolves on the CPU recipes' budgets
AUTO_WORKING_BOX = 64


def working_box(L: int, chosen: int | None) -> int:
    """The box a stack of box ``L`` is trained at: ``chosen``, or L up to 64 px, else 64."""
    if chosen is not None:
        if chosen > L:
            raise InputError(f"data.working_box {chosen}: larger than the stack's {L} px box")
        return chosen
    return L if L <= AUTO_WORKING_BOX else AUTO_WORKING_BOX


class TrainingData:
    """The particles of a run as batches on ``cfg.compute.device`` (images × scale, CTF images)."""

    def __init__(self, cfg: TrainConfig, table: ParticleTable | None = None, device: str | None = None):
        d = cfg.data
        t = table if table is not None else load_particles(d.particles, ctf=d.ctf, datadir=d.datadir, apix=d.apix)
        if t.images is None:
            raise InputError(f"{cfg.data.particles}: no images")
        L = t.validate_images()
        if L % 2:
            raise InputError(f"{cfg.data.particles}: box {L} is odd; eqcryo trains on even boxes (crop or pad by one)")
        if L < MIN_BOX:
            raise InputError(f"{cfg.data.particles}: box {L} px; eqcryo trains on boxes of at least {MIN_BOX} px")
        if t.apix is not None:
            px = t.pixel_size()
            if not APIX_RANGE[0] <= px <= APIX_RANGE[1]:
                raise InputError(f"{cfg.data.particles}: pixel size {px:g} Å is outside {APIX_RANGE[0]:g}–"
                                 f"{APIX_RANGE[1]:g} Å; is it in nm or in px? give the right one with --apix")
        t.apply_ctf_rule(cfg.data.no_ctf)
        self.table, self.seed = t, cfg.optimisation.seed
        g = torch.Generator().manual_seed(cfg.optimisation.seed)
        perm = torch.randperm(t.n, generator=g).numpy()
        n_eval = min(cfg.evaluation.n_images, max(1, t.n // 10))
        if n_eval < cfg.evaluation.n_images != EvaluationConfig.n_images:  # a chosen n is not cut silently
            print(f"note: evaluation.n_images {cfg.evaluation.n_images} is more than a tenth of the {t.n} particles; "
                  f"evaluating on {n_eval} held-out particles", file=sys.stderr)
        self.eval_ids, self.train_ids = np.sort(perm[:n_eval]), perm[n_eval:]
        self._active: np.ndarray | None = None
        self.batch_size = cfg.optimisation.batch_size
        if len(self.train_ids) < cfg.optimisation.batch_size:
            raise InputError(f"{cfg.data.particles}: {len(self.train_ids)} training particles < batch size "
                             f"{cfg.optimisation.batch_size}")
        W = working_box(L, cfg.data.working_box)
        sample = t.images.read(self.train_ids[:min(512, len(self.train_ids))])
        self.pixel_range = pixel_range(sample)  # outliers (a hot pixel) read as the median, here and below
        # a lazy view (before the stack is preloaded with its final scale): the scale is measured on
        # the images as trained on (at the working box), and the contrast's sign goes into it
        probe = ParticleDataset(t, "cpu", 1.0, box=L, pixel_range=self.pixel_range, work_box=W)
        std = float(probe.prepare(sample, scaled=False).numpy().std())  # (as before when W = L, no outliers)
        if not std > 0:
            raise InputError(f"{cfg.data.particles}: the images are constant (every pixel of {len(sample)} sampled "
                             f"images is the same); is this a particle stack?")
        probe.scale = self.scale = float(1.0 / (std + 1e-12))
        self.contrast = orient_contrast(probe, cfg.data.invert_contrast, seed=cfg.optimisation.seed)
        self.scale = probe.scale
        self.ds = ParticleDataset(t, device or resolve_device(cfg.compute.device), self.scale, box=L,
                                  preload=cfg.data.preload, pixel_range=self.pixel_range, work_box=W)
        self.box, self.apix, self.n = W, self.ds.apix, t.n
        self.input_box, self.input_apix = L, self.ds.input_apix
        if W != L:
            print(f"note: working box {W} px at {self.apix:.4g} Å/px (the stack: {L} px at {self.input_apix:.4g} "
                  f"Å/px; Nyquist {2 * self.apix:.3g} Å); data.working_box sets it", file=sys.stderr)
        self.fingerprint = fingerprint(t)

    def resolved(self) -> dict:
        """Facts about the data a run records in its config.yaml (a trained model needs only these)."""
        return {"box": self.box, "apix": self.apix, "input_box": self.input_box, "input_apix": self.input_apix,
                "n_particles": self.n, "n_eval": len(self.eval_ids),
                "ctf": self.table.ctf is not None,
                "intensity_scale": self.scale, "pixel_range": list(self.pixel_range), "contrast": self.contrast,
                "inputs": self.fingerprint}

    def check_same_data(self, recorded: dict | None, run: str) -> None:
        """Refuse data whose fingerprint differs from the one ``run`` recorded (``resolved.inputs``),
        naming what changed; runs written before fingerprints pass."""
        if not recorded:
            return
        changed = differences(recorded, self.fingerprint)
        if changed:
            raise InputError(f"{self.table.source}: not the data {run} was trained on: {'; '.join(changed)} "
                             f"differ; resume only on the same particles (moved data: --data NEW.star)")

    @property
    def active_ids(self) -> np.ndarray:
        """The training particles batches are drawn from: all of them, or those with refinement
        targets (a trimming round's kept, or the subset rounds search; :meth:`set_active`)."""
        return self.train_ids if self._active is None else self._active

    def set_active(self, ids: np.ndarray | None) -> None:
        """Draw batches from ``ids`` (a subset of the training particles) from the next epoch on; None: all."""
        if ids is not None and len(ids) < self.batch_size:  # an epoch without a full batch would never end
            raise ValueError(f"{len(ids)} active particles < batch size {self.batch_size}")
        self._active = None if ids is None else np.sort(np.asarray(ids, dtype=np.int64))

    def order(self, epoch: int) -> np.ndarray:
        g = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
        ids = self.active_ids
        return ids[torch.randperm(len(ids), generator=g).numpy()]

    def stream(self, epoch: int, pos: int, batch_size: int, rank: int = 0,
               world: int = 1) -> Prefetcher | _InMemory:
        """Full batches of epoch ``epoch`` from position ``pos``, read ahead in a thread. With
        ``world`` processes, rank ``rank`` gets its contiguous 1/world slice of each global batch."""
        order = self.order(epoch)[pos:]
        if world == 1:
            return self.ds.prefetch(order, batch_size)
        b = batch_size // world
        n = len(order) // batch_size * batch_size
        mine = order[:n].reshape(-1, world, b)[:, rank].reshape(-1)
        return self.ds.prefetch(mine, b)
