"""Ab initio training: encoder + decoder through the image model, with honest evaluation.

- Data stream from disk (lazy MRC stacks) in a deterministic order: epoch e is the permutation
  ``randperm(seed, e)`` of the training particles, read ahead by one background thread.
- A fixed held-out subset (``eval_n`` particles, never trained on) is evaluated in eval mode
  every ``eval_every`` seconds of *training* time; evaluation time is excluded from the clock.
- Checkpoints (``RUN/checkpoint.pt``) are written atomically every ``checkpoint_every`` seconds
  and at the end, with model, optimiser, RNG and loader state: a resumed run on CPU continues
  exactly as an uninterrupted one would.
- A NaN/Inf loss stops the run with a clear message; the last good checkpoint is left as it
  was (nothing is written after the bad step).
"""

from __future__ import annotations

import csv
import json
import os
import queue
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from ..data.atomic import atomic_path
from ..data.errors import InputError
from ..data.io import load_particles
from ..data.mrc import read_volume, write_volume
from ..data.particles import ParticleTable
from ..evaluation.analysis import view_prior_penalty, viewing_direction_anisotropy
from ..evaluation.metrics import fsc_to_ground_truth, pose_metrics
from ..models.presets import PRESETS, PROFILES, build_model
from ..physics.ctf import ctf_2d
from ..physics.group import displacement_to_origin, origin_to_displacement
from .projection_matching import MatchConfig, projection_matching

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged"]

