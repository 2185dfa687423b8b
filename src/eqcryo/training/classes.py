"""Several species and junk in one stack: ``eqcryo train --classes K`` (beyond the paper).

A run with K classes is a cascade of one-class runs, each a whole :class:`~.trainer.Trainer` in
its own folder, then a classification that learns the K maps together:

1. **ab initio, class 1**: the amortized run on every particle (``RUN/ab_initio_1``), trimming
   (``refinement.trim``) so that on a mixture its map grows towards one species, not a blend.
2. every particle is searched against the maps so far and scored by its normalised correlation
   ρ (:mod:`eqcryo.reconstruction.classification`); those the maps explain worst (below the
   two-group split of ρ, Otsu's rule; junk included, which the next run's trim drops) become
   the next class's particles (``RUN/ab_initio_2/particles.star``, the original images
   referenced, not copied); the next ab initio trains on them. Repeat until K classes.
3. **classification**: every particle searched in every class from its encoder's pose
   (amortized first guess, then global and local search), assigned to its best class or to
   the junk sink, maps reconstructed from their members; ``classes.iters`` rounds.

Why a cascade rather than K decoders from the start: with random maps every image is explained
equally badly, and the first class to learn anything takes every image (the collapse
cryoSPARC's multi-class ab initio guards against with annealing); a class learned on the
particles the first explains worst starts where the data say a second species is.

One encoder per class (each ab initio run's own), so ``eqcryo predict`` gives a new particle
a pose in every class from one pass of each encoder, then its class from the maps.
Outputs (besides the ab initio folders): ``class_NNN.mrc``, ``classes.json``,
``predicted_particles.star`` (rlnClassNumber: 1…K, 0 = junk; rlnMaxValueProbDistribution;
rlnEqcryoClassScore = ρ), ``summary.json``, ``classes.png`` and ``report.md``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.errors import InputError
from ..data.io import load_particles
from ..data.particles import ParticleTable
from ..reconstruction.classification import (
    JUNK,
    Classification,
    ClassifyConfig,
    assign,
    classify,
    junk_threshold,
    otsu_split,
    score_classes,
)
from ..reconstruction.projection_matching import BandData, MatchConfig
from .config import TrainConfig
from .inference import load_trained, posed_table
from .rundir import RunDir
from .trainer import Trainer

__all__ = ["ClassRun", "MIN_PARTICLES_PER_CLASS", "predict_classes"]

#: a class needs at least this many particles per class (``--classes`` above n / this is refused)
MIN_PARTICLES_PER_CLASS = 100


class ClassRun:
    """``cfg.classes.count`` classes of ``cfg.data.particles`` into ``cfg.output.dir`` (see the module)."""

    CLASSES_JSON, FIGURE, SUBSET = "classes.json", "classes.png", "subset.json"

    def __init__(self, cfg: TrainConfig, command: str | None = None):
        self.cfg = cfg.validate()
        self.K = cfg.classes.count
        self.command = command
        d = cfg.data
        self.table = load_particles(d.particles, ctf=d.ctf, datadir=d.datadir, apix=d.apix)
        n = self.table.n
        if self.K > max(1, n // MIN_PARTICLES_PER_CLASS):
            raise InputError(f"classes.count {self.K}: too many classes for {n} particles (at most one per "
                             f"{MIN_PARTICLES_PER_CLASS} particles: {max(1, n // MIN_PARTICLES_PER_CLASS)})")
        self.run_dir = RunDir(cfg.output.dir)
        self.budget = cfg.optimisation.time_budget_seconds

    def stage_dir(self, k: int) -> Path:
        return self.run_dir.path / f"ab_initio_{k}"

    def sub_config(self, k: int, particles: str, budget: float | None) -> TrainConfig:
        """Class k's one-class run: the same recipe on ``particles``, without the full-box finish
        (classes are told apart at the working box), its own folder and budget."""
        c = self.cfg.copy()
        c.classes.count = 1
        c.data.particles, c.output.dir = particles, str(self.stage_dir(k))
        if k > 1:  # the subset's STAR names the images relative to itself
            c.data.datadir = None
        c.refinement.finish = "no"
        c.refinement.trim = True  # each round trains on the particles its map explains: one species, not the mix
        c.optimisation.time_budget_seconds = budget
        c.evaluation.gt_poses = c.evaluation.gt_volume = None  # one species' truth does not fit a mixture
        return c

    def write_subset(self, k: int, ids: np.ndarray) -> str:
        """Class k's particles as a STAR file in its folder, naming the original images."""
        from ..data.star import write_star

        folder = RunDir(self.stage_dir(k))
        folder.path.mkdir(parents=True, exist_ok=True)
        sub = self.table.subset(np.sort(ids))
        path = folder.path / "particles.star"
        write_star(path, sub, folder._image_names_from_here(sub))
        folder.write_json(self.SUBSET, {"particles": [int(i) for i in np.sort(ids)]})
        return str(path)

    def ab_initio(self, k: int, particles: str, deadline: float | None) -> None:
        """Run (or resume, or take as done) class k's one-class run."""
        rd = RunDir(self.stage_dir(k))
        if rd.read_summary() is not None:
            print(f"class {k}: ab initio already done ({rd.path})", file=sys.stderr)
            return
        budget = None
        if deadline is not None:
            left = self.K - k + 1
            # evaluations and outputs are not training time: a tenth of the stage is kept for them
            budget = max(30.0, 0.9 * (deadline - time.perf_counter()) / left)
        resume = rd.has_checkpoint()
        cfg = rd.read_config(time_budget=budget)[0] if resume else self.sub_config(k, particles, budget)
        print(f"stage ab initio of class {k}: {'resumed' if resume else 'start'} (training budget "
              f"{'-' if budget is None else f'{budget:.0f} s'})", file=sys.stderr)
        with rd.locked():
            Trainer(cfg, resume=resume, command=self.command).run(progress=False)

    def learned(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any, float]:
        """What class k's ab initio learned: its encoder's poses of every particle (R (n, 3, 3),
        origins (n, 2) px at the working box), its map (L, L, L) in the images' own units (the
        last refinement round's, from the particles its trim kept), its dataset (the working
        box's reader) and the sign of its contrast."""
        tm = load_trained(self.stage_dir(k), device="cpu")
        ds = tm.dataset(self.table, self.cfg.data.particles)
        R, origin = tm.predict(self.table)
        vol = tm.model.decoder.volume().double().cpu() / tm.scale  # (the scale carries the contrast's sign)
        return R.double(), origin.double() / ds.apix, vol, ds, -1.0 if tm.scale < 0 else 1.0

    def run(self) -> dict:
        wall0 = time.perf_counter()
        budget = self.budget
        deadline_ab = None if budget is None else wall0 + budget * self.cfg.classes.ab_initio_fraction
        deadline = None if budget is None else wall0 + budget
        self.run_dir.path.mkdir(parents=True, exist_ok=True)
        stages: list[dict] = []
        cc = self.cfg.classes
        ccfg = ClassifyConfig(iters=cc.iters, junk=cc.junk, min_members=cc.min_members, seed=self.cfg.optimisation.seed,
                              match=MatchConfig(radius=16.0, n_rotations=4096, refine_rounds=4,
                                                seed=self.cfg.optimisation.seed))
        subsets: list[dict] = []
        particles = self.cfg.data.particles
        poses: list[tuple[torch.Tensor, torch.Tensor]] = []
        maps: list[torch.Tensor] = []  # each class's map as its ab initio left it
        ds, sign, band = None, 1.0, None
        for k in range(1, self.K + 1):
            t0 = time.perf_counter() - wall0
            self.ab_initio(k, particles, deadline_ab)
            stages.append({"stage": f"ab initio, class {k}", "start_seconds": round(t0, 1),
                           "end_seconds": round(time.perf_counter() - wall0, 1)})
            R, o, vol, ds, sign_k = self.learned(k)
            sign = sign_k if k == 1 else sign  # maps are written with class 1's contrast orientation
            poses.append((R, o))
            maps.append(vol)
            if k == self.K:
                break
            # the next class: the particles the classes so far explain worst
            t0 = time.perf_counter() - wall0
            ids = np.arange(self.table.n)
            reader = _reader(ds)
            band = BandData.read(reader, ids, ds.box, ccfg.match.radius)
            g = torch.Generator().manual_seed(self.cfg.optimisation.seed + k)
            R0 = torch.stack([p[0] for p in poses], 1)
            o0 = torch.stack([p[1] for p in poses], 1)
            _, _, ncc = score_classes(maps, band, R0, o0, ccfg.match, g)
            best = ncc.max(1).values.numpy()
            # what the maps so far do not explain: below the two-group split of every particle's
            # best ρ. The junk sink is not applied here: to a map of one species another species
            # looks as structureless as junk; the next ab initio's trim drops the junk itself
            split = otsu_split(best)
            pick = np.nonzero(best < split)[0]
            if len(pick) < MIN_PARTICLES_PER_CLASS:  # too few poorly explained: the worst explained half
                pick = np.argsort(best)[:max(MIN_PARTICLES_PER_CLASS, len(best) // 2)]
            thr = junk_threshold(maps, band, ccfg, g) if cc.junk else -np.inf
            subsets.append({"class": k + 1, "particles": int(len(pick)), "split": float(split),
                            "below_junk_threshold": int((best[pick] < thr).sum()), "junk_threshold": float(thr)})
            print(f"class {k + 1}: {len(pick)} particles explained worst by the {k} class(es) so far (ρ below "
                  f"{split:.3f}; {int((best[pick] < thr).sum())} of them as poorly as structureless images)",
                  file=sys.stderr)
            particles = self.write_subset(k + 1, pick)
            stages.append({"stage": f"choose class {k + 1}'s particles", "start_seconds": round(t0, 1),
                           "end_seconds": round(time.perf_counter() - wall0, 1)})

        # classification: the K maps learned together
        assert ds is not None
        t0 = time.perf_counter() - wall0
        reader = _reader(ds)
        ids = np.arange(self.table.n)
        res = classify(reader, ids, ds.box, maps, torch.stack([p[0] for p in poses], 1),
                       torch.stack([p[1] for p in poses], 1), ccfg, log=lambda m: print(m, file=sys.stderr),
                       deadline=deadline, band=band)  # (the last choice's band: the same images)
        stages.append({"stage": "classification", "start_seconds": round(t0, 1),
                       "end_seconds": round(time.perf_counter() - wall0, 1)})
        return self.write_outputs(res, ds, subsets, stages, wall0, sign)

    def write_outputs(self, res: Classification, ds, subsets: list[dict], stages: list[dict], wall0: float,
                      sign: float) -> dict:
        """The class maps, every particle's class, score and pose, classes.json, the figure, summary and report."""
        from ..data.mrc import write_volume
        from ..data.star import write_star
        from ..evaluation.figures import class_maps_figure

        t0 = time.perf_counter() - wall0
        n, K = self.table.n, self.K
        rows = np.arange(n)
        own = np.where(res.label == JUNK, res.ncc.argmax(1).numpy(), res.label - 1)
        R, origin_A = res.R[rows, own], res.origin_px[rows, own] * ds.apix
        pred = posed_table(ds, R, origin_A)
        post = res.posterior()
        pred.set_columns({"rlnClassNumber": res.label.astype(np.int64), "rlnMaxValueProbDistribution": post[rows, own],
                          "rlnEqcryoClassScore": res.score})
        rd = self.run_dir
        names = []
        for k, vol in enumerate(res.maps, start=1):
            name = f"class_{k:03d}.mrc"
            write_volume(rd / name, (sign * vol).float().numpy(), ds.apix)
            names.append(name)
        write_star(rd / RunDir.POSES_STAR, pred, rd._image_names_from_here(pred))
        sizes = [int((res.label == k).sum()) for k in range(1, K + 1)]
        record = {"classes": K, "contrast_sign": sign, "junk_sink": res.threshold is not None,
                  "junk_threshold": res.threshold,
                  "members": sizes, "junk": int((res.label == JUNK).sum()), "maps": names,
                  "apix": ds.apix, "box": ds.box, "ab_initio": [self.stage_dir(k).name for k in range(1, K + 1)],
                  "subsets": subsets, "rounds": res.history,
                  "score": "normalised correlation on the band |k| < 16 shells at the best pose in the class",
                  "class_number": "1..K; 0 = junk (no class explains the particle better than structureless "
                                  "images with its power spectrum)"}
        rd.write_json(self.CLASSES_JSON, record)
        class_maps_figure([(sign * m).float().numpy() for m in res.maps], sizes, record["junk"], ds.apix,
                          rd / self.FIGURE)
        stages.append({"stage": "outputs", "start_seconds": round(t0, 1),
                       "end_seconds": round(time.perf_counter() - wall0, 1)})
        summary = {"classes": K, "members": sizes, "junk": record["junk"], "stages": stages,
                   "wall_seconds": time.perf_counter() - wall0, "command": self.command}
        rd.write_summary(summary)
        (rd / RunDir.REPORT).write_text(class_report(record, summary))
        return summary


def class_report(record: dict, summary: dict) -> str:
    """report.md of a class run: the classes, their sizes and maps, the stages."""
    n = sum(record["members"]) + record["junk"]
    lines = ["# eqcryo classes", "", f"`{summary.get('command') or ''}`", "",
             "| class | particles | share | map |", "|---|---|---|---|"]
    for k, (m, name) in enumerate(zip(record["members"], record["maps"]), start=1):
        lines.append(f"| {k} | {m} | {100 * m / n:.1f}% | {name} |")
    thr = record["junk_threshold"]
    lines.append(f"| junk (0) | {record['junk']} | {100 * record['junk'] / n:.1f}% | "
                 f"{'-' if thr is None else f'ρ below {thr:.3f}'} |")
    lines += ["", f"![class maps]({ClassRun.FIGURE})", "", "Stages:", ""]
    lines += [f"- {s['stage']}: {s['start_seconds']:.0f}–{s['end_seconds']:.0f} s" for s in summary["stages"]]
    lines += ["", "Each class's ab initio run is in its folder (" + ", ".join(record["ab_initio"]) + "). "
              "`eqcryo select RUN -o kept.star` writes the particles of the real classes.", ""]
    return "\n".join(lines)


def _reader(ds):
    """Images (unscaled, as stored, at the working box) and CTFs of particles ``ids`` on the CPU."""

    def read(ids):
        ctf = ds.ctf(ids)
        return ds.read_images(ids, scaled=False).float().cpu(), None if ctf is None else ctf.cpu()

    return read


def predict_classes(run: str | Path, table: ParticleTable, device: str | None = None
                    ) -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
    """Class and pose of every particle of ``table`` from a class run's folder alone: each class's
    encoder gives a pose (one pass), a local search refines it against the class map, and the
    particle joins its best class by ρ, or the junk sink below the run's threshold.

    Returns (class (n,) 1…K or 0, ρ in it (n,), R (n, 3, 3), RELION origins (n, 2) Å)."""
    from ..data.mrc import read_volume
    from ..physics.projection import prepare_fourier_volume
    from ..reconstruction.classification import normalised_correlation
    from ..reconstruction.projection_matching import search_poses

    rd = RunDir(run)
    record = json.loads((rd / ClassRun.CLASSES_JSON).read_text())
    K, sign = int(record["classes"]), float(record.get("contrast_sign", 1.0))
    cfg = MatchConfig(radius=16.0, n_rotations=0, refine_rounds=4)
    ncc = torch.empty(table.n, K)
    Rs, os_ = [], []
    band = None
    for k in range(1, K + 1):
        tm = load_trained(rd.path / record["ab_initio"][k - 1], device=device)
        ds = tm.dataset(table)
        R, origin = tm.predict(table)
        vol = torch.from_numpy(read_volume(rd / record["maps"][k - 1])[0]).double() * sign
        if band is None:  # the images as stored at the working box: the same for every class
            band = BandData.read(_reader(ds), np.arange(table.n), ds.box, min(cfg.radius, ds.box / 2))
        fv = prepare_fourier_volume(vol, 2)
        R, o, _ = search_poses(fv, band, R.double(), origin.double() / ds.apix, cfg, torch.Generator().manual_seed(0))
        ncc[:, k - 1] = normalised_correlation(fv, band, R, o)
        Rs.append(R)
        os_.append(o * ds.apix)
    best, j = ncc.max(1)
    label = assign(ncc, record.get("junk_threshold"))
    rows = torch.arange(table.n)
    R_all, o_all = torch.stack(Rs, 1)[rows, j], torch.stack(os_, 1)[rows, j]
    return label, best.numpy(), R_all, o_all
