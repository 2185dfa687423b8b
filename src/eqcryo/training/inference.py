"""A trained model from its run folder alone, and the one eval-mode pass over particles.

``load_trained(RUN)`` needs only ``RUN/config.yaml`` and the checkpoint: the training particles
may have moved or gone (``eqcryo predict`` on new data works anywhere the run folder is).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

from ..data.dataset import ParticleDataset
from ..data.errors import InputError
from ..data.particles import ParticleTable
from ..models.autoencoder import CryoModel
from ..models.presets import build_model
from ..physics.group import displacement_to_origin
from .config import TrainConfig, check_device, resolve_device
from .rundir import RunDir

__all__ = ["infer", "predicted_table", "posed_table", "half_map_fsc", "TrainedModel", "load_trained", "build_for"]


def build_for(cfg: TrainConfig, box: int, device: str | None = None) -> CryoModel:
    """The run's model, freshly initialised from ``cfg.optimisation.seed`` (as at the start of
    training), on ``device`` (default ``cfg.compute.device``)."""
    torch.manual_seed(cfg.optimisation.seed)
    m = cfg.model
    bin = m.encoder_input_bin or 1
    if bin > 1 and box % bin == 0 and (box // bin) % 2:  # e.g. 30 px binned by 2: the encoders need even sides
        print(f"note: model.encoder_input_bin {bin} would give the encoder an odd {box // bin} px image; using 1 "
              f"(the whole {box} px)", file=sys.stderr)
        bin = 1
    try:
        model = build_model(m.name, m.profile, box, m.decoder, m.rotation_param, bin, m.hypotheses)
    except ValueError as e:  # a model that does not fit the box (e.g. encoder_input_bin 3 of 64 px)
        raise InputError(f"model {m.name} at {box} px: {e}") from None
    model.encoder.bf16 = cfg.model.encoder_bf16
    return model.to(device or resolve_device(cfg.compute.device))


@torch.no_grad()
def infer(model: CryoModel, ds: ParticleDataset, ids: np.ndarray, batch: int = 128,
          band_radius: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One eval-mode pass over particles ``ids``: (R (k, 3, 3) float64, RELION origins (k, 2) Å,
    per-image loss (k,)), with the symmetric/mirror branch correction applied to the poses."""
    was = model.training
    model.eval()
    Rs, ds_, losses = [], [], []
    for b in ds.batches(np.asarray(ids), batch):
        out = model(b.images, b.ctf, band_radius=band_radius)
        Rs.append(out.R.double().cpu())
        ds_.append(out.d.double().cpu())
        losses.append(out.loss.cpu())
    model.train(was)
    return torch.cat(Rs), displacement_to_origin(torch.cat(ds_), ds.box) * ds.apix, torch.cat(losses)


def predicted_table(model: CryoModel, ds: ParticleDataset) -> ParticleTable:
    """``ds``'s particle table with the model's poses for every particle (box and pixel size set)."""
    R, origin, _ = infer(model, ds, np.arange(ds.n))
    return posed_table(ds, R, origin)


def posed_table(ds: ParticleDataset, R: torch.Tensor, origin_angstrom: torch.Tensor) -> ParticleTable:
    """``ds``'s particle table with poses R (n, 3, 3) and RELION origins (n, 2) Å for every particle."""
    t = ds.table
    pred = t.subset(np.arange(t.n))
    pred.rotations, pred.shifts_angstrom, pred.euler_degrees = R.numpy(), origin_angstrom.numpy(), None
    # the stack's box and pixel size (shifts are in Å): the metadata still describes the stack
    pred.box, pred.apix, pred.source_format = ds.input_box, np.full(t.n, ds.input_apix), "pred"
    return pred