METRIC_COLUMNS = ["step", "train_seconds", "images_seen", "loss", "lowpass_shells", "pose_mse", "pose_medse", "geodesic_median_deg",
                  "view_median_deg", "shift_rmse_angstrom", "resolution_0.5_angstrom", "resolution_0.143_angstrom",
                  "hand_flipped", "view_anisotropy", "mirror_score"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf."""


@dataclass
class TrainConfig:
    """Everything a run needs; written to ``RUN/config.yaml``. Units in names."""

    particles: str = ""
    out: str = ""
    ctf: str | None = None
    poses: str | None = None  # only to read metadata-less stacks' box, never used for training
    datadir: str | None = None
    gt_poses: str | None = None
    gt_volume: str | None = None
    model: str = "d4-l2"
    profile: str = "cpu"
    decoder: str | None = None
    so3: str = "gram_schmidt"
    encoder_bin: int | None = None  # None: the profile's (average bin×bin blocks before the encoder)
    steps: int | None = None
    time_budget: float | None = None
    seed: int = 0
    batch_size: int = 64
    lr: float = 1e-4
    lr_decoder: float | None = None
    clip: float = 1.0
    device: str = "cpu"
    threads: int | None = None
    eval_every: float = 60.0  # seconds of training time
    eval_n: int = 256
    checkpoint_every: float = 300.0
    apix: float | None = None
    # Frequency marching: the loss sees |k| < r shells, r growing linearly from
    # ``lowpass_start`` to Nyquist over ``lowpass_images`` training images (None: full band).
    lowpass_start: float | None = None
    lowpass_images: int = 50000
    # Uniform-orientation prior (beyond the paper): adds view_prior · ‖mean_b z zᵀ − I/3‖²_F over
    # each batch's predicted viewing directions z, discouraging the collapse of all images onto
    # a few viewing axes (docs/training.md). 0 = off, as the paper.
    view_prior: float = 0.0
    track_mirror: bool = False  # log the map's best mirror-plane correlation at each evaluation
    # Semi-amortized refinement (beyond the paper; docs/training.md): once ``refine_images``
    # images have been seen, the encoder's poses for the training particles seed
    # ``refine_iters`` iterations of projection matching on |k| < ``refine_radius`` shells;
    # the voxel decoder is set to the resulting map and the encoder is then also trained
    # towards the refined poses, with weight ``distill`` (chordal distance² + 0.1 · shift² px²).
    # None = off, as the paper.
    refine_images: int | None = None
    refine_iters: int = 3
    refine_radius: float = 16.0
    # Loss band (shells) once the refined poses are the encoder's targets (None: the
    # frequency-marching schedule goes on). The refined map already holds the higher shells, and
    # what remains is mostly teaching the encoder the refined poses: a narrower band makes each
    # step ~3.7× cheaper at 16 of 32 shells (docs/benchmarks.md), so more images in the same time.
    distill_band: float | None = None
    distill: float = 1.0
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, **overrides) -> "TrainConfig":
        """The configuration saved in ``RUN/config.yaml`` (``out`` set to ``run_dir``), with
        ``overrides`` that are not None applied."""
        path = Path(run_dir) / "config.yaml"
        if not path.exists():
            raise InputError(f"{path}: not found; is {run_dir} a run folder written by eqcryo train?")
        d = yaml.safe_load(path.read_text())
        d.pop("resolved", None)
        d.update({k: v for k, v in overrides.items() if v is not None})
        d["out"] = str(Path(run_dir))
        return cls(**d)


class _Prefetcher:
    """Reads batches (images, ids) ahead in a background thread, in the given order."""

    def __init__(self, t: ParticleTable, order: np.ndarray, batch: int, scale: float, depth: int = 4):
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = False

        def work():
            try:
                for s in range(0, len(order) - batch + 1, batch):
                    if self._stop:
                        return
                    ids = order[s:s + batch]
                    self.q.put((torch.from_numpy(t.images.read(ids) * scale), ids))
                self.q.put(None)
            except Exception as e:  # surfaced in the main thread
                self.q.put(e)

        self.th = threading.Thread(target=work, daemon=True)
        self.th.start()

    def __iter__(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    def close(self):
        self._stop = True
        while not self.q.empty():
            self.q.get_nowait()


class Trainer:
    """Builds data, model and optimiser from a :class:`TrainConfig`; :meth:`run` trains."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, read_only: bool = False):
        """``resume``: continue from RUN/checkpoint.pt; ``read_only``: build for evaluation or
        prediction without touching RUN (the caller loads a checkpoint)."""
        self.cfg = cfg
        self.out = Path(cfg.out)
        if cfg.model not in PRESETS:
            raise InputError(f"unknown model {cfg.model!r}; expected one of {', '.join(PRESETS)}")
        if cfg.profile not in PROFILES:
            raise InputError(f"unknown profile {cfg.profile!r}; expected one of {', '.join(PROFILES)}")
        if cfg.steps is None and cfg.time_budget is None:
            raise InputError("give --steps and/or --time-budget")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.t = load_particles(cfg.particles, ctf=cfg.ctf, datadir=cfg.datadir, apix=cfg.apix)
        if self.t.images is None:
            raise InputError(f"{cfg.particles}: no images")
        self.t.images.validate()
        self.L = self.t.images.box()
        if self.L % 2:
            raise InputError(f"{cfg.particles}: box {self.L} is odd; eqcryo trains on even boxes (crop or pad by one)")
        self.apix = self.t.pixel_size() if self.t.apix is not None else 1.0
        if self.t.ctf is None and cfg.ctf is None and self.t.source_format == "star":
            raise InputError(f"{cfg.particles}: no CTF columns in the STAR file; give --ctf CTF.pkl "
                             f"(or convert the data without CTF to .mrcs and train without one)")
        self.gt_R = self.gt_shift = self.gt_vol = None
        if cfg.gt_poses:
            from ..data.cryodrgn import read_pose_pkl
            R, tr = read_pose_pkl(cfg.gt_poses, self.L)
            if len(R) != self.t.n:
                raise InputError(f"{cfg.gt_poses}: {len(R)} poses but {cfg.particles} has {self.t.n} particles")
            self.gt_R = torch.from_numpy(R)
            self.gt_shift = None if tr is None else torch.from_numpy(tr * self.apix)
        if cfg.gt_volume:
            v, _ = read_volume(cfg.gt_volume)
            if v.shape[0] != self.L:
                raise InputError(f"{cfg.gt_volume}: box {v.shape[0]} differs from the particles' {self.L}")
            self.gt_vol = torch.from_numpy(v).double()
        # Held-out evaluation subset and the training pool (fixed by the seed).
        g = torch.Generator().manual_seed(cfg.seed)
        perm = torch.randperm(self.t.n, generator=g).numpy()
        n_eval = min(cfg.eval_n, max(1, self.t.n // 10))
        self.eval_ids, self.train_ids = np.sort(perm[:n_eval]), perm[n_eval:]
        if len(self.train_ids) < cfg.batch_size:
            raise InputError(f"{cfg.particles}: {len(self.train_ids)} training particles < batch size {cfg.batch_size}")
        # Global intensity scale from a fixed sample (so that losses are O(1)).
        sample = self.t.images.read(self.train_ids[:min(512, len(self.train_ids))])
        self.scale = float(1.0 / (sample.std() + 1e-12))
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model, cfg.profile, self.L, cfg.decoder, cfg.so3, cfg.encoder_bin).to(cfg.device)
        lr_dec = cfg.lr_decoder if cfg.lr_decoder is not None else cfg.lr
        self.opt = torch.optim.Adam([{"params": self.model.encoder.parameters(), "lr": cfg.lr},
                                     {"params": self.model.decoder.parameters(), "lr": lr_dec}], amsgrad=True)
        self.step, self.train_seconds, self.images_seen, self.epoch, self.pos = 0, 0.0, 0, 0, 0
        self.converged: dict | None = None
        self.last_eval_t = 0.0
        # refined poses of every particle (rows of held-out particles stay unused): (n, 3, 3), (n, 2) px
        self.target_R: torch.Tensor | None = None
        self.target_origin_px: torch.Tensor | None = None
        self._tb = None
        if read_only:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self._load_checkpoint()
            self._drop_logs_after_checkpoint()
        else:
            with atomic_path(self.out / "config.yaml") as tmp:
                d = asdict(cfg)
                d["resolved"] = {"box": self.L, "apix": self.apix, "n_particles": self.t.n, "n_eval": len(self.eval_ids),
                                 "intensity_scale": self.scale, "loss": self.model.loss_name,
                                 "decoder": type(self.model.decoder).__name__}
                tmp.write_text(yaml.safe_dump(d, sort_keys=False))
            if (self.out / "metrics.csv").exists():
                (self.out / "metrics.csv").unlink()

    # ------------------------------------------------------------------ state
    def _state(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                "train_seconds": self.train_seconds, "images_seen": self.images_seen, "epoch": self.epoch,
                "pos": self.pos, "converged": self.converged, "last_eval_t": self.last_eval_t,
                "torch_rng": torch.get_rng_state(), "scale": self.scale,
                "target_R": self.target_R, "target_origin_px": self.target_origin_px}

    def save_checkpoint(self) -> None:
        with atomic_path(self.out / "checkpoint.pt") as tmp:
            torch.save(self._state(), tmp)

    def _load_checkpoint(self, path: Path | None = None) -> None:
        p = path or self.out / "checkpoint.pt"
        if not p.exists():
            raise InputError(f"{p}: no checkpoint to resume from")
        s = torch.load(p, map_location=self.cfg.device, weights_only=False)
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
        for k in ("step", "train_seconds", "images_seen", "epoch", "pos", "converged", "last_eval_t", "scale"):
            setattr(self, k, s[k])
        self.target_R, self.target_origin_px = s.get("target_R"), s.get("target_origin_px")
        torch.set_rng_state(s["torch_rng"])

    def _drop_logs_after_checkpoint(self) -> None:
        """A run killed after its last checkpoint has logged evaluations that the resumed run
        will redo: drop the metrics.csv rows and eval_poses.npz entries with a later step, so
        the logs read as one uninterrupted run."""
        path = self.out / "metrics.csv"
        if path.exists():
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                fields, rows = reader.fieldnames, list(reader)
            keep = [r for r in rows if int(r["step"]) <= self.step]
            if len(keep) < len(rows):
                with atomic_path(path) as tmp:
                    with open(tmp, "w", newline="") as fh:
                        w = csv.DictWriter(fh, fieldnames=fields)
                        w.writeheader()
                        w.writerows(keep)
        path = self.out / "eval_poses.npz"
        if path.exists():
            z = dict(np.load(path))
            k = z["steps"] <= self.step
            if not k.all():
                self._write_eval_poses(z["steps"][k], z["train_seconds"][k], z["rotations"][k])

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _infer(self, ids: np.ndarray, table: ParticleTable | None = None, batch: int = 128
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One eval-mode pass over particles ``ids`` of ``table`` (default: the training data):
        (R (k, 3, 3), RELION origins (k, 2) Å, per-image loss (k,)), with the symmetric/mirror
        branch correction applied to the poses."""
        t = self.t if table is None else table
        was = self.model.training
        self.model.eval()
        Rs, ds, losses = [], [], []
        for s in range(0, len(ids), batch):
            b = ids[s:s + batch]
            x = torch.from_numpy(t.images.read(b) * self.scale).to(self.cfg.device)
            out = self.model(x, self._ctf(b, t))
            Rs.append(out.R.double().cpu())
            ds.append(out.d.double().cpu())
            losses.append(out.loss.cpu())
        self.model.train(was)
        return torch.cat(Rs), displacement_to_origin(torch.cat(ds), self.L) * self.apix, torch.cat(losses)

    def predict(self, ids: np.ndarray, table: ParticleTable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Poses for particles ``ids`` (of ``table``, default the training data) in eval mode:
        (R (k, 3, 3), RELION origins (k, 2) Å), branch-corrected."""
        R, origin, _ = self._infer(ids, table)
        return R, origin

    def _ctf(self, ids, table: ParticleTable | None = None):
        p = (self.t if table is None else table).ctf_params(ids)
        if p is None:
            return None
        return ctf_2d(self.L, self.apix, p, torch.float32, self.cfg.device)

    def evaluate(self, log: bool = True) -> dict:
        """Metrics on the held-out subset (and the map against the truth when given)."""
        row: dict = {"step": self.step, "train_seconds": round(self.train_seconds, 2), "images_seen": self.images_seen}
        self._set_lowpass()
        row["lowpass_shells"] = self.lowpass_radius()
        R, origin, loss = self._infer(self.eval_ids)
        row["loss"] = loss.mean().item()
        row["view_anisotropy"] = viewing_direction_anisotropy(R)
        vol = None  # the decoder's map, exported at most once per evaluation (costly for FourierNet)
        if self.cfg.track_mirror or (self.gt_R is not None and self.gt_vol is not None):
            vol = self.model.decoder.volume().double().cpu()
        if self.cfg.track_mirror:
            from ..evaluation.analysis import mirror_symmetry_score
            row["mirror_score"] = mirror_symmetry_score(vol, 32)[0]
        if log:
            self._save_eval_poses(R)
        self.alignment = None
        if self.gt_R is not None and len(self.gt_R) == self.t.n:
            d_gt = None if self.gt_shift is None else -self.gt_shift[self.eval_ids]
            m, al = pose_metrics(R, self.gt_R[self.eval_ids], -origin, d_gt)
            self.alignment = al
            row.update({k: m.get(k) for k in METRIC_COLUMNS if k in m})
            if self.converged is None and m["pose_mse"] < 0.1:
                self.converged = {"step": self.step, "train_seconds": self.train_seconds,
                                  "images_seen": self.images_seen}
            if self.gt_vol is not None:
                r, _ = fsc_to_ground_truth(vol, self.gt_vol, al, self.apix)
                row["resolution_0.5_angstrom"] = r.resolution(0.5)
                row["resolution_0.143_angstrom"] = r.resolution(0.143)
                self.last_fsc = r
        if log:
            self._log(row)
        return row

    def _save_eval_poses(self, R: torch.Tensor) -> None:
        """Append this evaluation's held-out predictions to RUN/eval_poses.npz (for App. G)."""
        path = self.out / "eval_poses.npz"
        old = dict(np.load(path)) if path.exists() else {}
        steps = np.append(old.get("steps", np.zeros(0, np.int64)), self.step)
        secs = np.append(old.get("train_seconds", np.zeros(0)), self.train_seconds)
        rots = np.concatenate([old.get("rotations", np.zeros((0, len(self.eval_ids), 3, 3), np.float32)),
                               R.float().numpy()[None]])
        self._write_eval_poses(steps, secs, rots)

    def _write_eval_poses(self, steps: np.ndarray, secs: np.ndarray, rots: np.ndarray) -> None:
        with atomic_path(self.out / "eval_poses.npz", suffix=".npz") as tmp:
            np.savez(tmp, steps=steps, train_seconds=secs, rotations=rots, eval_ids=self.eval_ids)

    def _log(self, row: dict) -> None:
        path = self.out / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in METRIC_COLUMNS})
        try:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.out / "tensorboard"))
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self._tb.add_scalar(f"eval/{k}", v, self.step)
            self._tb.flush()
        except ImportError:
            pass

    # ------------------------------------------------------------------ training
    def _order(self, epoch: int) -> np.ndarray:
        g = torch.Generator().manual_seed(self.cfg.seed * 1000003 + epoch)
        return self.train_ids[torch.randperm(len(self.train_ids), generator=g).numpy()]

    def lowpass_radius(self) -> float | None:
        """Current loss band limit in Fourier shells (None: full band)."""
        c = self.cfg
        if c.distill_band is not None and self.target_R is not None:
            return None if c.distill_band >= self.L / 2 else float(c.distill_band)
        if c.lowpass_start is None:
            return None
        r = c.lowpass_start + (self.L / 2 - c.lowpass_start) * min(1.0, self.images_seen / max(1, c.lowpass_images))
        return None if r >= self.L / 2 else r

    def _set_lowpass(self) -> None:
        self.model.band_radius = self.lowpass_radius()

    def _done(self) -> bool:
        c = self.cfg
        return (c.steps is not None and self.step >= c.steps) or \
               (c.time_budget is not None and self.train_seconds >= c.time_budget)

    def _due_refinement(self) -> bool:
        c = self.cfg
        return c.refine_images is not None and self.target_R is None and self.images_seen >= c.refine_images

    def refine(self, log=print) -> None:
        """Projection matching from the encoder's poses of the training particles (module
        :mod:`~eqcryo.training.projection_matching`); sets the distillation targets and, for the
        voxel decoder, the map. Its time counts as training time."""
        from ..models.decoders import VoxelDecoder

        c = self.cfg
        t0 = time.perf_counter()
        ids = self.train_ids
        R, origin = self.predict(ids)

        def reader(b):  # projection matching runs on the CPU
            ctf = self._ctf(b)
            return torch.from_numpy(self.t.images.read(b)), None if ctf is None else ctf.cpu()

        history = []

        def report(it, R_it, o_it):
            h = {"iteration": it + 1, "seconds": round(time.perf_counter() - t0, 2)}
            if self.gt_R is not None:
                m, _ = pose_metrics(R_it, self.gt_R[ids])
                h.update(train_pose_mse=m["pose_mse"], train_pose_medse=m["pose_medse"])
            history.append(h)
            log(f"projection matching {it + 1}/{c.refine_iters}: " +
                ", ".join(f"{k} {v:.4g}" for k, v in h.items() if k != "iteration"))

        mc = MatchConfig(radius=min(c.refine_radius, self.L / 2), shift_step_px=0.0, seed=c.seed)
        R_ref, o_ref, vol = projection_matching(reader, ids, self.L, R.double(), origin.double() / self.apix,
                                                c.refine_iters, mc, report)
        self.target_R = torch.zeros(self.t.n, 3, 3)
        self.target_origin_px = torch.zeros(self.t.n, 2)
        self.target_R[ids], self.target_origin_px[ids] = R_ref.float(), o_ref.float()
        if isinstance(self.model.decoder, VoxelDecoder):
            with torch.no_grad():
                self.model.decoder.vol.copy_(vol.float().to(c.device) * self.scale)
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        info = {"images_seen": self.images_seen, "step": self.step, "seconds": round(seconds, 2),
                "decoder_set_to_map": isinstance(self.model.decoder, VoxelDecoder), "iterations": history,
                "match_config": asdict(mc)}
        with atomic_path(self.out / "refinement.json") as tmp:
            tmp.write_text(json.dumps(info, indent=2) + "\n")

    def _distill_penalty(self, out, ids: np.ndarray) -> torch.Tensor:
        """Mean over the batch of ‖R − R*‖²_F + 0.1 ‖d − d*‖² (px²) to the refined poses."""
        dev = out.R.device
        R_t = self.target_R[ids].to(dev)
        d_t = origin_to_displacement(self.target_origin_px[ids], self.L).to(dev)
        return ((out.R - R_t) ** 2).sum((-2, -1)).mean() + 0.1 * ((out.d - d_t) ** 2).sum(-1).mean()

    def run(self, progress: bool = True) -> dict:
        c = self.cfg
        self.model.train()
        if self.step == 0 and not (self.out / "metrics.csv").exists():
            self.evaluate()
        # redirected to a log file, a bar redrawn 10 times a second would fill it: every 30 s there
        bar = tqdm(desc=f"train {c.model}", unit="img", disable=not progress, initial=self.images_seen,
                   total=None if c.steps is None else c.steps * c.batch_size,
                   mininterval=0.1 if sys.stderr.isatty() else 30.0)
        last_ckpt = self.train_seconds
        try:
            while not self._done():
                order = self._order(self.epoch)
                fetch = _Prefetcher(self.t, order[self.pos:], c.batch_size, self.scale)
                for x, ids in fetch:
                    t0 = time.perf_counter()
                    x = x.to(c.device)
                    self._set_lowpass()
                    out = self.model(x, self._ctf(ids))
                    loss = out.loss.mean()
                    if c.view_prior:
                        loss = loss + c.view_prior * view_prior_penalty(out.R)
                    if self.target_R is not None and c.distill:
                        loss = loss + c.distill * self._distill_penalty(out, ids)
                    if not torch.isfinite(loss):
                        fetch.close()
                        raise TrainingDiverged(
                            f"loss became {loss.item()} at step {self.step + 1}; stopping. The last good checkpoint "
                            f"({self.out / 'checkpoint.pt'}) is left as it was: lower --lr or check the data")
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.clip)
                    self.opt.step()
                    self.step += 1
                    self.pos += len(ids)
                    self.images_seen += len(ids)
                    self.train_seconds += time.perf_counter() - t0
                    bar.update(len(ids))
                    bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{self.images_seen / max(self.train_seconds, 1e-9):.0f}",
                                    mse=getattr(self, "_last_mse", "-"), refresh=False)  # refresh=True would redraw every step
                    if self._due_refinement():
                        fetch.close()
                        self.refine(log=bar.write)
                        self.evaluate()
                        self.last_eval_t = self.train_seconds
                        self.save_checkpoint()
                        last_ckpt = self.train_seconds
                        break  # restart the loader: the batch order continues at self.pos
                    if self.train_seconds - self.last_eval_t >= c.eval_every:
                        self.last_eval_t = self.train_seconds
                        r = self.evaluate()
                        self._last_mse = f"{r['pose_mse']:.3f}" if r.get("pose_mse") is not None else "-"
                    if self.train_seconds - last_ckpt >= c.checkpoint_every:
                        self.save_checkpoint()
                        last_ckpt = self.train_seconds
                    if self._done():
                        fetch.close()
                        break
                else:
                    self.epoch += 1
                    self.pos = 0
        finally:
            bar.close()
        self.evaluate()
        self.save_checkpoint()
        return self.finish()

    # ------------------------------------------------------------------ outputs
    def finish(self) -> dict:
        """Write the map, predicted poses for every particle, figures and the report."""
        from ..data.cryodrgn import write_pose_pkl
        from ..data.star import write_star
        from ..evaluation.report import write_report

        vol = self.model.decoder.volume().float().cpu().numpy()
        write_volume(self.out / "reconstruction.mrc", vol, self.apix)
        R, origin = self.predict(np.arange(self.t.n))
        pred = ParticleTable(n=self.t.n, box=self.L, apix=np.full(self.t.n, self.apix), images=self.t.images,
                             image_names=self.t.image_names, ctf=self.t.ctf, rotations=R.numpy(),
                             shifts_angstrom=origin.numpy(), source=self.cfg.particles, source_format="pred")
        write_pose_pkl(self.out / "predicted_poses.pkl", pred)
        if pred.image_names is not None:
            write_star(self.out / "predicted_particles.star", pred)
        summary = {"steps": self.step, "train_seconds": self.train_seconds, "images_seen": self.images_seen,
                   "converged": self.converged}
        if getattr(self, "last_fsc", None) is not None:
            with atomic_path(self.out / "fsc.json") as tmp:
                tmp.write_text(json.dumps(self.last_fsc.to_dict(), indent=2) + "\n")
        with atomic_path(self.out / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
        write_report(self, vol)
        return summary
