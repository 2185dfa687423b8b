"""Grid cells as jobs: separate local processes, or a Slurm job array, through submitit.

``eqcryo experiment SPEC -o DIR --launcher local|slurm`` submits every cell of the grid that is not
finished as one job running :func:`run_cell`; the job logs land in ``DIR/logs/``. ``DIR/jobs.json``
records each cell's job ids and attempts, so the command can be run again at any time: a finished
cell (its run folder says so) is never run twice, a failed one is submitted once more and then
reported, a running one is left alone. ``eqcryo experiment DIR --status`` prints the table.

- ``local``: at most ``--jobs`` processes at once on this machine; the command waits for them.
- ``slurm``: one job array (``--jobs`` at once), ``--slurm-partition``, ``--slurm-gpus-per-job``,
  ``--slurm-time`` (minutes) and any other sbatch parameter from the spec's ``slurm:`` mapping;
  the command submits and returns (the cells train on the cluster).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.atomic import atomic_path
from ..data.errors import InputError
from ..training.rundir import RunDir
from .grid import GridRun, _dataset_paths, grid_runs, load_spec, run_one, run_status, write_grid_record

__all__ = ["LAUNCHERS", "SlurmOptions", "cell_table", "launch", "run_cell"]

LAUNCHERS = ("local", "slurm")
JOBS, LOGS = "jobs.json", "logs"
#: attempts per cell: the first, and one retry
MAX_ATTEMPTS = 2
#: Slurm states of a job that ended without finishing its cell: a failure (retried once)
_FAILED = {"COMPLETED", "FAILED", "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
#: ... and states of a job stopped from outside: the run saved a checkpoint at SIGTERM, so the cell
#: is pending again (resumed by the next launch) and not counted as a failure
_STOPPED = {"TIMEOUT", "PREEMPTED"}


@dataclass
class SlurmOptions:
    """What a Slurm job array asks for (the spec's ``slurm:`` mapping adds any sbatch parameter)."""

    partition: str | None = None
    gpus_per_job: int = 0
    time_minutes: int = 60
    extra: dict[str, Any] | None = None


def run_cell(spec_path: str, out: str, index: int, threads: int | None) -> str:
    """One grid cell, in a job's own process (what every submitted job runs)."""
    spec = load_spec(spec_path)
    runs = grid_runs(spec, out)
    return run_one(spec, runs[index], Path(out), threads=threads, progress=False)


def _read_jobs(out: Path) -> dict[str, dict[str, Any]]:
    p = out / JOBS
    if not p.exists():
        return {}
    try:
        d = json.loads(p.read_text())
    except ValueError:
        raise InputError(f"{p}: not valid JSON; was it edited by hand?") from None
    return d if isinstance(d, dict) else {}


def _write_jobs(out: Path, jobs: dict[str, dict[str, Any]]) -> None:
    with atomic_path(out / JOBS) as tmp:
        tmp.write_text(json.dumps(jobs, indent=2) + "\n")


def _slurm_state(out: Path, job_id: str) -> str:
    import submitit

    return str(submitit.SlurmJob(folder=out / LOGS, job_id=job_id).state)


def cell_state(run: GridRun, spec: dict[str, Any], out: Path, record: dict[str, Any] | None) -> str:
    """pending, running, stopped (by the time limit: resumes), done or failed (from the run folder
    first, then the cell's last job)."""
    if run_status(run, spec) == "done":
        return "done"
    if RunDir(run.path).in_use():
        return "running"
    if not record:
        return "pending"
    if record.get("launcher") == "slurm" and record.get("job_id"):
        state = _slurm_state(out, record["job_id"]).split()[0]
        if state in _STOPPED:
            return "stopped"
        if state in _FAILED:  # (COMPLETED without a finished run folder: the cell raised)
            return "failed"
        return "running" if state in ("RUNNING", "COMPLETING") else "pending"
    return "failed" if record.get("error") else "pending"


def cell_table(out: str | os.PathLike, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per cell: index, data set, model, seed, state, attempts, training seconds, last MSE."""
    out = Path(out)
    jobs = _read_jobs(out)
    rows = []
    for r in grid_runs(spec, out):
        rd = RunDir(r.path)
        summary = rd.read_summary() or {}
        metrics = rd.metric_rows()
        mse = next((m["pose_mse"] for m in reversed(metrics) if m.get("pose_mse")), None)
        rec = jobs.get(str(r.index))
        rows.append({"index": r.index, "dataset": r.dataset, "model": r.model, "seed": r.seed,
                     "state": cell_state(r, spec, out, rec), "attempts": (rec or {}).get("attempts", 0),
                     "train_seconds": summary.get("train_seconds"),
                     "pose_mse": None if mse is None else float(mse)})
    return rows


def _threads(jobs: int) -> int:
    return max(1, (os.cpu_count() or 2) // jobs)


def launch(spec_path: str, out: str | os.PathLike, launcher: str, jobs: int = 1,
           slurm: SlurmOptions | None = None) -> list[dict[str, Any]]:
    """Submit the grid's unfinished cells (see the module); returns :func:`cell_table` after."""
    import submitit

    if launcher not in LAUNCHERS:
        raise InputError(f"--launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    spec = load_spec(spec_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = grid_runs(spec, out)
    write_grid_record(out, spec_path, runs)
    for ds in spec["datasets"]:  # simulated data sets once, here, not by every job at once
        _dataset_paths(spec, ds, out)
    records = _read_jobs(out)
    todo = []
    for r in runs:
        rec = records.get(str(r.index))
        state = cell_state(r, spec, out, rec)
        if state == "failed" and (rec or {}).get("attempts", 0) >= MAX_ATTEMPTS:
            continue  # reported, not retried again
        queued = state == "pending" and rec is not None and rec.get("launcher") == "slurm" and rec.get("job_id")
        if state == "stopped" and rec is not None:
            rec["attempts"] = max(0, rec.get("attempts", 1) - 1)  # (a time limit is not a failed attempt)
        if state in ("pending", "failed", "stopped") and not queued:
            todo.append(r)
    spec_abs, out_abs = str(Path(spec_path).resolve()), str(out.resolve())
    if launcher == "slurm":
        s = slurm or SlurmOptions()
        try:
            ex = submitit.AutoExecutor(folder=out / LOGS, cluster="slurm")
        except RuntimeError as e:  # no sbatch/srun here
            raise InputError(f"--launcher slurm: {e}") from None
        extra = dict(spec.get("slurm") or {})
        extra.update(s.extra or {})
        ex.update_parameters(name="eqcryo-grid", timeout_min=s.time_minutes, slurm_partition=s.partition,
                             gpus_per_node=s.gpus_per_job or None, tasks_per_node=1, nodes=1,
                             slurm_array_parallelism=jobs, slurm_additional_parameters=extra)
        if todo:
            n = len(todo)
            submitted = ex.map_array(run_cell, [spec_abs] * n, [out_abs] * n, [r.index for r in todo], [None] * n)
            for r, job in zip(todo, submitted):
                rec = records.setdefault(str(r.index), {})
                rec.update(launcher="slurm", job_id=str(job.job_id), attempts=rec.get("attempts", 0) + 1,
                           error=None)
            _write_jobs(out, records)
        return cell_table(out, spec)
    # local: separate processes, at most `jobs` at once, waited for; a failure is retried once
    local = submitit.LocalExecutor(folder=out / LOGS)
    local.update_parameters(timeout_min=24 * 60)
    threads = _threads(jobs)
    queue: list[GridRun] = list(todo)
    running: list[tuple[GridRun, Any]] = []
    while queue or running:
        while queue and len(running) < jobs:
            r = queue.pop(0)
            job = local.submit(run_cell, spec_abs, out_abs, r.index, threads)
            rec = records.setdefault(str(r.index), {})
            rec.update(launcher="local", job_id=str(job.job_id), attempts=rec.get("attempts", 0) + 1, error=None)
            running.append((r, job))
            _write_jobs(out, records)
        time.sleep(0.5)
        for r, job in [x for x in running if x[1].done()]:
            running.remove((r, job))
            rec = records[str(r.index)]
            err = job.exception()
            if err is not None:
                rec["error"] = str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__
                if rec["attempts"] < MAX_ATTEMPTS:
                    queue.append(r)
            _write_jobs(out, records)
    return cell_table(out, spec)
