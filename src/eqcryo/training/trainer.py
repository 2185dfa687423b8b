"""The training loop: encoder + decoder through the image model, with honest evaluation.

Its parts live beside it: :mod:`.config` (what a run is, recipes), :mod:`.batches` (the data,
held-out split, seeded order), :mod:`.schedule` (clock, loss band, triggers, stop rule),
:mod:`.evaluator`, :mod:`.refinement` and :mod:`.rundir` (every file of the run folder).

- Batch ``k`` of epoch ``e`` is fixed by the seed; a resumed run on CPU continues exactly as an
  uninterrupted one would (model, optimiser, schedules, RNG and position are checkpointed).
- Every ``eval_every`` seconds of training wall time the held-out subset is evaluated in eval
  mode; evaluation time is measured apart (``eval_seconds``) and not counted as training.
- Checkpoints are written atomically every ``checkpoint_every`` seconds and at the end.
- A NaN/Inf loss stops the run with a clear message; the last good checkpoint is left as it was.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..data.dataset import free_memory_bytes
from ..data.errors import InputError
from ..evaluation.analysis import view_prior_penalty
from ..physics.group import in_plane_turn, turn_images
from ..physics.rotations import random_rotations
from ..reconstruction.gold_standard import FinishConfig, FinishResult, gold_standard_finish, largest_final_box
from .batches import TrainingData
from .config import TrainConfig, resolve_device
from .distributed import Distributed, sync_batch_norm
from .evaluator import Evaluation, Evaluator, GroundTruth
from .inference import build_for, half_map_fsc, infer, posed_table, predicted_table
from .provenance import provenance
from .refinement import Refinement
from .rundir import RunDir
from .schedule import Clock, Interrupt, LossBand, Periodic, RefinementTrigger, StopRule

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "TrainingInterrupted"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C, SIGTERM or SIGUSR1 during training: a checkpoint was saved after the last whole step."""

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.signum = signum  # the signal that stopped the run (2: SIGINT)


