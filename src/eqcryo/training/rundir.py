"""The run folder: the one module that knows its file names and formats.

``RUN/`` holds::

    config.yaml              the whole configuration (TrainConfig's sections + ``resolved``: box, apix, ...)
    checkpoint.pt            model, optimiser, schedules, counters, RNG (atomic; loaded weights-only)
    metrics.csv              one row per evaluation (columns: METRIC_COLUMNS)
    eval_poses.npz           the held-out predictions of every evaluation (for App. G)
    summary.json             steps, times, images, first convergence
    fsc.json, refinement.json, reconstruction.mrc, predicted_particles.star, predicted_poses.pkl,
    report.md and its figures, tensorboard/

Every write is atomic; a resumed run truncates the logs to its checkpoint so they read as one
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..data.atomic import atomic_path
from ..data.errors import InputError
from .config import FLAT_KEYS, SECTIONS, TrainConfig, to_nested
from .schedule import match_excess

__all__ = ["RunDir", "METRIC_COLUMNS"]


def _contrast_line(c: dict | None) -> str:
    if not c:
        return "(not recorded)"
    what = "inverted (images multiplied by -1)" if c.get("inverted") else "as in the image model (kept)"
    if c.get("mode") != "auto":
        return f"{what}, by --invert-contrast {c.get('mode')}"
    sure = "" if c.get("confident") else "; LOW CONFIDENCE: check the map's sign"
    return f"{what}, decided from the data: score {c['score']:.1f} over {c['n_images']} images{sure}"

#: a last ``match_mse`` above this (‖ΔR‖²_F; ~40° apart) says the encoder's poses are not those of its
#: own map, and half-maps from one encoder's poses then agree without meaning anything
UNRELIABLE_MATCH_MSE = 1.0

METRIC_COLUMNS = ["step", "train_seconds", "eval_seconds", "images_seen", "loss", "lowpass_shells", "pose_mse",
                  "pose_medse", "geodesic_median_deg", "view_median_deg", "shift_rmse_angstrom",
                  "resolution_0.5_angstrom", "resolution_0.143_angstrom", "hand_flipped", "view_anisotropy",
                  "mirror_score", "head_sin_median", "head_sin_p05", "head_sigma_ratio_median",
                  "head_sigma_ratio_p05", "hypothesis_shares", "match_mse", "match_median_deg", "match_scatter",
                  "train_pose_mse", "train_pose_medse"]


def last_match_row(rows: list[dict]) -> dict | None:
    """The last metrics.csv row that measured ``match_mse`` (None if none did)."""
    return next((r for r in reversed(rows) if r.get("match_mse")), None)


def agreement_line(threshold: float | None, agreement: dict | None, rows: list[dict]) -> str:
    """The no-ground-truth verdict: did the encoder end in agreement with a search in its map?
    ``agreement``: the stop rule's record (summary.json), None if it never held."""
    last_row = last_match_row(rows)
    last_s = "not measured" if last_row is None else f"{float(last_row['match_mse']):.3f}"
    if last_row is not None and last_row.get("match_scatter"):
        last_s += (f" less half the search's own scatter {float(last_row['match_scatter']):.3f} = "
                   f"{match_excess(last_row['match_mse'], last_row['match_scatter']):.3f}")
    if agreement:
        scatter = (f", the search's own scatter {agreement['match_scatter']:.3f}"
                   if agreement.get("match_scatter") is not None else "")
        return (f"**agreement without ground truth: reached** at {agreement['train_seconds']:.0f} s of training "
                f"({agreement['rule']}; match_mse {agreement['match_mse']:.3f}{scatter}); the run ended there")
    if threshold is None:
        return f"agreement without ground truth: last match_mse {last_s} (no stop rule set)"
    return (f"**agreement without ground truth: NOT reached** (last match_mse {last_s}, needed < {threshold} after a "
            f"settled refinement): treat the poses and the map as unconverged; a longer --time-budget may help, and "
            f"strongly preferred orientations or a wrong contrast sign are the usual causes")