def half_map_fsc(ds: ParticleDataset, pred: ParticleTable, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The resolution a user can trust without ground truth: two maps from disjoint random halves
    of the particles at ``pred``'s poses (Wiener backprojection), and their FSC unmasked and
    inside a soft sphere (radius 0.4 L, 4 px edge). Returns (half 1, half 2, the FSC record)."""
    from ..physics.fsc import fsc
    from ..reconstruction.backprojection import backproject_halves, soft_sphere_mask

    assert pred.rotations is not None and pred.shifts_angstrom is not None  # (predicted poses)
    half = np.random.default_rng(seed).permutation(pred.n) % 2
    bps = backproject_halves(ds.batches(np.arange(pred.n), 256), ds.box, torch.from_numpy(pred.rotations),
                             torch.from_numpy(pred.shifts_angstrom / ds.apix), half)
    h1, h2 = bps[0].reconstruct(), bps[1].reconstruct()
    rec = {"n_half1": int((half == 0).sum()), "n_half2": int((half == 1).sum()), "mask": "soft sphere, radius 0.4 L"}
    for name, mask in (("unmasked", None), ("masked", soft_sphere_mask(ds.box))):
        r = fsc(h1, h2, ds.apix, mask)
        rec[name] = {**r.to_dict(), "diagnosis": r.diagnosis()}
    return h1, h2, rec


@dataclass
class TrainedModel:
    """A run's model with what is needed to apply it: box (px), apix (Å), intensity scale."""

    run: RunDir
    cfg: TrainConfig
    model: CryoModel
    box: int
    apix: float
    scale: float
    state: dict
    pixel_range: tuple[float, float, float] | None = None  # (runs written before it: none)
    input_box: int | None = None  # the stack's box and pixel size (None: the working box's, as before)
    input_apix: float | None = None

    def dataset(self, table: ParticleTable, source: str = "") -> ParticleDataset:
        """``table`` as this model's input (read at the run's working box), after checking that its
        box and pixel size are the training stack's."""
        src = source or table.source
        if table.images is None:
            raise InputError(f"{src}: no images")
        L = table.validate_images()
        box, apix = self.input_box or self.box, self.input_apix or self.apix
        if L != box:
            raise InputError(f"{src}: box {L} px but the model was trained on {box} px images")
        if table.apix is not None and abs(table.pixel_size() - apix) > 1e-3 * apix:
            raise InputError(f"{src}: pixel size {table.pixel_size():.4g} Å but the model was trained on "
                             f"{apix:.4g} Å/px images")
        return ParticleDataset(table, resolve_device(self.cfg.compute.device), self.scale, box=box, apix=apix,
                               pixel_range=self.pixel_range, work_box=self.box)

    def predict(self, table: ParticleTable) -> tuple[torch.Tensor, torch.Tensor]:
        """Poses of every particle of ``table``: (R (n, 3, 3), RELION origins (n, 2) Å)."""
        R, origin, _ = infer(self.model, self.dataset(table), np.arange(table.n))
        return R, origin


def load_trained(run: str | os.PathLike | RunDir, checkpoint: str | os.PathLike | None = None,
                 device: str | None = None, **overrides) -> TrainedModel:
    """The model of ``run`` with its checkpoint (or ``checkpoint``) loaded; ``overrides`` of the
    config (e.g. ground truth for evaluation) are applied. Reads no particles."""
    rd = run if isinstance(run, RunDir) else RunDir(run)
    cfg, res = rd.read_config(device=device, **overrides)
    check_device(cfg.compute.device)
    if "box" not in res or "intensity_scale" not in res:
        raise InputError(f"{rd / rd.CONFIG}: lacks the resolved box/intensity scale; was the run started?")
    state = rd.load_checkpoint(checkpoint, map_location=resolve_device(cfg.compute.device))
    model = build_for(cfg, int(res["box"]))
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as e:
        raise InputError(f"{checkpoint or rd / rd.CHECKPOINT}: does not fit the run's model "
                         f"({cfg.model.name}, {cfg.model.profile}): {str(e).splitlines()[0][:200]}") from None
    model.eval()
    rng = res.get("pixel_range")
    return TrainedModel(rd, cfg, model, int(res["box"]), float(res.get("apix", 1.0)), float(res["intensity_scale"]),
                        state, None if rng is None else (float(rng[0]), float(rng[1]), float(rng[2])),
                        res.get("input_box"), res.get("input_apix"))
