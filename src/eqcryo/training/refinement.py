"""Semi-amortized refinement inside training (beyond the paper; docs/training.md).

At its trigger the encoder's poses of the training particles seed projection matching
(:mod:`eqcryo.reconstruction.projection_matching`) on a Fourier band; the refined poses become
distillation *targets* the encoder is pulled towards (weight ``distill``), and a decoder that
accepts a map is set to the refined map. The targets are this object's state (checkpointed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch

from ..evaluation.metrics import pose_metrics
from ..models.autoencoder import CryoModel, ModelOutput
from ..physics.group import origin_to_displacement
from ..physics.projection import prepare_fourier_volume
from ..physics.rotations import geodesic_angle_degrees
from ..reconstruction.classification import normalised_correlation, otsu_split
from ..reconstruction.projection_matching import BandData, MatchConfig, projection_matching
from .batches import TrainingData
from .inference import infer

__all__ = ["Refinement"]


class Refinement:
    """Distillation targets for every particle (rows of held-out particles stay unused):
    ``target_R`` (n, 3, 3), ``target_origin_px`` (n, 2); None until :meth:`run`."""

    #: a round whose last iteration moved fewer than this fraction of the particles by more
    #: than SETTLE_DEG has *settled*: the search has stopped changing the poses
    SETTLE_FRACTION, SETTLE_DEG = 0.01, 5.0

    def __init__(self, iters: int, radius: float, distill: float, seed: int, keep: int = 1, orbit: int = 1,
                 all_hypotheses_once_settled: bool = False, trim: bool = False, min_kept: int = 64,
                 max_particles: int | None = None):
        self.iters, self.radius, self.distill, self.seed, self.keep = iters, radius, distill, seed, keep
        #: rounds search at most this many training particles (:meth:`searched`; None: all)
        self.max_particles = max_particles
        #: with ``trim``: never fewer training particles than this (at least a batch)
        self.trim, self.min_kept = trim, min_kept
        #: with ``trim``: the training particles the last round's map explains (None: all)
        self.kept: np.ndarray | None = None
        self.orbit, self.all_hypotheses_once_settled = orbit, all_hypotheses_once_settled
        self.target_R: torch.Tensor | None = None
        self.target_origin_px: torch.Tensor | None = None
        self.settled = False
        #: (L, L) mean |FFT2(image - render at the refined pose)|² over training particles: the
        #: noise's 2-D power spectrum (unshifted FFT layout), for simulated distillation images
        self.noise_psd: torch.Tensor | None = None

    @property
    def has_targets(self) -> bool:
        return self.target_R is not None

    def searched(self, train_ids: np.ndarray) -> np.ndarray:
        """The training particles every round searches (sorted): all of them, or a random subset
        of ``max_particles`` fixed by the seed (the same every round and after a resume). A search
        costs time in proportion to the particles; an encoder learns poses from ~20k as well as
        from millions, and gives every particle its pose at the end."""
        if self.max_particles is None or len(train_ids) <= self.max_particles:
            return train_ids
        pick = np.random.default_rng(self.seed + 7919).choice(len(train_ids), self.max_particles, replace=False)
        return np.sort(train_ids[pick])

    def run(self, model: CryoModel, data: TrainingData, gt_R: torch.Tensor | None = None,
            log: Callable[[str], None] = print) -> dict:
        """Refine the training particles' poses from the model's; set the targets (and the map, if
        the decoder accepts one). Returns the record written to refinement.json."""
        t0 = time.perf_counter()
        ids, L, apix, dev = self.searched(data.train_ids), data.box, data.apix, data.ds.device
        R, origin, _ = infer(model, data.ds, ids)

        def reader(b):  # projection matching runs on the CPU, in the data's own units
            ctf = data.ds.ctf(b)
            return data.ds.read_images(b, scaled=False).to(torch.float32), None if ctf is None else ctf.cpu()

        history = []
        prev = [R.double()]

        def report(it, R_it, o_it):
            moved = (geodesic_angle_degrees(prev[0], R_it) > self.SETTLE_DEG).double().mean().item()
            prev[0] = R_it
            h = {"iteration": it + 1, "seconds": round(time.perf_counter() - t0, 2),
                 "moved_fraction": moved}
            if gt_R is not None:
                m, _ = pose_metrics(R_it, gt_R[ids])
                h.update(train_pose_mse=m["pose_mse"], train_pose_medse=m["pose_medse"])
            history.append(h)
            log(f"projection matching {it + 1}/{self.iters}: " +
                ", ".join(f"{k} {v:.4g}" for k, v in h.items() if k != "iteration"))

        if gt_R is not None:  # iteration 0: the encoder's poses the search starts from
            m, _ = pose_metrics(R, gt_R[ids])
            history.append({"iteration": 0, "train_pose_mse": m["pose_mse"], "train_pose_medse": m["pose_medse"]})
        mc = MatchConfig(radius=min(self.radius, L / 2), shift_step_px=0.0, seed=self.seed, keep=self.keep,
                         orbit=self.orbit)
        # trimming: the maps are made from the particles the last round kept; every particle is searched
        recon = None if not (self.trim and self.kept is not None) else np.nonzero(np.isin(ids, self.kept))[0]
        band = BandData.read(reader, ids, L, mc.radius)  # (read once: the search's and the trim's)
        R_ref, o_ref, vol = projection_matching(reader, ids, L, R.double(), origin.double() / apix, self.iters,
                                                mc, report, recon, band)
        self.settled = history[-1]["moved_fraction"] < self.SETTLE_FRACTION
        moved = None
        if self.target_R is not None:  # how far this round moved the previous round's poses (no truth needed)
            moved = geodesic_angle_degrees(self.target_R[ids].double(), R_ref).median().item()
        self.target_R = torch.zeros(data.n, 3, 3)
        self.target_origin_px = torch.zeros(data.n, 2)
        self.target_R[ids], self.target_origin_px[ids] = R_ref.float(), o_ref.float()
        trim = None
        if self.trim:
            trim = self.trim_particles(band, ids, vol, R_ref, o_ref)
            log(f"trim: {trim['kept']} of {len(ids)} training particles best explained by the map (normalised "
                f"correlation above {trim['kept_above']:.3f}) go on training")
        if model.decoder.accepts_volume:
            model.decoder.set_volume(vol.float().to(dev) * data.scale)
        self.noise_psd = self.residual_power(model, data)
        return {"trim": trim, "seconds": round(time.perf_counter() - t0, 2),
                "decoder_set_to_map": model.decoder.accepts_volume,
                "median_change_from_previous_round_deg": moved, "settled": self.settled,
                "iterations": history, "match_config": asdict(mc)}

    def trim_particles(self, band: BandData, ids: np.ndarray, vol: torch.Tensor, R: torch.Tensor,
                       origin_px: torch.Tensor) -> dict:
        """Keep the particles of ``ids`` the map ``vol`` explains best: of those above the
        two-group split (Otsu) of the normalised correlation ρ at their refined poses (not
        junk), those above the two-group split of their ρ. On a mixture the map then grows
        towards the species it already favours, round by round, rather than an average of
        several; re-decided over all training particles every round, so a particle left out
        early can come back. ``band``: the particles' band data, rows in the order of ``ids``."""
        rho = normalised_correlation(prepare_fourier_volume(vol.double(), 2), band, R, origin_px).numpy()
        split = otsu_split(rho)
        real = rho >= split
        # the split of what is not junk: near the median while the map is a blend (one group),
        # between the species once the map has become one of them (two groups; then it may cut
        # into the map's own species too: purity before numbers, a few thousand particles suffice)
        cut = otsu_split(rho[real]) if real.sum() >= 2 else split
        keep = rho >= cut
        need = min(len(ids), max(self.min_kept, len(ids) // 10))
        if keep.sum() < need:  # never trim to almost nothing (nor below a batch): the best explained
            cut = float(np.sort(rho)[-need])
            keep = rho >= cut
        self.kept = np.sort(ids[keep])
        return {"kept": int(keep.sum()), "junk_split": float(split), "kept_above": cut,
                "rho_median": float(np.median(rho))}

    @torch.no_grad()
    def residual_power(self, model: CryoModel, data: TrainingData, n: int = 512, chunk: int = 64) -> torch.Tensor:
        """(L, L) mean |FFT2(y - model.render(R*, d*))|² over up to ``n`` training particles at
        their targets: what the current map does not explain — noise, plus the few particles
        still at wrong poses (a few %, which inflate it slightly)."""
        ids = data.train_ids[:n]
        total = None
        for s in range(0, len(ids), chunk):
            b = data.ds.batch(ids[s:s + chunk])
            R_t, d_t = self.targets(b.ids, data.box, b.images.device)
            r = b.images - model.render(R_t.to(b.images.dtype), d_t.to(b.images.dtype), b.ctf)
            p = (torch.fft.fft2(r.double()).abs() ** 2).sum(0)
            total = p if total is None else total + p
        assert isinstance(total, torch.Tensor)  # (at least one chunk)
        return (total / len(ids)).float().cpu()

    def simulate_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, L, L) Gaussian noise with the 2-D power spectrum :attr:`noise_psd` (CPU): white
        noise w has E|FFT2 w|² = L², so FFT2 w · √psd / L has E|·|² = psd."""
        if self.noise_psd is None:
            raise RuntimeError("simulate_noise before a refinement measured the noise spectrum")
        L = self.noise_psd.shape[-1]
        w = torch.randn(n, L, L, generator=generator)
        return torch.fft.ifft2(torch.fft.fft2(w) * self.noise_psd.sqrt() / L).real

    def targets(self, ids: np.ndarray, box: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Target rotations (B, 3, 3) and displacements (B, 2) px of particles ``ids``."""
        if self.target_R is None or self.target_origin_px is None:
            raise RuntimeError("targets before a refinement set them")
        return (self.target_R[ids].to(device),
                origin_to_displacement(self.target_origin_px[ids], box).to(device))

    def pose_distance(self, out: ModelOutput, R_t: torch.Tensor, d_t: torch.Tensor,
                      turn: torch.Tensor | None = None) -> torch.Tensor:
        """``distill`` × mean over the batch of ‖R − R_t‖²_F + 0.1 ‖d − d_t‖² (px²). ``turn``
        (B, 2, 2): the images were turned in-plane by these
        (:func:`~eqcryo.physics.group.turn_images`), so the targets are turned with them. With K
        pose hypotheses (``out.R`` (B, K, 3, 3), a poses-only step) each image pulls only its
        hypothesis nearest the target (winner-take-all, as the image loss does) — or, with
        ``all_hypotheses_once_settled`` after a settled round, every hypothesis (mean over K)."""
        if turn is not None:
            g = turn.to(R_t.dtype)
            R_t = torch.cat([g @ R_t[:, :2], R_t[:, 2:]], 1)  # diag(g, 1) R*
            d_t = (g @ d_t[..., None])[..., 0]
        if out.R.dim() == 4:
            per_k = ((out.R - R_t[:, None]) ** 2).sum((-2, -1))  # (B, K)
            # a settled round's targets are trusted: then every hypothesis learns them, so the
            # one the image loss picks at prediction is right too (with the winner alone, K = 8
            # fit its training targets worse than K = 1 and the image loss picked a wrong head)
            rot = per_k.mean(1) if self.all_hypotheses_once_settled and self.settled else per_k.min(1).values
        else:
            rot = ((out.R - R_t) ** 2).sum((-2, -1))
        return self.distill * (rot.mean() + 0.1 * ((out.d - d_t) ** 2).sum(-1).mean())

    def penalty(self, out: ModelOutput, ids: np.ndarray, box: int, turn: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`pose_distance` to the targets of particles ``ids`` (0 before :meth:`run`)."""
        if self.target_R is None or not self.distill:
            return out.loss.new_zeros(())
        return self.pose_distance(out, *self.targets(ids, box, out.R.device), turn)

    def broadcast(self, dist, model: CryoModel, n: int) -> None:
        """Rank 0's targets, noise spectrum and decoder (the refined map) on every rank (:mod:`.distributed`)."""
        if not dist.is_main:
            self.target_R, self.target_origin_px = torch.zeros(n, 3, 3), torch.zeros(n, 2)
            self.noise_psd = torch.zeros(model.box, model.box)
        for t in (self.target_R, self.target_origin_px, self.noise_psd, *model.decoder.parameters()):
            dist.broadcast_(t)

    def state_dict(self) -> dict:
        return {"target_R": self.target_R, "target_origin_px": self.target_origin_px, "settled": self.settled,
                "noise_psd": self.noise_psd, "kept": None if self.kept is None else torch.from_numpy(self.kept)}

    def load_state_dict(self, s: dict) -> None:
        self.target_R, self.target_origin_px = s["target_R"], s["target_origin_px"]
        self.settled = bool(s.get("settled", False))
        self.noise_psd = s.get("noise_psd")
        kept = s.get("kept")
        self.kept = None if kept is None else kept.numpy().astype(np.int64)
