"""Running beyond one process: the device default, the provenance a run records, and experiment
grids through a job launcher (local processes, or Slurm through submitit, tested with fake
sbatch/squeue/sacct)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from eqcryo.cli.main import main
from eqcryo.data.simulate import SimulationConfig, simulate

TRAIN = ["--set", "batch_size=16", "--set", "eval_n=16", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cluster")
    simulate(SimulationConfig(n=120, box=32, apix=13.2, seed=6), d / "sim", progress=False)
    return d / "sim"


@pytest.mark.slow
def test_a_run_records_where_it_ran_and_says_its_device_first(sim, tmp_path):
    r = subprocess.run([sys.executable, "-m", "eqcryo.cli.main", "train", str(sim / "particles.star"), "-o",
                        str(tmp_path / "run"), "--steps", "2", *TRAIN], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    first = next(x for x in r.stderr.splitlines() if not x.startswith(("note:", "warning:")))
    assert first.startswith(f"eqcryo 0.1.0: device {expected}"), r.stderr  # the training log's first line
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["compute"]["device"] == "auto"  # the default, kept as asked: a resume on a GPU host uses it
    p = cfg["resolved"]["provenance"]
    assert p["world_size"] == 1 and p["device"] == expected and p["threads"] == 1
    assert p["torch"] == str(torch.__version__) and p["command"].startswith("eqcryo train ")
    assert p["git_commit"] == "not a git checkout" or len(p["git_commit"].split()[0]) == 40
    assert p["device_name"] and p["host"]
    assert "- ran on: 1 process × 1 threads, " + expected in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_one_line(sim, tmp_path, capsys):
    assert main(["train", str(sim / "particles.star"), "-o", str(tmp_path / "run"), "--steps", "1",
                 "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "this machine has no CUDA GPU that PyTorch can use" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


GRID = {"steps": 12, "seeds": [0, 1], "models": ["d4-l2"], "train": {"batch_size": 16, "eval_n": 16},
        "datasets": {"tiny": {"simulate": {"structure": "builtin:5nrl", "n": 300, "box": 32, "apix": 13.2,
                                           "seed": 3}}}}


@pytest.mark.slow
def test_a_grid_through_the_local_launcher_keeps_its_job_logs(tmp_path, capsys):
    """2 seeds, 12 steps, 300 images at 32 px: each cell a separate process; the logs in the
    experiment folder; rerunning submits nothing; --status reads the table back."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(GRID))
    exp = tmp_path / "exp"
    assert main(["experiment", str(spec), "-o", str(exp), "--launcher", "local", "--jobs", "2"]) == 0
    assert sorted(p.name for p in (exp / "logs").glob("*_log.out")) and len(list((exp / "logs").glob("*_log.err"))) == 2
    capsys.readouterr()
    assert main(["experiment", str(exp), "--status"]) == 0
    table = capsys.readouterr().out
    assert table.count("| done | 1 |") == 2, table
    for s in (0, 1):
        cfg = yaml.safe_load((exp / "runs" / f"tiny__d4-l2__seed{s}" / "config.yaml").read_text())
        assert cfg["resolved"]["provenance"]["world_size"] == 1
        assert cfg["compute"]["threads"] == max(1, (__import__("os").cpu_count() or 2) // 2)  # the cores, split
    jobs_before = (exp / "jobs.json").read_text()
    assert main(["experiment", str(spec), "-o", str(exp), "--launcher", "local", "--jobs", "2"]) == 0
    assert (exp / "jobs.json").read_text() == jobs_before  # nothing finished is run twice


FAKE_SBATCH = r'''#!{python}
import json, os, pathlib, subprocess, sys
log = pathlib.Path(os.environ["FAKE_SLURM_DIR"])
n = len(list(log.glob("sbatch_*.sh")))
job = 4200 + n
(log / f"sbatch_{{job}}.sh").write_text(open(sys.argv[-1]).read())
print(f"Submitted batch job {{job}}")
sys.stdout.flush()
subprocess.Popen([sys.executable, os.environ["FAKE_SLURM_RUNNER"], sys.argv[-1], str(job)],
                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
'''

FAKE_RUNNER = r'''import json, os, pathlib, re, subprocess, sys, time
script, job = open(sys.argv[1]).read(), sys.argv[2]
log = pathlib.Path(os.environ["FAKE_SLURM_DIR"])
lo, hi = map(int, re.search(r"#SBATCH --array=(\d+)-(\d+)", script).group(1, 2))
folder = re.search(r"submitit.core._submit '?([^'\s]+)'?", script).group(1)
def state(key, value):
    p = log / "state.json"
    d = json.loads(p.read_text()) if p.exists() else {{}}
    d[key] = value
    tmp = p.with_suffix(".tmp"); tmp.write_text(json.dumps(d)); os.replace(tmp, p)
for task in range(lo, hi + 1):
    state(f"{{job}}_{{task}}", "PENDING")
first = int(job) == 4200 and os.environ.get("FAKE_SLURM_FIRST_STATE")  # the first array ends so, unrun
for task in range(lo, hi + 1):
    key = f"{{job}}_{{task}}"
    if first:
        state(key, first); continue
    t0 = time.time()
    while not (pathlib.Path(folder) / f"{{key}}_submitted.pkl").exists() and time.time() - t0 < 60:
        time.sleep(0.2)
    state(key, "RUNNING")
    exports = dict(re.findall(r"^export (\w+)=(\S+)$", script, re.M))  # (what the script exports)
    env = dict(os.environ, **exports, SLURM_JOB_ID=str(int(job) + 1 + task), SLURM_ARRAY_JOB_ID=job, SLURM_ARRAY_TASK_ID=str(task),
               SLURM_NTASKS="1", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_JOB_NUM_NODES="1",
               SLURM_JOB_NODELIST="localhost")
    with open(pathlib.Path(folder) / f"{{key}}_0_log.out", "w") as out, \
            open(pathlib.Path(folder) / f"{{key}}_0_log.err", "w") as err:
        rc = subprocess.run([sys.executable, "-u", "-m", "submitit.core._submit", folder], env=env, stdout=out,
                            stderr=err).returncode
    state(key, "COMPLETED" if rc == 0 else "FAILED")
'''

FAKE_SACCT = r'''#!{python}
import json, os, pathlib, sys
p = pathlib.Path(os.environ["FAKE_SLURM_DIR"]) / "state.json"
d = json.loads(p.read_text()) if p.exists() else {{}}
ids = [sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "-j"]
print("JobID|State|NodeList")
for key, st in d.items():
    if key.split("_")[0] in ids:
        print(f"{{key}}|{{st}}|localhost")
'''


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """sbatch, sacct and squeue on PATH that behave as Slurm's for submitit: sbatch records the
    submission file and runs the array's tasks in the background, sacct reports their states."""
    bin_dir, log = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    log.mkdir()
    (tmp_path / "runner.py").write_text(FAKE_RUNNER.format())
    for name, text in (("sbatch", FAKE_SBATCH), ("sacct", FAKE_SACCT), ("squeue", "#!/bin/sh\nexit 0\n"),
                       ("srun", "#!/bin/sh\nexec \"$@\"\n")):
        (bin_dir / name).write_text(text.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(log))
    monkeypatch.setenv("FAKE_SLURM_RUNNER", str(tmp_path / "runner.py"))
    return log


def _wait_for(exp: Path, states: set[str], timeout: float = 240.0) -> list[dict]:
    import json
    import time

    from eqcryo.experiments.grid import load_spec
    from eqcryo.experiments.launch import cell_table

    spec = load_spec(json.loads((exp / "experiment.json").read_text())["spec"])
    t0 = time.time()
    while True:
        rows = cell_table(exp, spec)
        if all(r["state"] in states for r in rows) or time.time() - t0 > timeout:
            return rows
        time.sleep(1.0)


@pytest.mark.slow
def test_a_grid_on_slurm_is_one_job_array_and_its_results_are_collected(fake_slurm, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**GRID, "slurm": {"account": "lab", "qos": "high"}}))
    exp = tmp_path / "exp"
    assert main(["experiment", str(spec), "-o", str(exp), "--launcher", "slurm", "--jobs", "2",
                 "--slurm-partition", "gpu", "--slurm-gpus-per-job", "1", "--slurm-time", "30"]) == 0
    assert "submitted; follow with: eqcryo experiment" in capsys.readouterr().out
    scripts = sorted(fake_slurm.glob("sbatch_*.sh"))
    assert len(scripts) == 1  # one array for the whole grid
    sb = scripts[0].read_text()
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --time=30", "#SBATCH --account=lab", "#SBATCH --qos=high", "#SBATCH --signal=USR2@90"):
        assert line in sb, (line, sb)
    assert "submitit.core._submit" in sb and str(exp / "logs") in sb
    rows = _wait_for(exp, {"done", "failed"})
    assert [r["state"] for r in rows] == ["done", "done"], rows
    assert all(r["pose_mse"] is not None for r in rows)
    assert len(list((exp / "logs").glob("4200_*_0_log.out"))) == 2
    # submitted again: nothing finished runs twice
    assert main(["experiment", str(spec), "-o", str(exp), "--launcher", "slurm", "--jobs", "2"]) == 0
    assert len(list(fake_slurm.glob("sbatch_*.sh"))) == 1


@pytest.mark.slow
@pytest.mark.parametrize("first,state,attempts", [("FAILED", "failed", 2), ("TIMEOUT", "stopped", 1)])
def test_a_failed_slurm_cell_is_retried_and_a_timed_out_one_resumed(fake_slurm, tmp_path, monkeypatch, first, state,
                                                                     attempts):
    """A failed array is submitted once more (its cells count 2 attempts); one stopped by the time
    limit is resubmitted as the same attempt."""
    monkeypatch.setenv("FAKE_SLURM_FIRST_STATE", first)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(GRID))
    exp = tmp_path / "exp"
    args = ["experiment", str(spec), "-o", str(exp), "--launcher", "slurm", "--jobs", "2"]
    assert main(args) == 0
    assert [r["state"] for r in _wait_for(exp, {state}, 60)] == [state, state]
    assert main(args) == 0  # a second array, which completes
    assert len(list(fake_slurm.glob("sbatch_*.sh"))) == 2
    rows = _wait_for(exp, {"done", "failed"})
    assert [(r["state"], r["attempts"]) for r in rows] == [("done", attempts), ("done", attempts)], rows
