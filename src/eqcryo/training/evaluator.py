"""Evaluation of a model on a run's held-out particles (and against the ground truth when given).

Ground truth is read here and only here, and is used only to measure: pose MSE/MedSE after the
best global alignment (hand included), angular and shift errors, and the FSC of the aligned map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.errors import InputError
from ..data.mrc import read_volume
from ..evaluation.analysis import viewing_direction_anisotropy
from ..evaluation.metrics import fsc_to_ground_truth, pose_metrics
from ..models.autoencoder import CryoModel
from .batches import TrainingData
from .config import TrainConfig
from .inference import infer

__all__ = ["GroundTruth", "Evaluation", "Evaluator", "CONVERGED_MSE"]

#: pose MSE below which a run counts as converged (the paper's criterion)
CONVERGED_MSE = 0.1


@dataclass
class GroundTruth:
    """R (n, 3, 3) float64, RELION origins (n, 2) Å or None, map (L, L, L) float64 or None."""

    R: torch.Tensor | None = None
    origin: torch.Tensor | None = None
    volume: torch.Tensor | None = None

    @classmethod
    def load(cls, cfg: TrainConfig, n: int, box: int, apix: float) -> "GroundTruth":
        from ..data.cryodrgn import read_pose_pkl

        gt = cls()
        if cfg.gt_volume and not cfg.gt_poses:
            raise InputError(f"--gt-volume {cfg.gt_volume}: the map can be compared only after aligning the "
                             f"poses; give --gt-poses too")
        if cfg.gt_poses:
            R, tr = read_pose_pkl(cfg.gt_poses, box)
            if len(R) != n:
                raise InputError(f"{cfg.gt_poses}: {len(R)} poses but {cfg.particles} has {n} particles")
            gt.R = torch.from_numpy(R)
            gt.origin = None if tr is None else torch.from_numpy(tr * apix)
        if cfg.gt_volume:
            v, v_apix = read_volume(cfg.gt_volume)
            if v.shape[0] != box:
                raise InputError(f"{cfg.gt_volume}: box {v.shape[0]} differs from the particles' {box}")
            if v_apix and abs(v_apix - apix) > 1e-3 * apix:
                raise InputError(f"{cfg.gt_volume}: voxel size {v_apix:.4g} Å differs from the particles' "
                                 f"pixel size {apix:.4g} Å")
            gt.volume = torch.from_numpy(v).double()
        return gt


@dataclass
class Evaluation:
    """One evaluation: ``row`` (the metrics.csv columns), the held-out poses ``R`` (k, 3, 3), and
    when the truth is known the pose ``alignment`` and the map's ``fsc`` against it."""

    row: dict
    R: torch.Tensor
    alignment: object = None
    fsc: object = None

    @property
    def converged(self) -> bool:
        return self.row.get("pose_mse") is not None and self.row["pose_mse"] < CONVERGED_MSE


class Evaluator:
    """Evaluates a model on ``data.eval_ids`` in eval mode."""

    def __init__(self, data: TrainingData, gt: GroundTruth, track_mirror: bool = False):
        self.data, self.gt, self.track_mirror = data, gt, track_mirror

    def __call__(self, model: CryoModel, band_radius: float | None = None, **counters) -> Evaluation:
        """``counters`` (step, train_seconds, ...) head the row; the loss uses ``band_radius``."""
        ids = self.data.eval_ids
        row: dict = dict(counters)
        row["lowpass_shells"] = band_radius
        R, origin, loss = infer(model, self.data.ds, ids, band_radius=band_radius)
        row["loss"] = loss.mean().item()
        row["view_anisotropy"] = viewing_direction_anisotropy(R)
        vol = None  # the decoder's map, exported at most once per evaluation (costly for FourierNet)
        if self.track_mirror or (self.gt.R is not None and self.gt.volume is not None):
            vol = model.decoder.volume().double().cpu()
        if self.track_mirror:
            from ..evaluation.analysis import mirror_symmetry_score
            row["mirror_score"] = mirror_symmetry_score(vol, 32)[0]
        ev = Evaluation(row, R)
        if self.gt.R is not None:
            d_gt = None if self.gt.origin is None else -self.gt.origin[ids]
            m, ev.alignment = pose_metrics(R, self.gt.R[ids], -origin, d_gt)
            row.update(m)
            if self.gt.volume is not None:
                ev.fsc, _ = fsc_to_ground_truth(vol, self.gt.volume, ev.alignment, self.data.apix)
                row["resolution_0.5_angstrom"] = ev.fsc.resolution(0.5)
                row["resolution_0.143_angstrom"] = ev.fsc.resolution(0.143)
        return ev


def held_out_summary(ev: Evaluation) -> str:
    """One line a person reads: the held-out pose error and the resolution against the truth."""
    r = ev.row
    if r.get("pose_mse") is None:
        return f"held-out loss {r['loss']:.4g} (no ground truth: no pose error)"
    s = f"held-out pose MSE {r['pose_mse']:.3f}, MedSE {r['pose_medse']:.3f}"
    if r.get("resolution_0.5_angstrom") is not None:
        s += f", resolution at FSC 0.5 vs truth {r['resolution_0.5_angstrom']:.1f} Å"
    return s
