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
4. **a class learned again**: when most of the particles a class's ab initio trained on end in
   other classes (its *purity* below ``classes.revisit_purity``: its map grew from a mix), the
   class is learned again by a fresh ab initio on its members (``RUN/ab_initio_k_again``), and
   the classification is repeated with that map and encoder. A mixed first class is the
   cascade's weak step (the second class then trains on what a blend explains worst).

Why a cascade rather than K decoders from the start: with random maps every image is explained
equally badly, and the first class to learn anything takes every image (the collapse
cryoSPARC's multi-class ab initio guards against with annealing); a class learned on the
particles the first explains worst starts where the data say a second species is.

One encoder per class (each ab initio run's own), so ``eqcryo predict`` gives a new particle
a pose in every class from one pass of each encoder, then its class from the maps.
Outputs (besides the ab initio folders): ``class_NNN.mrc``, ``classes.json``,
``predicted_particles.star`` (rlnClassNumber: 1…K, 0 = junk; rlnMaxValueProbDistribution;
rlnEqcryoClassScore = ρ), ``summary.json``, ``classes.png``, ``class_averages.png`` and ``report.md``.
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
#: a class is learned again only with at least this many seconds of training left for it (about two
#: projection-matching rounds at 64 px on 2 CPU cores: less does not make a map)
MIN_AGAIN_SECONDS = 300.0


class ClassRun:
    """``cfg.classes.count`` classes of ``cfg.data.particles`` into ``cfg.output.dir`` (see the module)."""

    CLASSES_JSON, FIGURE, AVERAGES, SUBSET = "classes.json", "classes.png", "class_averages.png", "subset.json"

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

    def stage_dir(self, k: int, again: bool = False) -> Path:
        """Class k's one-class run folder (``again``: the run that learns it again from its members)."""
        return self.run_dir.path / (f"ab_initio_{k}_again" if again else f"ab_initio_{k}")

    def sub_config(self, folder: Path, particles: str, budget: float | None) -> TrainConfig:
        """A class's one-class run: the same recipe on ``particles``, without the full-box finish
        (classes are told apart at the working box), in ``folder`` with its own budget."""
        c = self.cfg.copy()
        c.classes.count = 1
        if particles != self.cfg.data.particles:  # a subset's STAR names the images relative to itself
            c.data.datadir = None
        c.data.particles, c.output.dir = particles, str(folder)
        c.refinement.finish = "no"
        c.refinement.trim = True  # each round trains on the particles its map explains: one species, not the mix
        c.optimisation.time_budget_seconds = budget
        c.evaluation.gt_poses = c.evaluation.gt_volume = None  # one species' truth does not fit a mixture
        return c

    def write_subset(self, folder: Path, ids: np.ndarray) -> str:
        """Particles ``ids`` as a STAR file in ``folder``, naming the original images (no copies).
        A subset already there whose run has started is kept: a resumed run trains on the same data."""
        from ..data.star import write_star

        rd = RunDir(folder)
        path = rd.path / "particles.star"
        if path.exists() and rd.read_json(self.SUBSET) is not None and (rd.has_checkpoint() or rd.read_summary()):
            return str(path)
        rd.path.mkdir(parents=True, exist_ok=True)
        sub = self.table.subset(np.sort(ids))
        write_star(path, sub, rd._image_names_from_here(sub))
        rd.write_json(self.SUBSET, {"particles": [int(i) for i in np.sort(ids)]})
        return str(path)

    def subset_ids(self, folder: Path) -> np.ndarray:
        """The stack's particle ids a one-class run trained on (all, without a subset.json)."""
        sub = RunDir(folder).read_json(self.SUBSET)
        return np.arange(self.table.n) if sub is None else np.asarray(sub["particles"], dtype=np.int64)

    def trained_on(self, folder: Path) -> np.ndarray:
        """The stack's particle ids a one-class run's last map was made from (its trim's kept set;
        its training particles when no round trimmed)."""
        ids = self.subset_ids(folder)
        kept = RunDir(folder).load_checkpoint()["refinement"].get("kept")
        return ids if kept is None else ids[kept.numpy().astype(np.int64)]

    def ab_initio(self, folder: Path, particles: str, budget: float | None, what: str) -> None:
        """Run (or resume, or take as done) the one-class run in ``folder`` with a training budget in s."""
        rd = RunDir(folder)
        if rd.read_summary() is not None:
            print(f"{what}: already done ({rd.path})", file=sys.stderr)
            return
        resume = rd.has_checkpoint()
        cfg = rd.read_config(time_budget=budget)[0] if resume else self.sub_config(folder, particles, budget)
        print(f"stage {what}: {'resumed' if resume else 'start'} (training budget "
              f"{'-' if budget is None else f'{budget:.0f} s'})", file=sys.stderr)
        with rd.locked():
            Trainer(cfg, resume=resume, command=self.command).run(progress=False)

    def learned(self, folder: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any, float]:
        """What the one-class run in ``folder`` learned: its encoder's poses of every particle (R (n,
        3, 3), origins (n, 2) px at the working box), its map (L, L, L) in the images' own units
        (the last refinement round's, from the particles its trim kept), its dataset (the working
        box's reader) and the sign of its contrast."""
        tm = load_trained(folder, device="cpu")
        ds = tm.dataset(self.table, self.cfg.data.particles)
        R, origin = tm.predict(self.table)
        vol = tm.model.decoder.volume().double().cpu() / tm.scale  # (the scale carries the contrast's sign)
        return R.double(), origin.double() / ds.apix, vol, ds, -1.0 if tm.scale < 0 else 1.0

    def run(self) -> dict:
        wall0 = time.perf_counter()
        cc = self.cfg.classes
        deadline = None if self.budget is None else wall0 + self.budget
        deadline_ab = None if self.budget is None else wall0 + self.budget * cc.ab_initio_fraction
        self.run_dir.path.mkdir(parents=True, exist_ok=True)
        stages: list[dict] = []

        def stage(name: str, t0: float) -> None:
            stages.append({"stage": name, "start_seconds": round(t0, 1),
                           "end_seconds": round(time.perf_counter() - wall0, 1)})

        def share(until: float | None, parts: int) -> float | None:
            # evaluations and outputs are not training time: a tenth of the stage is kept for them
            return None if until is None else max(30.0, 0.9 * (until - time.perf_counter()) / parts)

        ccfg = ClassifyConfig(iters=cc.iters, max_iters=cc.max_iters, junk=cc.junk, min_members=cc.min_members,
                              seed=self.cfg.optimisation.seed,
                              match=MatchConfig(radius=16.0, n_rotations=4096, refine_rounds=4,
                                                seed=self.cfg.optimisation.seed))
        subsets: list[dict] = []
        particles = self.cfg.data.particles
        folders = [self.stage_dir(k) for k in range(1, self.K + 1)]
        poses: list[tuple[torch.Tensor, torch.Tensor]] = []
        maps: list[torch.Tensor] = []  # each class's map as its ab initio left it
        ds, sign, band = None, 1.0, None
        ids = np.arange(self.table.n)
        for k in range(1, self.K + 1):
            t0 = time.perf_counter() - wall0
            self.ab_initio(folders[k - 1], particles, share(deadline_ab, self.K - k + 1), f"ab initio of class {k}")
            stage(f"ab initio, class {k}", t0)
            R, o, vol, ds, sign_k = self.learned(folders[k - 1])
            sign = sign_k if k == 1 else sign  # maps are written with class 1's contrast orientation
            poses.append((R, o))
            maps.append(vol)
            if band is None:  # the images as stored at the working box: the same for every class
                band = BandData.read(_reader(ds), ids, ds.box, ccfg.match.radius)
            if k == self.K:
                break
            # the next class: the particles the classes so far explain worst
            t0 = time.perf_counter() - wall0
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
            particles = self.write_subset(folders[k], pick)
            stage(f"choose class {k + 1}'s particles", t0)
        assert ds is not None and band is not None
        reader = _reader(ds)
        log = lambda m: print(m, file=sys.stderr)  # noqa: E731

        # classification: the K maps learned together
        t0 = time.perf_counter() - wall0
        res = classify(reader, ids, ds.box, maps, torch.stack([p[0] for p in poses], 1),
                       torch.stack([p[1] for p in poses], 1), ccfg, log=log, deadline=deadline, band=band)
        stage("classification", t0)
        classify_seconds = time.perf_counter() - wall0 - t0

        # a class whose map grew from particles that are now mostly elsewhere is learned again
        purity = [float(np.mean(res.label[self.trained_on(f)] == k)) for k, f in enumerate(folders, start=1)]
        redo = [k for k in range(1, self.K + 1) if purity[k - 1] < cc.revisit_purity]
        again: list[dict] = []
        for i, k in enumerate(redo):
            folder = self.stage_dir(k, again=True)
            # the repeated classification is timed like the first
            budget = share(None if deadline is None else deadline - classify_seconds, len(redo) - i)
            members = res.label == k
            rec = {"class": k, "purity": round(purity[k - 1], 4), "members": int(members.sum()), "folder": folder.name}
            if members.sum() < MIN_PARTICLES_PER_CLASS:
                log(f"class {k}: {100 * purity[k - 1]:.0f}% of the particles its map grew from end in it; too few "
                    f"members ({int(members.sum())}) to learn it again")
                again.append({**rec, "skipped": "too few members"})
                continue
            if budget is not None and budget < MIN_AGAIN_SECONDS:
                log(f"class {k}: {100 * purity[k - 1]:.0f}% of the particles its map grew from end in it; no time "
                    f"left to learn it again ({budget:.0f} s of training)")
                again.append({**rec, "skipped": "time budget"})
                continue
            log(f"class {k}: {100 * purity[k - 1]:.0f}% of the particles its map grew from end in it (below "
                f"{100 * cc.revisit_purity:.0f}%): learned again from its {int(members.sum())} members")
            t0 = time.perf_counter() - wall0
            self.ab_initio(folder, self.write_subset(folder, ids[members]), budget, f"class {k} again")
            stage(f"class {k} learned again", t0)
            R, o, vol, _, _ = self.learned(folder)
            poses[k - 1], maps[k - 1], folders[k - 1] = (R, o), vol, folder
            again.append(rec)
        done = [a["class"] for a in again if "skipped" not in a]
        first_rounds = res.history
        if done:  # the classification again, from where it ended, with the new maps and poses
            t0 = time.perf_counter() - wall0
            R0, o0, maps0 = res.R.clone(), res.origin_px.clone(), list(res.maps)
            for k in done:
                R0[:, k - 1], o0[:, k - 1] = poses[k - 1]
                maps0[k - 1] = maps[k - 1]
            res = classify(reader, ids, ds.box, maps0, R0, o0, ccfg, log=log, deadline=deadline, band=band)
            stage("classification again", t0)
        return self.write_outputs(res, ds, subsets, stages, wall0, sign,
                                  {"purity": purity, "learned_again": again, "folders": [f.name for f in folders],
                                   "first_rounds": first_rounds if done else None})

    def write_outputs(self, res: Classification, ds, subsets: list[dict], stages: list[dict], wall0: float,
                      sign: float, cascade: dict) -> dict:
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
                  "apix": ds.apix, "box": ds.box, "ab_initio": cascade["folders"],
                  "subsets": subsets, "purity": cascade["purity"], "learned_again": cascade["learned_again"],
                  "rounds": res.history, "rounds_before_learning_again": cascade["first_rounds"],
                  "score": "normalised correlation on the band |k| < 16 shells at the best pose in the class",
                  "class_number": "1..K; 0 = junk (no class explains the particle better than structureless "
                                  "images with its power spectrum)"}
        rd.write_json(self.CLASSES_JSON, record)
        class_maps_figure([(sign * m).float().numpy() for m in res.maps], sizes, record["junk"], ds.apix,
                          rd / self.FIGURE)
        self.averages(res, ds)
        stages.append({"stage": "outputs", "start_seconds": round(t0, 1),
                       "end_seconds": round(time.perf_counter() - wall0, 1)})
        summary = {"classes": K, "members": sizes, "junk": record["junk"], "stages": stages,
                   "wall_seconds": time.perf_counter() - wall0, "command": self.command}
        rd.write_summary(summary)
        (rd / RunDir.REPORT).write_text(class_report(record, summary))
        return summary

    def averages(self, res: Classification, ds) -> None:
        """class_averages.png: each class's 2-D averages in its most populated viewing directions,
        over the class map's projections at the same poses (both in the images' own contrast)."""
        from ..evaluation.figures import class_averages_figure
        from ..physics.projection import project
        from ..reconstruction.averages import class_averages

        reader = _reader(ds)
        panels: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = []
        for k in range(1, self.K + 1):
            m = np.nonzero(res.label == k)[0]
            if len(m) == 0:
                panels.append(None)
                continue
            av = class_averages(reader, m, res.R[m, k - 1], res.origin_px[m, k - 1])
            panels.append((av.images.numpy(), project(res.maps[k - 1].double(), av.R_ref).numpy(), av.counts))
        class_averages_figure(panels, self.run_dir / self.AVERAGES)


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
    lines += ["", f"![class maps]({ClassRun.FIGURE})", "",
              "Each class's 2-D averages in its most populated viewing directions (the members' images "
              "phase-flipped, centred and turned onto one pose), over the class map's projection there:", "",
              f"![class averages]({ClassRun.AVERAGES})", "", "Stages:", ""]
    lines += [f"- {s['stage']}: {s['start_seconds']:.0f}–{s['end_seconds']:.0f} s" for s in summary["stages"]]
    purity = record.get("purity")
    if purity:
        lines += ["", "Purity of each class's first ab initio (the share of the particles its map grew from "
                  "that end in the class): " + ", ".join(f"class {k} {100 * p:.0f}%" for k, p in
                                                         enumerate(purity, start=1)), ""]
    for a in record.get("learned_again", []):
        lines.append(f"- class {a['class']}: {100 * a['purity']:.0f}% of the particles its first map grew from "
                     f"ended in it; " + (f"not learned again ({a['skipped']})" if "skipped" in a else
                                         f"learned again from its {a['members']} members ({a['folder']})"))
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
