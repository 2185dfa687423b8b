"""Evaluation of a model on a run's held-out particles (and against the ground truth when given).

Ground truth is read here and only here, and is used only to measure: pose MSE/MedSE after the
best global alignment (hand included), angular and shift errors, and the FSC of the aligned map.
With ground truth, as many training particles as held-out ones are measured too
(``train_pose_mse``): an encoder that memorises its training set shows as a gap between the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.errors import InputError
from ..data.mrc import read_volume
from ..evaluation.analysis import rotation_head_conditioning, viewing_direction_anisotropy
from ..evaluation.metrics import fsc_to_ground_truth, pose_metrics
from ..models.autoencoder import CryoModel
from ..physics.projection import prepare_fourier_volume
from ..physics.rotations import geodesic_angle_degrees
from ..reconstruction.projection_matching import BandData, MatchConfig, search_poses
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
    input_volume: torch.Tensor | None = None  # the map at the stack's box (for the finish's map)

    @classmethod
    def load(cls, cfg: TrainConfig, n: int, box: int, apix: float, input_box: int | None = None,
             input_apix: float | None = None) -> GroundTruth:
        """The ground truth at the run's (working) ``box`` and ``apix``: poses' origins follow the box
        (they are fractions of it), a map at the stack's ``input_box`` is Fourier-cropped."""
        from ..data.cryodrgn import read_pose_pkl
        from ..physics.lattice import fourier_crop_3d

        gt = cls()
        if cfg.evaluation.gt_volume and not cfg.evaluation.gt_poses:
            raise InputError(f"--gt-volume {cfg.evaluation.gt_volume}: the map can be compared only after aligning the "
                             f"poses; give --gt-poses too")
        if cfg.evaluation.gt_poses:
            R, tr = read_pose_pkl(cfg.evaluation.gt_poses, box)
            if len(R) != n:
                raise InputError(f"{cfg.evaluation.gt_poses}: {len(R)} poses but {cfg.data.particles} has {n} "
                                 f"particles")
            gt.R = torch.from_numpy(R)
            gt.origin = None if tr is None else torch.from_numpy(tr * apix)
        if cfg.evaluation.gt_volume:
            v, v_apix = read_volume(cfg.evaluation.gt_volume)
            if input_box is not None and input_apix is not None and v.shape[0] == input_box != box:
                if v_apix and abs(v_apix - input_apix) > 1e-3 * input_apix:
                    raise InputError(f"{cfg.evaluation.gt_volume}: voxel size {v_apix:.4g} Å differs from the "
                                     f"particles' pixel size {input_apix:.4g} Å")
                gt.input_volume = torch.from_numpy(v).double()
                v, v_apix = fourier_crop_3d(gt.input_volume, box).numpy(), apix
            if v.shape[0] != box:
                raise InputError(f"{cfg.evaluation.gt_volume}: box {v.shape[0]} differs from the particles' {box}")
            if v_apix and abs(v_apix - apix) > 1e-3 * apix:
                raise InputError(f"{cfg.evaluation.gt_volume}: voxel size {v_apix:.4g} Å differs from the particles' "
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
        self._band: tuple[float, BandData] | None = None  # the held-out images on the match band, by radius
        # a fixed, evenly spread sample of the training particles, as many as held out
        train = np.sort(data.train_ids)
        k = min(len(data.eval_ids), len(train))
        self.train_probe_ids = train[np.linspace(0, len(train) - 1, k).round().astype(int)] if k else train

    def __call__(self, model: CryoModel, band_radius: float | None = None, **counters) -> Evaluation:
        """``counters`` (step, train_seconds, ...) head the row; the loss uses ``band_radius``."""
        ids = self.data.eval_ids
        row: dict = dict(counters)
        row["lowpass_shells"] = band_radius
        R, origin, loss = infer(model, self.data.ds, ids, band_radius=band_radius)
        row["loss"] = loss.mean().item()
        row["view_anisotropy"] = viewing_direction_anisotropy(R)
        row.update(self.head_diagnostics(model, ids, band_radius))
        vol = model.decoder.volume().double().cpu()  # exported once per evaluation (costly for FourierNet)
        row.update(self.match_check(vol, R, origin, band_radius))
        if self.track_mirror:
            from ..evaluation.analysis import mirror_symmetry_score
            row["mirror_score"] = mirror_symmetry_score(vol, 32)[0]
        ev = Evaluation(row, R)
        if self.gt.R is not None:
            d_gt = None if self.gt.origin is None else -self.gt.origin[ids]
            m, ev.alignment = pose_metrics(R, self.gt.R[ids], -origin, d_gt)
            row.update(m)
            row.update(self.train_probe(model, band_radius))
            if self.gt.volume is not None:
                ev.fsc, _ = fsc_to_ground_truth(vol, self.gt.volume, ev.alignment, self.data.apix)
                row["resolution_0.5_angstrom"] = ev.fsc.resolution(0.5)
                row["resolution_0.143_angstrom"] = ev.fsc.resolution(0.143)
        return ev

    def train_probe(self, model: CryoModel, band_radius: float | None) -> dict:
        """Pose MSE/MedSE on ``train_probe_ids`` (particles the encoder trains on), aligned on
        their own; with the held-out error it shows memorisation (needs the true poses)."""
        ids = self.train_probe_ids
        if self.gt.R is None or len(ids) == 0:
            return {}
        R, _, _ = infer(model, self.data.ds, ids, band_radius=band_radius)
        m, _ = pose_metrics(R, self.gt.R[ids])
        return {"train_pose_mse": m["pose_mse"], "train_pose_medse": m["pose_medse"]}

    def full_box(self, volume: torch.Tensor, R: torch.Tensor, origin_angstrom: torch.Tensor) -> tuple[object, dict]:
        """The finish's map (the stack's box) and the poses of every particle (R (n, 3, 3),
        origins (n, 2) Å) against the truth, when it is known: (FSC against the true map or
        None, {finish_pose_mse, finish_pose_medse, finish_resolution_0.5_angstrom})."""
        if self.gt.R is None:
            return None, {}
        d_gt = None if self.gt.origin is None else -self.gt.origin
        m, al = pose_metrics(R, self.gt.R, -origin_angstrom, d_gt)
        out = {"finish_pose_mse": m["pose_mse"], "finish_pose_medse": m["pose_medse"]}
        truth = self.gt.input_volume if self.gt.input_volume is not None else self.gt.volume
        if truth is None or truth.shape != volume.shape:
            return None, out
        curve, _ = fsc_to_ground_truth(volume, truth, al, self.data.input_apix)
        out["finish_resolution_0.5_angstrom"] = curve.resolution(0.5)
        return curve, out

    @torch.no_grad()
    def match_check(self, vol: torch.Tensor, R: torch.Tensor, origin: torch.Tensor,
                    band_radius: float | None, radius: float = 16.0) -> dict:
        """The encoder's held-out poses against a projection-matching search of the same images
        in the decoder's current map (no ground truth): ``match_mse``, the mean of
        ‖R_encoder − R_search‖²_F (pose-MSE units, the two in the same frame, so no alignment),
        and ``match_median_deg``. Where the map is right it reads like the pose MSE plus the
        search's own error; where the map is wrong the search is too, so it is a check on the
        encoder given the map, not on the map. ``match_scatter``: the same search with another
        random grid against the first (‖R_search − R_search'‖²_F): the search's own uncertainty,
        which grows with the data's noise (:func:`~.schedule.match_excess` takes it off).
        The search's band: ``radius`` shells, at most the loss band. None for an empty map."""
        ds, ids = self.data.ds, self.data.eval_ids
        if not vol.abs().max() > 0:  # an empty map (at initialisation) matches nothing
            return {"match_mse": None, "match_median_deg": None, "match_scatter": None}
        r = min(radius, ds.box / 2, band_radius or ds.box / 2)
        if self._band is None or self._band[0] != r:  # the held-out images never change: read them once per band

            def reader(b):
                batch = ds.batch(b)
                return batch.images.double().cpu(), None if batch.ctf is None else batch.ctf.cpu()

            self._band = (r, BandData.read(reader, ids, ds.box, r))
        band = self._band[1]
        mc = MatchConfig(radius=r, n_rotations=4096, shift_step_px=0.0, refine_rounds=4, seed=0)
        fv = prepare_fourier_volume(vol, 2)
        start = (R.double(), origin.double() / ds.apix)
        R_s, _, _ = search_poses(fv, band, *start, mc, torch.Generator().manual_seed(0))
        # the same search with another random grid: where it lands elsewhere, the search is unsure
        # of the image (noise, near-ties between views), not the encoder wrong
        R_s2, _, _ = search_poses(fv, band, *start, mc, torch.Generator().manual_seed(1))
        return {"match_mse": ((R.double() - R_s) ** 2).sum((-2, -1)).mean().item(),
                "match_median_deg": geodesic_angle_degrees(R.double(), R_s).median().item(),
                "match_scatter": ((R_s - R_s2) ** 2).sum((-2, -1)).mean().item()}

    @torch.no_grad()
    def head_diagnostics(self, model: CryoModel, ids, band_radius: float | None = None, n: int = 256) -> dict:
        """The rotation head's distance to its singular set (:func:`rotation_head_conditioning`) on
        up to ``n`` held-out images, and with K pose hypotheses the fraction each one wins
        (``hypothesis_shares``, space-separated); empty for encoders without a 6-D head (:meth:`sixd`)."""
        if not hasattr(model.encoder, "sixd"):
            return {}
        was = model.training
        model.eval()
        b = self.data.ds.batch(ids[:n])
        six, _ = model.encoder.sixd(b.images)  # type: ignore[operator]  # (checked above)
        out = rotation_head_conditioning(six)
        if model.n_hypotheses > 1:
            win = model(b.images, b.ctf, band_radius=band_radius).hypothesis
            share = torch.bincount(win.cpu(), minlength=model.n_hypotheses).double() / len(win)
            out["hypothesis_shares"] = " ".join(f"{x:.3f}" for x in share.tolist())
        model.train(was)
        return out


def held_out_summary(ev: Evaluation) -> str:
    """One line a person reads: the held-out pose error and the resolution against the truth."""
    r = ev.row
    if r.get("pose_mse") is None:
        return f"held-out loss {r['loss']:.4g} (no ground truth: no pose error)"
    s = f"held-out pose MSE {r['pose_mse']:.3f}, MedSE {r['pose_medse']:.3f}"
    if r.get("resolution_0.5_angstrom") is not None:
        s += f", resolution at FSC 0.5 vs truth {r['resolution_0.5_angstrom']:.1f} Å"
    return s
