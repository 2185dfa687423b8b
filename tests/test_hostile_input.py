"""The second bad-input catalogue: races, changed data, one-pixel decisions, memory bombs and
signals. Every refusal: exit code 2, one line, no traceback, nothing written."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eqcryo.cli.main import main
from eqcryo.data.simulate import SimulationConfig, simulate

TRAIN = ["--set", "batch_size=16", "--set", "eval_n=16", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    simulate(SimulationConfig(n=200, box=32, apix=13.2, seed=4), d / "sim", progress=False)
    return d / "sim"


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.slow
def test_two_trains_into_one_folder_cannot_both_run(sim, tmp_path):
    """The second `train -o RUN` while the first trains there: refused in one line, and the
    first's folder is left alone (config and checkpoint are the first run's)."""
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "eqcryo.cli.main", "train", str(sim / "particles.star"),
                              "-o", str(run), "--steps", "100000", *TRAIN], stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not (run / "metrics.csv").exists() and time.time() - t0 < 60:
            time.sleep(0.2)
        second = subprocess.run([sys.executable, "-m", "eqcryo.cli.main", "train", str(sim / "particles.star"),
                                 "-o", str(run), "--steps", "3", "--seed", "5", *TRAIN],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert "in use by another eqcryo run (pid" in second.stderr and "Traceback" not in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        resumed = subprocess.run([sys.executable, "-m", "eqcryo.cli.main", "train", "--resume", str(run),
                                  "--steps", "3", "--no-progress"], capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 2 and "in use by another eqcryo run" in resumed.stderr
        assert run.exists() and (run / "config.yaml").exists()
    finally:
        first.send_signal(2)
        first.communicate(timeout=60)
    assert first.returncode == 130
    assert "seed: 0" in (run / "config.yaml").read_text()  # the first run's, not the second's seed 5


def test_a_stale_lock_of_a_dead_process_is_taken_over_and_said(sim, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    pid = _dead_pid()
    (run / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "then"}))
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "--steps", "1", *TRAIN]) == 0
    assert f"removed a stale lock of pid {pid}" in capsys.readouterr().err
    assert not (run / ".lock").exists()


def test_a_lock_of_a_live_process_refuses_and_keeps_the_folder(sim, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "since": "now"}  # (a live process)
    (run / ".lock").write_text(json.dumps(holder))
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "--steps", "1", *TRAIN]) == 2
    err = capsys.readouterr().err
    assert f"in use by another eqcryo run (pid {holder['pid']}" in err and f"delete {run / '.lock'}" in err
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written, nothing removed
