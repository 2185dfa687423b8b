"""A grid of ``eqcryo train`` runs from a YAML spec, resumable and parallel.

Spec (YAML)::

    time_budget: 600              # seconds of training per run, and/or
    images: 600000                # images per run (steps = images / batch size): a budget that does
                                  # not depend on the machine's speed
    seeds: [0, 1, 2]
    models: [standard, c4-l2, c4-mirror, d4-l2]
    recipe: cpu-amortized         # a training recipe (eqcryo train --list-recipes), optional
    train: {evaluation: {track_mirror: true}}   # overrides of the recipe (sections, or flat keys)
    datasets:
      spliceosome-noiseless:
        particles: data/particles.star      # or: simulate: {recipe: spliceosome-noiseless-cpu}
        gt_poses: data/gt_poses.pkl
        gt_volume: data/gt_volume.mrc
        snr: null                            # for the SNR-sweep table (optional)

Each run is an ordinary ``eqcryo train`` folder ``DIR/runs/<dataset>__<model>__seed<k>``.
Finished runs (``summary.json`` with the budget reached, or the run ended by its agreement rule,
``stop_match_mse``) are skipped, interrupted ones (a checkpoint) resumed, the rest started;
``--only INDEX`` runs one grid cell (for a hand-written array job); several cells at once, as
local processes or a Slurm job array: :mod:`.launch`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..data.atomic import require_file
from ..data.errors import InputError
from ..training.config import DEFAULT_RECIPE, TrainConfig, make_config, to_nested
from ..training.rundir import RunDir

__all__ = ["GridRun", "load_spec", "grid_runs", "read_grid", "recorded_spec", "run_status", "run_one", "run_grid"]


@dataclass
class GridRun:
    index: int
    dataset: str
    model: str
    seed: int
    path: Path


#: a data set's name is a folder name under DIR/data and DIR/runs: nothing that leaves DIR
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")


def load_spec(path: str | os.PathLike) -> dict:
    p = Path(path)
    require_file(p, "experiment spec not found")
    try:
        spec = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(spec, dict):
        raise InputError(f"{p}: expected a mapping (time_budget, seeds, models, datasets, ...)")
    for key in ("datasets", "models", "seeds"):
        if key not in spec:
            raise InputError(f"{p}: missing required key {key!r}")
    if spec.get("time_budget") is None and spec.get("steps") is None and spec.get("images") is None:
        raise InputError(f"{p}: give time_budget (seconds per run), images or steps")
    if spec.get("images") is not None and spec.get("steps") is not None:
        raise InputError(f"{p}: give images or steps, not both")
    img = spec.get("images")
    if img is not None and (isinstance(img, bool) or not isinstance(img, int) or img < 1):
        raise InputError(f"{p}: images {img!r}: expected a whole number >= 1")
    TrainConfig.from_dict(spec.get("train") or {}, f"{p}: train")  # unknown options named with the file
    for key, kind in (("seeds", list), ("models", list), ("datasets", dict)):
        if not isinstance(spec[key], kind) or not spec[key]:
            raise InputError(f"{p}: {key} must be a non-empty {'list' if kind is list else 'mapping'}, "
                             f"found {spec[key]!r}")
    for name in spec["datasets"]:
        if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):  # (so never "." or "..")
            raise InputError(f"{p}: data set name {name!r}: names become folders under the experiment folder; "
                             f"use letters, digits, '.', '_' and '-' (not starting with '.' or '-')")
    if spec.get("recipe"):
        r = spec["recipe"]
        local = p.parent / r
        spec["recipe"] = str(local) if r.endswith((".yaml", ".yml")) and local.exists() else r
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in spec["seeds"]):
        raise InputError(f"{p}: seeds must be whole numbers >= 0, found {spec['seeds']!r}")
    # every run's options are checked now, not after the first runs (and before grid.json exists)
    for m in spec["models"]:
        cfg = make_config(spec.get("recipe") or DEFAULT_RECIPE, _run_sets(spec, m),
                          time_budget=spec.get("time_budget"), steps=spec.get("steps") or 1)
        spec.setdefault("_steps", {})[m] = _steps(spec, cfg.optimisation.batch_size)
    spec["_base"] = str(p.parent.resolve())
    return spec


def _steps(spec: dict, batch_size: int) -> int | None:
    """The steps of a run: ``steps``, or ``images`` over the run's batch size (rounded up)."""
    if spec.get("images") is not None:
        return -(-int(spec["images"]) // batch_size)
    return spec.get("steps")


def _run_sets(spec: dict, model: str) -> dict[str, dict]:
    """The spec's ``train:`` options (sections or flat keys) with the cell's model (and profile)."""
    sets = to_nested(spec.get("train") or {}, "train")
    sets.setdefault("model", {})["name"] = model
    if spec.get("profile"):
        sets["model"]["profile"] = spec["profile"]
    return sets


def grid_runs(spec: dict, out: str | os.PathLike) -> list[GridRun]:
    runs: list[GridRun] = []
    for ds in spec["datasets"]:
        for m in spec["models"]:
            for s in spec["seeds"]:
                runs.append(GridRun(len(runs), ds, m, int(s), Path(out) / "runs" / f"{ds}__{m}__seed{s}"))
    return runs


def run_status(run: GridRun, spec: dict) -> str:
    """"done", "interrupted" or "new"."""
    rd = RunDir(run.path)
    d = rd.read_summary()
    if d is not None:
        if d.get("agreement"):  # it ended by its own no-ground-truth rule: a larger budget would not run it on
            return "done"
        steps = (spec.get("_steps") or {}).get(run.model, spec.get("steps"))
        if (steps is not None and d["steps"] >= steps) or \
                (spec.get("time_budget") is not None and d["train_seconds"] >= spec["time_budget"]):
            return "done"
    return "interrupted" if rd.has_checkpoint() else "new"


def _dataset_paths(spec: dict, name: str, out: Path) -> dict:
    d = dict(spec["datasets"][name])
    base = Path(spec["_base"])
    if "simulate" in d:
        from ..data.simulate import RECIPES, SimulationConfig, simulate
        sim = dict(d.pop("simulate"))
        if str(sim.get("recipe", "")).startswith("ribosome") and not sim.get("structure"):
            raise InputError(f"data set {name}: recipe {sim['recipe']} needs a ribosome structure "
                             f"(simulate: {{structure: PATH}}); eqcryo bundles only the spliceosome")
        target = out / "data" / name
        if not (target / "dataset.json").exists():
            cfg = SimulationConfig()
            if "recipe" in sim:
                for k, v in RECIPES[sim.pop("recipe")].items():
                    setattr(cfg, k, v)
            for k, v in sim.items():
                setattr(cfg, k, tuple(v) if isinstance(v, list) else v)
            simulate(cfg, target, progress=False)
        d.update(particles=str(target / "particles.star"), gt_poses=str(target / "gt_poses.pkl"),
                 gt_volume=str(target / "gt_volume.mrc"))
    for k in ("particles", "gt_poses", "gt_volume", "ctf"):
        if d.get(k) and not os.path.isabs(d[k]):
            d[k] = str(base / d[k])
    return d


def run_one(spec: dict, run: GridRun, out: Path, threads: int | None = None, progress: bool = False) -> str:
    """Run (or resume, or skip) one grid cell in this process; returns its status before."""
    from ..training.trainer import Trainer

    status = run_status(run, spec)
    if status == "done":
        return status
    ds = _dataset_paths(spec, run.dataset, out)
    with RunDir(run.path).locked():  # two workers (or array tasks) never train one cell at once
        if status == "interrupted":
            cfg, _ = RunDir(run.path).read_config()
            cfg.optimisation.time_budget_seconds = spec.get("time_budget")
            cfg.optimisation.steps = spec["_steps"][run.model]
            tr = Trainer(cfg, resume=True)
        else:
            cfg = make_config(spec.get("recipe") or DEFAULT_RECIPE, _run_sets(spec, run.model),
                              particles=ds["particles"], out=str(run.path), gt_poses=ds.get("gt_poses"),
                              gt_volume=ds.get("gt_volume"), ctf=ds.get("ctf"), seed=run.seed,
                              time_budget=spec.get("time_budget"), steps=spec["_steps"][run.model], threads=threads)
            tr = Trainer(cfg)
        tr.run(progress=progress)
    return status


def write_grid_record(out: Path, spec_path: str, runs: list[GridRun]) -> None:
    """DIR/grid.json (the cells) and DIR/experiment.json (the spec they came from, for --status)."""
    (out / "grid.json").write_text(json.dumps([{"index": r.index, "dataset": r.dataset, "model": r.model,
                                                "seed": r.seed, "path": str(r.path)} for r in runs], indent=2))
    (out / "experiment.json").write_text(json.dumps({"spec": str(Path(spec_path).resolve())}, indent=2))


def read_grid(out: str | os.PathLike) -> list[GridRun]:
    """The cells of experiment folder ``out`` as its grid.json records them.

    Each run is found under ``DIR/runs`` whatever path grid.json holds: the paths there are as the
    launch was given (relative to its working folder, or absolute), and a folder copied off a
    cluster or moved still reads."""
    out = Path(out)
    record = out / "grid.json"
    if not record.exists():
        raise InputError(f"{out}: no grid.json; is it an experiment folder (eqcryo experiment SPEC -o {out})?")
    try:
        return [GridRun(int(g["index"]), str(g["dataset"]), str(g["model"]), int(g["seed"]),
                        out / "runs" / Path(g["path"]).name) for g in json.loads(record.read_text())]
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{record}: not a grid record ({type(e).__name__}: {e})") from None


def recorded_spec(out: str | os.PathLike) -> dict | None:
    """The spec experiment folder ``out`` was run with (DIR/experiment.json); None when the folder
    has no record or the spec file is gone."""
    record = Path(out) / "experiment.json"
    if not record.exists():
        return None
    try:
        spec_path = Path(json.loads(record.read_text())["spec"])
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{record}: not an experiment record ({type(e).__name__}: {e})") from None
    return load_spec(spec_path) if spec_path.exists() else None


def run_grid(spec_path: str, out: str, only: int | None = None, progress: bool = True,
             threads: int | None = None) -> list[str]:
    """Run the grid's unfinished cells (or its cell ``only``) in this process, one after another;
    ``threads`` per run is recorded in each run's config. Several at once, or on a cluster: the
    launchers of :mod:`.launch`."""
    spec = load_spec(spec_path)
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    runs = grid_runs(spec, out_p)
    write_grid_record(out_p, spec_path, runs)
    if only is not None:
        if not 0 <= only < len(runs):
            raise InputError(f"--only {only}: the grid has {len(runs)} runs (0..{len(runs) - 1})")
        return [run_one(spec, runs[only], out_p, threads=threads, progress=progress)]
    for ds in spec["datasets"]:
        _dataset_paths(spec, ds, out_p)
    return [run_one(spec, r, out_p, threads=threads, progress=progress) for r in runs if run_status(r, spec) != "done"]