class Trainer:
    """Builds data, model, optimiser and schedules from a :class:`TrainConfig`; :meth:`run` trains."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, command: str | None = None,
                 dist: Distributed | None = None):
        """``resume``: continue from RUN/checkpoint.pt (the logs are cut back to it); ``command``:
        the command line, for the summary and the report; ``dist``: this process's place among
        ``torchrun``'s (:mod:`.distributed`; rank 0 alone writes the run folder)."""
        self.cfg = cfg.validate()
        opt, ref, ev = cfg.optimisation, cfg.refinement, cfg.evaluation
        self.dist = dist or Distributed(device=resolve_device(cfg.compute.device))
        # cuda:LOCAL_RANK under torchrun; "auto": CUDA when there is a GPU
        self.device = self.dist.device if self.dist.active else resolve_device(cfg.compute.device)
        if ref.trim and self.dist.active:
            raise InputError("refinement.trim: trimming runs in one process (not under torchrun) for now")
        if opt.batch_size % self.dist.world:
            raise InputError(f"optimisation.batch_size {opt.batch_size} is not a multiple of the {self.dist.world} "
                             f"processes")
        self.run_dir = RunDir(cfg.output.dir)
        if cfg.compute.threads:
            torch.set_num_threads(cfg.compute.threads)
        self.data = TrainingData(cfg, device=self.device)
        self.gt = GroundTruth.load(cfg, self.data.n, self.data.box, self.data.apix, self.data.input_box,
                                   self.data.input_apix)
        self.evaluator = Evaluator(self.data, self.gt, ev.track_mirror)
        self.model = build_for(cfg, self.data.box, self.device)
        self.net: torch.nn.Module = self.model  # what the step calls: the model, or its DistributedDataParallel wrapper
        if self.dist.active:
            self.model = sync_batch_norm(self.model, self.device)  # type: ignore[assignment]  # (the same model)
            dev = torch.device(self.device)
            # distillation steps leave the decoder unused
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[dev.index] if dev.type == "cuda" else None,
                find_unused_parameters=ref.distill_only)
        lr_dec = opt.lr_decoder if opt.lr_decoder is not None else opt.lr
        self.opt = torch.optim.Adam([{"params": self.model.encoder.parameters(), "lr": opt.lr},
                                     {"params": self.model.decoder.parameters(), "lr": lr_dec}], amsgrad=True)
        self.clock = Clock(self.device)
        self.band = LossBand(self.data.box, opt.lowpass_start_shells, opt.lowpass_images, ref.distill_band_shells)
        self.refine_trigger = RefinementTrigger(ref.start_images, ref.every_images, ref.max_rounds, ref.min_rounds)
        self.refinement = Refinement(ref.iters, ref.radius_shells, ref.distill_weight, opt.seed, ref.keep, ref.orbit,
                                     all_hypotheses_once_settled=ref.distill_hypotheses != "winner", trim=ref.trim,
                                     min_kept=max(64, opt.batch_size), max_particles=ref.max_particles)
        self.eval_timer = Periodic(ev.every_seconds)
        self.finishing = ref.finish == "yes" or (ref.finish == "auto" and self.data.input_box > self.data.box)
        budget = opt.time_budget_seconds
        if budget is not None and self.finishing:  # the finish's share of the budget is kept for it
            budget = budget * (1 - ref.finish_budget_fraction)
        self.stop = StopRule(opt.steps, budget, ev.stop_match_mse)
        self.stages: list[dict] = []  # [{stage, box, images, start_seconds, end_seconds}] of this process's run
        self.step, self.images_seen, self.epoch, self.pos = 0, 0, 0, 0
        self.converged: dict | None = None
        self.last_eval: Evaluation | None = None
        self.command = command
        if resume:
            recorded, resolved = self.run_dir.read_config()
            self.data.check_same_data(resolved.get("inputs"), str(self.run_dir.path))
            self.load_state(self.run_dir.load_checkpoint(map_location=self.device))
            moved = (cfg.data.particles, cfg.data.datadir) != (recorded.data.particles, recorded.data.datadir)
            if moved and self.dist.is_main:  # the same particles, elsewhere (--data): the record follows them
                self.run_dir.write_config(cfg, resolved)
        if not self.dist.is_main:
            return
        # the training log's first line (after the data's notes): where this runs. Not before the
        # checks above, so that a refusal stays one line
        self.provenance = provenance(str(self.device), self.dist.world, command)  # (rank 0 writes it)
        print(f"eqcryo {self.provenance['eqcryo']}: device {self.device} ({self.provenance['device_name']}), "
              f"{self.dist.world} process{'es' if self.dist.world > 1 else ''}, {self.provenance['threads']} "
              f"thread{'s' if self.provenance['threads'] > 1 else ''} each", file=sys.stderr)
        self.run_dir.path.mkdir(parents=True, exist_ok=True)
        self.run_dir.remove_stale_temporaries()
        if resume:
            self.run_dir.truncate_logs(self.step)
        else:
            self.run_dir.write_config(cfg, {**self.data.resolved(), "provenance": self.provenance,
                                            "loss": self.model.loss_name,
                                            "decoder": type(self.model.decoder).__name__})
            self.run_dir.clear_logs()

    def band_radius(self) -> float | None:
        """The loss band (shells) at this point of training."""
        return self.band.radius(self.images_seen, self.refinement.has_targets)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "counters": {"step": self.step, "images_seen": self.images_seen, "epoch": self.epoch, "pos": self.pos},
                "converged": self.converged, "clock": self.clock.state_dict(),
                "eval_timer": self.eval_timer.state_dict(),
                "refine_trigger": self.refine_trigger.state_dict(), "refinement": self.refinement.state_dict(),
                "stop": self.stop.state_dict(),
                "torch_rng": torch.get_rng_state(), "scale": self.data.scale}

    def load_state(self, s: dict) -> None:
        try:
            self.model.load_state_dict(s["model"])
            self.opt.load_state_dict(s["opt"])
            self.step, self.images_seen, self.epoch, self.pos = (int(s["counters"][k]) for k in
                                                                 ("step", "images_seen", "epoch", "pos"))
            self.converged = s["converged"]
            for name in ("clock", "eval_timer", "refine_trigger", "refinement"):
                getattr(self, name).load_state_dict(s[name])
            self.stop.load_state_dict(s.get("stop", {}))
            torch.set_rng_state(s["torch_rng"])
            self.data.set_active(self.active_after_refinement())
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise InputError(f"{self.run_dir / RunDir.CHECKPOINT}: does not fit this run or this version of eqcryo "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None

    def save_checkpoint(self) -> None:
        if self.dist.is_main:
            self.run_dir.save_checkpoint(self.state_dict())

    # ------------------------------------------------------------------ evaluation
    def counters(self) -> dict:
        """Where the run is (the first columns of a metrics.csv row)."""
        return {"step": self.step, "train_seconds": round(self.clock.train_seconds, 2),
                "eval_seconds": round(self.clock.eval_seconds, 2), "images_seen": self.images_seen}

    def evaluate(self) -> Evaluation | None:
        """Evaluate, log to metrics.csv / eval_poses.npz / TensorBoard; its time is not training time.
        (Rank 0 only: the others go on to the next step and wait for it there.)"""
        if not self.dist.is_main:
            return None
        with self.clock.excluded():
            ev = self.evaluator(self.model, self.band_radius(), **self.counters())
            if ev.converged and self.converged is None:
                self.converged = {"step": self.step, "train_seconds": self.clock.train_seconds,
                                  "images_seen": self.images_seen}
            self.last_eval = ev
            self.stop.observe(ev.row, self.refinement.settled)
            self.run_dir.append_eval_poses(self.step, self.clock.train_seconds, ev.R, self.data.eval_ids)
            self.run_dir.append_metrics(ev.row)
            self.run_dir.log_scalars(ev.row, self.step)
        return ev

    # ------------------------------------------------------------------ training
    def train_step(self, batch) -> torch.Tensor:
        """One optimiser step on ``batch``; returns the (detached) loss."""
        c = self.cfg
        poses_only = c.refinement.distill_only and self.refinement.has_targets
        if poses_only:
            images, R_t, d_t, turn = self.distillation_batch(batch)
            out = self.net(images, batch.ctf, poses_only=True)
            loss = self.refinement.pose_distance(out, R_t, d_t, turn)
        else:
            out = self.net(batch.images, batch.ctf, band_radius=self.band_radius())
            loss = out.loss.mean()
            if self.refinement.has_targets and c.refinement.distill_weight:
                loss = loss + self.refinement.penalty(out, batch.ids, self.data.box)
        if c.optimisation.view_prior:  # (every hypothesis of a poses-only step: none is chosen there)
            loss = loss + c.optimisation.view_prior * view_prior_penalty(out.R.reshape(-1, 3, 3))
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at step {self.step + 1}; stopping. The last good checkpoint "
                f"({self.run_dir / RunDir.CHECKPOINT}) is left as it was: lower the learning rate or check the data")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.optimisation.grad_clip)
        self.opt.step()
        self.step += 1
        self.pos += c.optimisation.batch_size  # global: every rank trained on its slice of the same batch
        self.images_seen += c.optimisation.batch_size
        return loss.detach()

    def distillation_batch(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Images (B, L, L), target rotations (B, 3, 3) and displacements (B, 2) px, and in-plane
        turns (B, 2, 2) or None of a poses-only step: the batch's images with their refined poses,
        the first ``distill_simulate`` of them replaced by images simulated from the current map,
        all turned by random angles with ``distill_augment``. Random draws are reproducible from
        (seed, step)."""
        c = self.cfg
        images = batch.images
        R_t, d_t = self.refinement.targets(batch.ids, self.data.box, images.device)
        gen = torch.Generator().manual_seed(c.optimisation.seed * 1_000_003 + self.step)
        n_sim = int(round(c.refinement.distill_simulate * len(images)))
        if n_sim:
            R_s = random_rotations(n_sim, gen, dtype=images.dtype).to(images.device)
            ctf = None if batch.ctf is None else batch.ctf[:n_sim]
            with torch.no_grad():
                sim = self.model.render(R_s, d_t[:n_sim], ctf) + \
                    self.refinement.simulate_noise(n_sim, gen).to(images.device, images.dtype)
            images, R_t = torch.cat([sim, images[n_sim:]]), torch.cat([R_s, R_t[n_sim:]])
        turn = None
        if c.refinement.distill_augment:
            turn = in_plane_turn(2 * math.pi * torch.rand(len(images), generator=gen)).to(images.device)
            images = turn_images(images, turn)
        return images, R_t, d_t, turn

    def refine(self, log=print) -> None:
        """The semi-amortized refinement (:mod:`.refinement`), logged to refinement.json. Run by
        rank 0; its targets and map reach the other ranks by broadcast."""
        self.refine_trigger.fired()
        if self.dist.is_main:
            info = self.refinement.run(self.model, self.data, self.gt.R, log)
            rounds = [] if self.refine_trigger.count == 1 else \
                (self.run_dir.read_json(RunDir.REFINEMENT) or {}).get("rounds", [])
            rounds.append({"round": self.refine_trigger.count, "images_seen": self.images_seen, "step": self.step,
                           "train_seconds": round(self.clock.tick(), 2), **info})
            self.run_dir.write_json(RunDir.REFINEMENT, {"rounds": rounds})
        if self.dist.active:
            self.refinement.broadcast(self.dist, self.model, self.data.n)
        active = self.active_after_refinement()
        if active is not None:  # batches from the particles with targets, from a new epoch
            self.data.set_active(active)
            self.epoch, self.pos = self.epoch + 1, 0

    def active_after_refinement(self) -> np.ndarray | None:
        """The training particles batches come from once rounds have run: those the last round kept
        (trim), or those the rounds search (a subset of a large set); None: all."""
        ref = self.refinement
        if not ref.has_targets:
            return None
        if ref.trim:
            return ref.kept
        searched = ref.searched(self.data.train_ids)
        return None if len(searched) == len(self.data.train_ids) else searched

    def stage(self, name: str, box: int, images: int, wall0: float, start: float | None = None) -> None:
        """Log a stage's start (``start`` None) or its end, one line each, and record it."""
        now = time.perf_counter() - wall0
        if start is None:
            if self.dist.is_main:
                print(f"stage {name}: start at {now:.0f} s (box {box} px, {images} images)", file=sys.stderr)
            return
        self.stages.append({"stage": name, "box": box, "images": images, "start_seconds": round(start, 1),
                            "end_seconds": round(now, 1)})
        if self.dist.is_main:
            print(f"stage {name}: end at {now:.0f} s ({now - start:.0f} s)", file=sys.stderr)

    def run(self, progress: bool = True) -> dict:
        c = self.cfg
        self.model.train()
        self.clock_base = self.clock.train_seconds  # (a resumed run: the training time before this process)
        self.clock.start()
        wall0 = time.perf_counter()
        if self.step and self.dist.is_main:  # the stage times below count from 0 in this process
            print(f"resumed from {self.run_dir / RunDir.CHECKPOINT} at step {self.step} ({self.images_seen} images "
                  f"seen, {self.clock_base:.0f} s of training)", file=sys.stderr)
        self.stage("ab initio", self.data.box, self.data.n, wall0)
        if self.step == 0 and self.dist.is_main and not (self.run_dir / RunDir.METRICS).exists():
            self.evaluate()
        # redirected to a log file, a bar redrawn 10 times a second would fill it: every 30 s there
        bar = tqdm(desc=f"train {c.model.name}", unit="img", initial=self.images_seen,
                   total=None if c.optimisation.steps is None else c.optimisation.steps * c.optimisation.batch_size,
                   mininterval=0.1 if sys.stderr.isatty() else 30.0, disable=not (progress and self.dist.is_main))
        ckpt_timer = Periodic(c.output.checkpoint_every_seconds)
        ckpt_timer.reset(self.clock.tick())
        interrupt = Interrupt().install()
        try:
            while not self.dist.agree([self.stop.done(self.step, self.clock.tick())])[0]:
                stream = self.data.stream(self.epoch, self.pos, c.optimisation.batch_size, self.dist.rank,
                                          self.dist.world)
                try:
                    for batch in stream:
                        loss = self.train_step(batch)
                        t = self.clock.tick()
                        bar.update(c.optimisation.batch_size)
                        mse = self.last_eval.row.get("pose_mse") if self.last_eval else None
                        bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{self.images_seen / max(t, 1e-9):.0f}",
                                        mse="-" if mse is None else f"{mse:.3f}", refresh=False)  # not every step
                        stop_now, refine, evaluate, checkpoint, done = self.dist.agree([
                            interrupt.requested, self.refine_trigger.due(self.images_seen, self.refinement.settled),
                            self.eval_timer.due(t), ckpt_timer.due(t), self.stop.done(self.step, t)])
                        if stop_now:
                            self.save_checkpoint()
                            raise TrainingInterrupted(
                                f"interrupted ({signal.Signals(interrupt.signum).name}) at step {self.step}; a "
                                f"checkpoint was saved: continue with eqcryo train --resume {self.run_dir.path}",
                                interrupt.signum)
                        if refine:
                            self.refine(log=bar.write)
                            self.evaluate()
                            self.eval_timer.reset(self.clock.tick())
                            self.save_checkpoint()
                            ckpt_timer.reset(self.clock.train_seconds)
                            break  # restart the loader: the batch order continues at self.pos
                        if evaluate:
                            self.eval_timer.reset(t)
                            self.evaluate()
                        if checkpoint:
                            self.save_checkpoint()
                            ckpt_timer.reset(self.clock.tick())
                        if done:
                            break
                    else:
                        self.epoch += 1
                        self.pos = 0
                finally:
                    stream.close()
        finally:
            bar.close()
            interrupt.restore()
        rows = self.run_dir.metric_rows() if self.dist.is_main else []
        if self.dist.is_main and (not rows or int(rows[-1]["step"]) != self.step):  # (a resumed finished run
            self.evaluate()                                                           # has logged this step)
        self.save_checkpoint()
        self.stage("ab initio", self.data.box, self.data.n, wall0, start=0.0)
        gold = None
        if self.finishing and self.dist.is_main:
            t = time.perf_counter() - wall0
            self.stage("gold-standard finish", self.data.input_box, self.data.n, wall0)
            gold = self.gold_standard(wall0)
            self.stage("gold-standard finish", self.data.input_box, self.data.n, wall0, start=t)
        return self.finish(wall0, gold)

    def gold_standard(self, wall0: float) -> FinishResult:
        """The finish (:mod:`eqcryo.reconstruction.gold_standard`) from the encoder's poses of every
        particle, within what the time budget leaves."""
        ds, c = self.data.ds, self.cfg
        sign = -1.0 if ds.scale < 0 else 1.0  # the contrast's orientation (the scale's sign), not its size

        def read_at(box: int):
            dsb = ds.at_box(box)

            def reader(ids):
                ctf = dsb.ctf(ids)
                return dsb.read_images(ids, scaled=False).float() * sign, None if ctf is None else ctf.cpu()
            return reader

        R, origin, _ = infer(self.model, ds, np.arange(ds.n))
        ref = self.refinement
        if ref.target_R is not None and ref.target_origin_px is not None:
            # the last projection-matching round's poses are sharper than the encoder's distillation of them
            ids = torch.from_numpy(self.data.train_ids)
            R[ids], origin[ids] = ref.target_R[ids].double(), ref.target_origin_px[ids].double() * ds.apix
        budget = c.optimisation.time_budget_seconds
        deadline = None if budget is None else wall0 + budget - self.clock_base
        free = free_memory_bytes(torch.device("cpu"))  # the final maps are reconstructed in RAM
        max_box = c.refinement.finish_max_box or (largest_final_box(0.8 * free) if free else None)
        fc = FinishConfig(max_iters=c.refinement.finish_max_iters, max_final_box=max_box, seed=c.optimisation.seed)
        return gold_standard_finish(read_at, ds.n, ds.input_box, ds.input_apix, R, origin, ds.box, 2 * ds.apix, fc,
                                    deadline, log=lambda m: print(m, file=sys.stderr))

    # ------------------------------------------------------------------ outputs
    def finish(self, wall0: float, gold: FinishResult | None = None) -> dict:
        """Write the map, poses for every particle, the summary and the report (rank 0): from the
        gold-standard finish when it ran (the stack's box), else from the model (the working box;
        half-maps from one set of poses). ``wall0``: ``time.perf_counter()`` at the run's start."""
        if not self.dist.is_main:
            return {"steps": self.step, "images_seen": self.images_seen, "rank": self.dist.rank}
        t = time.perf_counter() - wall0
        self.stage("outputs", self.data.input_box, self.data.n, wall0)
        summary: dict[str, Any] = {"steps": self.step, "train_seconds": self.clock.train_seconds,
                                   "eval_seconds": self.clock.eval_seconds, "images_seen": self.images_seen,
                                   "converged": self.converged, "agreement": self.stop.finished}
        mask = None
        if gold is None:
            pred = predicted_table(self.model, self.data.ds)
            halves = half_map_fsc(self.data.ds, pred, self.cfg.optimisation.seed)
            volume, apix = self.model.decoder.volume().float().cpu().numpy(), self.data.apix
            if self.last_eval is None and self.evaluator.gt.volume is not None:
                # resumed at its budget: nothing was evaluated in this process, the map still has a truth
                with self.clock.excluded():
                    self.last_eval = self.evaluator(self.model, self.band_radius(), **self.counters())
            fsc_gt = None if self.last_eval is None else self.last_eval.fsc
        else:
            pred = posed_table(self.data.ds, gold.R, gold.origin_angstrom)
            pred.set_columns({"rlnRandomSubset": gold.half + 1})
            halves = (gold.half_maps[0], gold.half_maps[1], gold.record())
            volume, apix, mask = gold.full_map.float().numpy(), self.data.input_apix, gold.mask
            fsc_gt, finish_eval = self.evaluator.full_box(gold.full_map, gold.R, gold.origin_angstrom)
            summary.update(resolution_angstrom=gold.fsc.resolution, **finish_eval)
        self.stage("outputs", self.data.input_box, self.data.n, wall0, start=t)
        summary.update(stages=self.stages, wall_seconds=time.perf_counter() - wall0, command=self.command,
                       provenance=self.provenance)
        self.run_dir.write_results(volume, apix, pred, {k: v for k, v in summary.items() if v is not None},
                                   fsc_gt, halves, mask=mask)
        return summary