def _provenance_line(p: dict | None) -> str:
    if not p:
        return "(not recorded)"
    n = p.get("world_size", 1)
    return (f"{n} process{'es' if n > 1 else ''} × {p.get('threads')} threads, {p.get('device')} "
            f"({p.get('device_name')}), host {p.get('host')}; eqcryo {p.get('eqcryo')} (commit {p.get('git_commit')}), "
            f"torch {p.get('torch')}, Python {p.get('python')}")


def _read_lock(path: Path) -> dict | None:
    """The holder recorded in a lock file; None while it is being written or unreadable."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and isinstance(d.get("pid"), int) else None


def _is_stale(holder: dict) -> bool:
    """A lock of this host whose process no longer exists."""
    if holder.get("host") != socket.gethostname():
        return False  # another node's process: cannot be checked from here
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, another user's
        return False
    return False


class RunDir:
    """Paths and readers/writers of one run folder."""

    CONFIG, CHECKPOINT, METRICS, EVAL_POSES = "config.yaml", "checkpoint.pt", "metrics.csv", "eval_poses.npz"
    SUMMARY, FSC, REFINEMENT, REPORT = "summary.json", "fsc.json", "refinement.json", "report.md"
    HALF1, HALF2, FSC_HALVES, MASK = "half1.mrc", "half2.mrc", "fsc_halfmaps.json", "mask.mrc"
    MAP, POSES_PKL, POSES_STAR, TENSORBOARD = ("reconstruction.mrc", "predicted_poses.pkl",
                                               "predicted_particles.star", "tensorboard")
    LOCK = ".lock"  # held by the process that trains in this folder (see :meth:`locked`)

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._tb: Any = None  # TensorBoard writer, made on the first log_scalars

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------ lock
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock file while a run trains in it: two processes never write one
        folder. The lock is a file created atomically (O_EXCL: safe on network file systems)
        naming its holder; a lock whose process is gone (same host, no such pid) is stale and
        taken over, saying so; one held by a live process or another host is an InputError."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self / self.LOCK
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(lock)
                if holder is not None and _is_stale(holder):
                    print(f"note: {lock}: removed a stale lock of pid {holder['pid']} (no such process on "
                          f"{holder['host']})", file=sys.stderr)
                    lock.unlink(missing_ok=True)
                    continue
                who = "another process" if holder is None else \
                    f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
                raise InputError(f"{self.path}: in use by another eqcryo run ({who}); wait for it to end, or "
                                 f"delete {lock} if that process is gone") from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            break
        else:
            raise InputError(f"{lock}: could not take the lock (another process keeps taking it)")
        try:
            yield
        finally:
            if _read_lock(lock) == me:  # (never another process's lock)
                lock.unlink(missing_ok=True)

    def in_use(self) -> bool:
        """Whether a live process holds this folder's lock (a stale lock does not count)."""
        holder = _read_lock(self / self.LOCK)
        if holder is None:
            return (self / self.LOCK).exists()  # (being written)
        return not _is_stale(holder)

    # ------------------------------------------------------------------ config
    def is_run(self) -> bool:
        return (self / self.CONFIG).exists()

    def has_checkpoint(self) -> bool:
        return (self / self.CHECKPOINT).exists()

    def write_config(self, cfg: TrainConfig, resolved: dict) -> None:
        d = cfg.to_dict()
        d["resolved"] = resolved
        with atomic_path(self / self.CONFIG) as tmp:
            tmp.write_text(yaml.safe_dump(d, sort_keys=False))

    def read_config(self, **overrides) -> tuple[TrainConfig, dict]:
        """(the run's TrainConfig with ``out`` = this folder and ``overrides`` not None applied,
        its ``resolved`` facts: box, apix, n_particles, n_eval, intensity_scale, ...)."""
        path = self / self.CONFIG
        if not path.exists():
            raise InputError(f"{path}: not found; is {self.path} a run folder written by eqcryo train?")
        try:
            d = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise InputError(f"{path}: not valid YAML ({getattr(e, 'problem', None) or 'unreadable'}{where}); was it "
                             f"edited by hand?") from None
        if not isinstance(d, dict):
            raise InputError(f"{path}: not a run configuration (expected a mapping)")
        resolved = d.pop("resolved", None) or {}
        legacy = not any(isinstance(d.get(k), dict) for k in SECTIONS)  # flat keys: written before the sections
        nested = to_nested(d, str(path))
        if legacy and "no_ctf" not in nested.get("data", {}):
            nested.setdefault("data", {})["no_ctf"] = None  # as it was trained: with a CTF when the data had one
        for k, v in overrides.items():
            if v is not None:
                section, key = FLAT_KEYS[k]
                nested.setdefault(section, {})[key] = v
        nested.setdefault("output", {})["dir"] = str(self.path)
        return TrainConfig.from_dict(nested, str(path)), resolved

    def remove_stale_temporaries(self) -> list[str]:
        """Delete temporary files that a killed write left (atomic_path's ``.NAME.xxxx``), for this
        folder's own files only; returns their names."""
        own = (self.CONFIG, self.CHECKPOINT, self.METRICS, self.EVAL_POSES, self.SUMMARY, self.FSC,
               self.REFINEMENT, self.REPORT, self.MAP, self.POSES_PKL, self.POSES_STAR, self.HALF1, self.HALF2,
               self.FSC_HALVES, self.MASK)
        gone = []
        if self.path.is_dir():
            for f in self.path.iterdir():
                if f.is_file() and any(f.name.startswith(f".{n}.") for n in own):
                    f.unlink()
                    gone.append(f.name)
        return gone

    # ------------------------------------------------------------------ checkpoint
    def save_checkpoint(self, state: dict) -> None:
        path = self / self.CHECKPOINT
        with atomic_path(path) as tmp:
            try:
                torch.save(state, tmp)
            except RuntimeError as e:  # torch reports a failed write (disk full, quota) as a RuntimeError
                free = shutil.disk_usage(self.path).free
                if free < 64 << 20:
                    raise OSError(errno.ENOSPC, f"no space left on the device ({free >> 20} MiB free); the last "
                                                f"checkpoint is kept as it was", str(path)) from None
                raise OSError(errno.EIO, f"could not be written ({str(e).splitlines()[0][:160]})", str(path)) from None

    def load_checkpoint(self, path: str | os.PathLike | None = None, map_location="cpu") -> dict:
        """The checkpoint's state, loaded weights-only (tensors and plain containers: a crafted
        file cannot run code). ``path`` defaults to RUN/checkpoint.pt."""
        p = Path(path) if path is not None else self / self.CHECKPOINT
        if not p.exists():
            raise InputError(f"{p}: checkpoint not found")
        try:
            return torch.load(p, map_location=map_location, weights_only=True)
        except Exception as e:  # truncated, garbage, or objects a weights-only load refuses
            text = str(e).strip()
            if "weights_only" in text or "Weights only" in text:  # (never repeat torch's advice to unpickle it)
                why = "it holds objects other than tensors and plain values, which eqcryo never loads"
            else:
                why = text.splitlines()[0][:200] if text else type(e).__name__
            raise InputError(f"{p}: not a readable eqcryo checkpoint ({why})") from None

    # ------------------------------------------------------------------ metrics.csv
    def append_metrics(self, row: dict) -> None:
        path = self / self.METRICS
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in METRIC_COLUMNS})

    def metric_rows(self) -> list[dict[str, str]]:
        """metrics.csv as rows of strings ([] when there is none)."""
        path = self / self.METRICS
        if not path.exists():
            return []
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))

    def read_metrics(self) -> dict[str, np.ndarray]:
        """metrics.csv as columns: numbers as float arrays (empty cells NaN), other columns as strings."""
        rows = self.metric_rows()
        out = {}
        for k in (rows[0].keys() if rows else []):
            try:
                out[k] = np.array([float(r[k]) if r[k] not in ("", "None") else np.nan for r in rows])
            except ValueError:
                out[k] = np.array([r[k] for r in rows])
        return out

    def truncate_logs(self, step: int) -> None:
        """Drop metrics.csv rows and eval_poses.npz entries logged after ``step`` (a run killed
        after its last checkpoint logged evaluations that the resumed run redoes)."""
        path = self / self.METRICS
        rows = self.metric_rows()
        keep = [r for r in rows if int(r["step"]) <= step]
        # a run begun by an older version has other columns: rewritten in today's, so rows append
        if len(keep) < len(rows) or (rows and list(rows[0].keys()) != METRIC_COLUMNS):
            with atomic_path(path) as tmp:
                with open(tmp, "w", newline="") as fh:
                    w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
                    w.writeheader()
                    w.writerows({k: r.get(k) or "" for k in METRIC_COLUMNS} for r in keep)
        z = self.read_eval_poses()
        if z is not None:
            k = z["steps"] <= step
            if not k.all():
                self._write_eval_poses(z["steps"][k], z["train_seconds"][k], z["rotations"][k], z["eval_ids"])

    def clear_logs(self) -> None:
        for name in (self.METRICS, self.EVAL_POSES):
            if (self / name).exists():
                (self / name).unlink()

    def log_scalars(self, row: dict, step: int) -> None:
        """The numbers of an evaluation row to TensorBoard (RUN/tensorboard/), when it is installed."""
        try:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self / self.TENSORBOARD))
        except ImportError:
            return
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                self._tb.add_scalar(f"eval/{k}", v, step)
        self._tb.flush()

    # ------------------------------------------------------------------ eval_poses.npz
    def read_eval_poses(self) -> dict[str, np.ndarray] | None:
        """steps (E,), train_seconds (E,), rotations (E, n, 3, 3), eval_ids (n,); None if absent."""
        path = self / self.EVAL_POSES
        return dict(np.load(path)) if path.exists() else None

    def append_eval_poses(self, step: int, seconds: float, R: torch.Tensor, eval_ids: np.ndarray) -> None:
        old = self.read_eval_poses() or {}
        steps = np.append(old.get("steps", np.zeros(0, np.int64)), step)
        secs = np.append(old.get("train_seconds", np.zeros(0)), seconds)
        rots = np.concatenate([old.get("rotations", np.zeros((0, len(eval_ids), 3, 3), np.float32)),
                               R.float().numpy()[None]])
        self._write_eval_poses(steps, secs, rots, eval_ids)

    def _write_eval_poses(self, steps, secs, rots, eval_ids) -> None:
        with atomic_path(self / self.EVAL_POSES, suffix=".npz") as tmp:
            np.savez(tmp, steps=steps, train_seconds=secs, rotations=rots, eval_ids=eval_ids)

    # ------------------------------------------------------------------ json files
    def write_json(self, name: str, obj) -> None:
        with atomic_path(self / name) as tmp:
            tmp.write_text(json.dumps(obj, indent=2, default=float) + "\n")

    def read_json(self, name: str) -> dict | None:
        path = self / name
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON ({e})") from None

    def read_summary(self) -> dict | None:
        return self.read_json(self.SUMMARY)

    def write_summary(self, summary: dict) -> None:
        self.write_json(self.SUMMARY, summary)

    def read_fsc(self):
        """The FSC against the ground truth of the last evaluation (FSCResult) or None."""
        from ..physics.fsc import FSCResult

        f = self.read_json(self.FSC)
        if f is None:
            return None
        return FSCResult.from_dict(f)

    # ------------------------------------------------------------------ results
    def _image_names_from_here(self, t) -> np.ndarray | None:
        """``idx@path`` names of ``t``'s images with each path relative to this folder, so that
        RUN/predicted_particles.star finds its images wherever it is read from (the names as the
        source file gave them are relative to *its* folder). None: keep the source's names."""
        src = getattr(t, "images", None)
        if src is None or not hasattr(src, "paths"):
            return None
        here = os.path.abspath(self.path)
        return np.array([f"{int(i) + 1}@{os.path.relpath(os.path.abspath(p), here)}"
                         for p, i in zip(src.paths, src.indices)], dtype=object)

    def write_results(self, volume: np.ndarray, apix: float, predicted, summary: dict, fsc=None,
                      halves: tuple | None = None, mask=None) -> None:
        """The end of a run: the map (L, L, L) at ``apix`` Å, the predicted poses of every particle
        (a ParticleTable) as .pkl and .star, fsc.json (FSCResult or None), the half-maps and their
        FSC (``halves``: (half 1, half 2, record) or None), the FSC's mask (or None), summary.json,
        the report."""
        from ..data.cryodrgn import write_pose_pkl
        from ..data.mrc import write_volume
        from ..data.star import write_star

        write_volume(self / self.MAP, volume, apix)
        write_pose_pkl(self / self.POSES_PKL, predicted)
        if predicted.image_names is not None:
            write_star(self / self.POSES_STAR, predicted, self._image_names_from_here(predicted))
        if fsc is not None:
            self.write_json(self.FSC, fsc.to_dict())
        if halves is not None:
            write_volume(self / self.HALF1, halves[0].float().numpy(), apix)
            write_volume(self / self.HALF2, halves[1].float().numpy(), apix)
            self.write_json(self.FSC_HALVES, halves[2])
        if mask is not None:
            write_volume(self / self.MASK, mask.float().numpy(), apix)
        self.write_summary(summary)
        self.write_report()

    # ------------------------------------------------------------------ report
    def write_report(self) -> Path:
        """report.md and its figures, from this folder's files alone."""
        from ..data.mrc import read_volume
        from ..evaluation.report import md_code, write_report
        from ..physics.fsc import FSCResult, format_resolution

        cfg, res = self.read_config()
        s = self.read_summary() or {}
        vol = read_volume(self / self.MAP)[0] if (self / self.MAP).exists() else None
        from .. import __version__

        facts = [f"command: {md_code(s['command'])}" if s.get("command") else "command: (not recorded)",
                 f"eqcryo {__version__}; report written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
                 f"particles: {md_code(cfg.data.particles)} ({res.get('n_particles')}, "
                 f"{res.get('input_box', res.get('box'))} px, {res.get('input_apix', res.get('apix')):.4g} Å/px); "
                 f"held-out for evaluation: {res.get('n_eval')}",
                 f"working box: {res.get('box')} px at {res.get('apix'):.4g} Å/px (the images Fourier-cropped; "
                 f"data.working_box)" if res.get("input_box", res.get("box")) != res.get("box") else
                 "working box: the stack's own",
                 f"recipe: {cfg.output.recipe or '(none: defaults and options)'}; seed {cfg.optimisation.seed}",
                 "ran on: " + _provenance_line(res.get("provenance")),
                 "contrast: " + _contrast_line(res.get("contrast")),
                 "CTF: " + ("(not recorded)" if "ctf" not in res else
                            "from the particles' metadata" if res["ctf"] else "no CTF (--no-ctf)"),
                 f"steps: {s.get('steps')}, training time: {s.get('train_seconds', 0):.0f} s (wall, evaluation "
                 f"excluded), evaluation: {s.get('eval_seconds', 0):.0f} s, images seen: {s.get('images_seen')}",
                 "converged (pose MSE < 0.1): " + (json.dumps(s["converged"]) if s.get("converged") else "no")]
        rows = self.metric_rows()
        facts.append(agreement_line(cfg.evaluation.stop_match_mse, s.get("agreement"), rows))
        curves = []
        if s.get("stages"):
            facts.append("stages (wall seconds from the start): " + "; ".join(
                f"{st['stage']} {st['start_seconds']:.0f}–{st['end_seconds']:.0f} s ({st['box']} px)"
                for st in s["stages"]))
        halves = self.read_json(self.FSC_HALVES)
        if halves and "corrected" in halves:  # the gold-standard finish
            c, m, u = halves["corrected"], halves["masked"], halves["unmasked"]
            facts.append(f"**resolution without ground truth: {format_resolution(c.get('resolution_0.143'), 1)}** "
                         f"(FSC 0.143 of two half-maps at {c['box']} px, {halves['n_half1']} + {halves['n_half2']} "
                         f"particles, "
                         + (f"poses refined independently per half at up to {halves['refined_up_to_box']} px"
                            if halves.get("refined_up_to_box") else "poses as ab initio left them (no time to refine)")
                         + "; masked by mask.mrc and corrected by "
                         f"phase randomisation beyond {format_resolution(halves.get('randomise_from_angstrom'), 1)}); "
                         f"masked {format_resolution(m.get('resolution_0.143'), 1)}, unmasked "
                         f"{format_resolution(u.get('resolution_0.143'), 1)}")
            last = (halves.get("iterations") or [{}])[-1]
            if last.get("output_box") and last["box"] < last["output_box"]:
                facts.append(f"the final maps were made at {last['box']} px (the shells the half-maps' resolution "
                             f"needs, or the memory allows) and Fourier-padded to the stack's {last['output_box']} px")
            rand = halves["phase_randomised"]
            hi = max(rand["fsc"][halves["randomise_from_shell"] + 3:] or [0.0])
            if hi > 0.2:
                facts.append(f"warning: the mask alone correlates the half-maps (phase-randomised FSC up to {hi:.2f}); "
                             f"the corrected curve accounts for it, but a looser mask would be safer")
            agreed = bool(s.get("agreement"))
            r143 = c.get("resolution_0.143")
            nyq_work = 2 * float(res.get("apix") or 1.0)  # the working box's Nyquist, Å
            if agreed and (r143 is None or r143 > 2 * nyq_work):
                facts.append(f"**warning: the two verdicts disagree**: the encoder agreed with the search in its map, "
                             f"but the half-maps reach only {format_resolution(r143, 1)} (the working box resolves "
                             f"{nyq_work:.1f} Å): the map may be wrong; check it before trusting the poses")
            elif not agreed and r143 is not None and r143 <= 1.5 * nyq_work:
                facts.append(f"note: the half-maps reach {r143:.1f} Å although the no-ground-truth agreement was not "
                             f"reached: the map is probably right; the agreement rule is conservative at low SNR")
            for name, key in (("half-maps, corrected (read the resolution here)", "corrected"),
                              ("half-maps, masked", "masked"), ("half-maps, unmasked", "unmasked"),
                              ("half-maps, masked, phases randomised", "phase_randomised")):
                curves.append((name, FSCResult.from_dict(halves[key])))
        elif halves:
            m, u = halves["masked"], halves["unmasked"]
            facts.append(f"**resolution without ground truth** (FSC 0.143 of two half-maps, {halves['n_half1']} + "
                         f"{halves['n_half2']} particles at the final poses): "
                         f"{format_resolution(m.get('resolution_0.143'), 1)} masked ({halves['mask']}), "
                         f"{format_resolution(u.get('resolution_0.143'), 1)} unmasked"
                         + (f"; {m['diagnosis']}" if m.get("diagnosis") else "")
                         + "; the halves' poses come from one encoder trained on both, so the halves are not "
                           "independent and this reads optimistic")
            last = last_match_row(rows)
            match = None if last is None else float(last["match_mse"])
            if match is not None and match > UNRELIABLE_MATCH_MSE:
                # wrong poses give two alike blurred maps (a spherical average at random poses): FSC ~1
                facts.append(f"**warning: the half-map resolution means nothing here**: a search in the map puts the "
                             f"held-out images far from the encoder's poses (last match_mse {match:.2f}); the poses "
                             f"are probably wrong")
            for name in ("masked", "unmasked"):
                curves.append((f"half-maps, {name}", FSCResult.from_dict(halves[name])))
        gt = self.read_fsc()
        if gt is not None:
            facts.append(f"against the ground truth (FSC 0.5, after alignment): "
                         f"{format_resolution(gt.resolution(0.5), 1)}")
            curves.append(("reconstruction vs ground truth", gt))
        files = [self.MAP, self.HALF1, self.HALF2, self.FSC_HALVES, self.MASK, self.POSES_STAR, self.POSES_PKL,
                 self.METRICS, self.CONFIG, self.CHECKPOINT, self.TENSORBOARD + "/"]
        rot = None
        if (self / self.POSES_PKL).exists():
            from ..data.cryodrgn import read_pose_pkl
            rot = read_pose_pkl(self / self.POSES_PKL, int(res.get("box") or 1))[0]
        return write_report(self.path, f"eqcryo run: {cfg.model.name} ({cfg.model.profile} profile)", facts,
                            self.read_metrics(), vol, curves, files + [self.REPORT, "report.html"], rot)
