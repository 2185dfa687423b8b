"""The bad-input catalogue: each bad or hostile input stops with one line naming the
file, the particle and what was expected, exit code 2, and **no file anywhere changed** — checked
by hashing every file of the work folder before and after. Every case failed before its fix."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from eqcryo.cli.main import main
from eqcryo.data.mrc import write_stack
from eqcryo.data.simulate import SimulationConfig, simulate


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A 300-image 32 px simulation (the catalogue's data), a trained 2-step run, and crafted files."""
    d = tmp_path_factory.mktemp("catalogue")
    simulate(SimulationConfig(n=300, box=32, apix=13.2, seed=1), d / "sim", progress=False)
    assert main(["train", str(d / "sim" / "particles.star"), "-o", str(d / "run"), "--steps", "2",
                 "--set", "batch_size=16", "--set", "eval_n=16", "--gt-poses", str(d / "sim" / "gt_poses.pkl"),
                 "--no-progress"]) == 0
    s = d / "sim"
    # box 16 / 31 stacks behind a STAR that says 32
    for L in (16, 31):
        (d / f"box{L}").mkdir()
        shutil.copy(s / "particles.star", d / f"box{L}" / "particles.star")
        write_stack(d / f"box{L}" / "particles_000.mrcs", np.zeros((300, L, L), np.float32), 13.2)
    blocks = starfile.read(s / "particles.star", always_dict=True)
    parts = blocks["particles"]

    def star(name, p, optics=blocks["optics"]):
        starfile.write({"optics": optics, "particles": p}, d / name)

    p = parts.copy()
    p["rlnImageName"] = [f"{s}/particles_000.mrcs"] * len(p)  # no idx@ on a 300-image stack
    star("noidx.star", p)
    p = parts.copy().astype({"rlnDefocusU": object})
    p.loc[7, "rlnDefocusU"] = "abc"
    star("nonnumeric.star", p)
    p = parts.copy()
    p["rlnOpticsGroup"] = 7
    star("badgroup.star", p)
    text = (s / "particles.star").read_text().splitlines()
    (d / "garbage.star").write_text("\n".join(text[:40] + ["this line is garbage !!"] + text[40:]) + "\n")
    # images with the particle names rewritten to absolute paths (for STARs in other folders)
    p = parts.copy()
    p["rlnImageName"] = [f"{n.split('@')[0]}@{s}/{n.split('@')[1]}" for n in p["rlnImageName"]]
    star("abs.star", p)
    # cryoSPARC .cs with only part of the CTF
    n = 300
    cs = np.zeros(n, dtype=[("blob/path", "S64"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
                            ("blob/psize_A", "<f4"), ("ctf/df1_A", "<f4"), ("alignments3D/pose", "<f4", (3,))])
    cs["blob/path"] = str(s / "particles_000.mrcs").encode()
    cs["blob/idx"] = np.arange(n)
    cs["blob/shape"] = 32
    cs["blob/psize_A"] = 13.2
    cs["ctf/df1_A"] = 20000
    with open(d / "partialctf.cs", "wb") as fh:
        np.save(fh, cs)
    # pickles: a payload, a dict, poses given as CTF, non-orthonormal rotations
    with open(d / "evil.pkl", "wb") as fh:
        pickle.dump(_Payload(str(d / "PWNED_pkl")), fh)
    with open(d / "dict.pkl", "wb") as fh:
        pickle.dump({"rot": np.eye(3)}, fh)
    R = np.tile(np.eye(3), (n, 1, 1))
    R[5] *= 2.0
    with open(d / "skewed_poses.pkl", "wb") as fh:
        pickle.dump((R, np.zeros((n, 2))), fh)
    # checkpoints: a payload, truncated, garbage
    torch.save({"model": _Payload(str(d / "PWNED_pt"))}, d / "evil.pt")
    good = (d / "run" / "checkpoint.pt").read_bytes()
    (d / "truncated.pt").write_bytes(good[: len(good) // 3])
    (d / "garbage.pt").write_bytes(b"\x00garbage" * 100)
    # a run whose config.yaml was damaged
    shutil.copytree(d / "run", d / "badconfig_run")
    (d / "badconfig_run" / "config.yaml").write_text("model: [unclosed\n  - {{\n")
    # complex (mode 4) and truncated stacks
    with mrcfile.new(d / "complex.mrcs") as m:
        m.set_data(np.ones((4, 32, 32), np.complex64))
    raw = (s / "particles_000.mrcs").read_bytes()
    (d / "truncated.mrcs").write_bytes(raw[: 1024 + 146 * 32 * 32 * 4 + 100])
    # a user's folder that is not a run, and a regular file
    (d / "mine").mkdir()
    (d / "mine" / "reconstruction.mrc").write_bytes(b"my precious map")
    (d / "afile").write_text("not a folder")
    return d


class _Payload:
    """Unpickling this runs ``open(path, 'w')``: the marker file proves the payload ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


#: (argv with {d} for the work folder, what the one-line error must say). Numbers: the catalogue's sections.
CASES = {
    # 1. outputs over image stacks that the input metadata references
    "1-downsample-over-stack": ("downsample {d}/sim/particles.star -D 16 -o {d}/sim/particles_000.mrcs --out-star {d}/ds.star",
                                "an image stack that"),
    "1-backproject-over-stack": ("backproject {d}/sim/particles.star -o {d}/sim/particles_000.mrcs", "an image stack that"),
    "1-refine-map-over-stack": ("refine {d}/sim/particles.star -o {d}/r.star --map {d}/sim/particles_000.mrcs",
                                "an image stack that"),
    "1-project-over-stack": ("project {d}/sim/gt_volume.mrc --poses {d}/sim/particles.star -o {d}/sim/particles_000.mrcs",
                             "an image stack that"),
    # 2. code in a pickle or a checkpoint (also: the payload must not run, see below)
    "2-info-evil-pkl": ("info {d}/evil.pkl --box 32", "refusing to load io.open"),
    "2-convert-evil-ctf": ("convert {d}/sim/particles.star --ctf {d}/evil.pkl -o {d}/x.star", "refusing to load"),
    "2-evaluate-evil-checkpoint": ("evaluate {d}/run --checkpoint {d}/evil.pt", "not a readable eqcryo checkpoint"),
    # 3. a .cs without its full CTF
    "3-backproject-partial-cs": ("backproject {d}/partialctf.cs -o {d}/map.mrc", "lacks ctf/df2_A, ctf/accel_kv"),
    "3-convert-partial-cs": ("convert {d}/partialctf.cs -o {d}/p.star", "ctf/cs_mm, ctf/amp_contrast"),
    # 4. the STAR's box against the stack
    "4-info-check-box16": ("info {d}/box16/particles.star --check", "images are 16 px but"),
    "4-backproject-box31": ("backproject {d}/box31/particles.star -o {d}/map.mrc", "says the box is 32 px"),
    # 6. names without idx@ on a multi-image stack
    "6-info-noidx": ("info {d}/noidx.star --check", "holds 300 images; write idx@file"),
    # 7. a ribosome recipe must not simulate the spliceosome
    "7-ribosome-recipe": ("simulate --recipe ribosome-noiseless-cpu -o {d}/ribo", "needs a ribosome structure"),
    # 8. complex MRC
    "8-complex-mrcs": ("info {d}/complex.mrcs --check", "complex-valued MRC data (mode 4)"),
    # 9. tracebacks that became one line
    "9-star-garbage-line": ("info {d}/garbage.star", "particle 8: rlnOpticsGroup is 'line', not a number"),
    "9-star-non-numeric": ("info {d}/nonnumeric.star", "particle 7: rlnDefocusU is 'abc', not a number"),
    "9-pickle-dict-as-ctf": ("convert {d}/sim/particles.star --ctf {d}/dict.pkl -o {d}/x.star", "found a dict"),
    "9-poses-as-ctf": ("convert {d}/sim/particles.star --ctf {d}/sim/gt_poses.pkl -o {d}/x.star", "is this a pose pickle?"),
    "9-truncated-checkpoint": ("evaluate {d}/run --checkpoint {d}/truncated.pt", "not a readable eqcryo checkpoint"),
    "9-garbage-checkpoint": ("evaluate {d}/run --checkpoint {d}/garbage.pt", "not a readable eqcryo checkpoint"),
    "9-bad-config-yaml": ("evaluate {d}/badconfig_run", "not valid YAML"),
    "9-device-cuda": ("train {d}/sim/particles.star -o {d}/newrun --steps 1 --device cuda", "no CUDA GPU"),
    "9-output-under-a-file": ("backproject {d}/sim/particles.star -o {d}/afile/map.mrc", "afile is a file, not a folder"),
    "9-batch-size-0": ("backproject {d}/sim/particles.star -o {d}/map.mrc --batch-size 0", "--batch-size: must be > 0"),
    "9-eval-n-0": ("train {d}/sim/particles.star -o {d}/newrun --steps 1 --set eval_n=0", "evaluation.n_images 0: must be >= 1"),
    "9-pad-0": ("project {d}/sim/gt_volume.mrc --poses {d}/sim/particles.star -o {d}/p.mrcs --pad 0", "--pad: must be > 0"),
    "9-downsample-D0": ("downsample {d}/sim/particles.star -D 0 -o {d}/ds.mrcs", "must be > 0"),
    "9-n-rotations-0": ("refine {d}/sim/particles.star -o {d}/r.star --n-rotations 0", "--n-rotations: must be > 0"),
    "9-fsc-plot-mrc": ("fsc {d}/sim/gt_volume.mrc {d}/sim/gt_volume.mrc --plot {d}/x.mrc", "give a .png, .pdf or .svg"),
    # 10. invalid numbers
    "10-negative-lr": ("train {d}/sim/particles.star -o {d}/newrun --steps 1 --set lr=-0.001", "optimisation.lr -0.001: must be > 0"),
    "10-negative-steps": ("train {d}/sim/particles.star -o {d}/newrun --steps -5", "--steps: must be > 0"),
    "10-zero-time-budget": ("train {d}/sim/particles.star -o {d}/newrun --time-budget 0", "--time-budget: must be > 0"),
    "10-skewed-rotations": ("backproject {d}/sim/particles.star --poses {d}/skewed_poses.pkl -o {d}/map.mrc",
                            "particle 5: not a rotation matrix"),
    "10-gt-volume-alone": ("train {d}/sim/particles.star -o {d}/newrun --steps 1 --gt-volume {d}/sim/gt_volume.mrc",
                           "give --gt-poses too"),
    # 11. folders that are not ours
    "11-train-into-users-folder": ("train {d}/sim/particles.star -o {d}/mine --steps 1", "is not a run folder"),
    "11-simulate-into-dataset": ("simulate -o {d}/sim --n 10 --box 32", "is not an empty folder"),
    # 13. messages
    "13-optics-group-repr": ("info {d}/badgroup.star", "optics group(s) [7] that data_optics lacks"),
    "13-truncated-stack": ("info {d}/truncated.mrcs", "about 146 complete section(s)"),
    "13-evaluate-no-checkpoint": ("evaluate {d}/run --checkpoint {d}/nothing.pt", "checkpoint not found"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(work, case, capsys):
    argv, expected = CASES[case]
    before = _hashes(work)
    rc = main(argv.format(d=work).split())
    err = capsys.readouterr().err
    assert rc == 2, (case, err)
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("usage:", " ")) and "%|" not in ln]
    assert len(lines) == 1 and "error:" in lines[0], err  # argparse adds only its usage lines
    assert expected in lines[0], (case, lines[0])
    assert "np.int64" not in err and "np.float64" not in err and "Traceback" not in err
    assert _hashes(work) == before, f"{case} changed files"
    assert not list(work.glob("PWNED*")), "a payload ran"


def test_a_crafted_pickle_does_not_run(work):
    from eqcryo.data.cryodrgn import read_ctf_pkl, read_pose_pkl
    from eqcryo.data.errors import InputError
    for read in (lambda p: read_pose_pkl(p, 32), read_ctf_pkl):
        with pytest.raises(InputError, match="refusing to load io.open"):
            read(work / "evil.pkl")
    assert not (work / "PWNED_pkl").exists()
    with open(work / "evil.pkl", "rb") as fh:  # the file really is a payload: plain pickle runs it
        pickle.load(fh)
    assert (work / "PWNED_pkl").exists()
    (work / "PWNED_pkl").unlink()


def test_a_crafted_checkpoint_does_not_run(work):
    from eqcryo.data.errors import InputError
    from eqcryo.training.rundir import RunDir
    with pytest.raises(InputError, match="not a readable eqcryo checkpoint"):
        RunDir(work / "run").load_checkpoint(work / "evil.pt")
    assert not (work / "PWNED_pt").exists()
    torch.load(work / "evil.pt", weights_only=False)  # the payload is real
    assert (work / "PWNED_pt").exists()
    (work / "PWNED_pt").unlink()


def test_disk_full_is_one_line(work, tmp_path, capsys, monkeypatch):
    import errno

    import eqcryo.cli.backproject as bp

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(bp, "write_volume", full)
    assert main(["backproject", str(work / "sim" / "particles.star"), "-o", str(tmp_path / "m.mrc")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert err.endswith("No space left on device") and str(tmp_path / "m.mrc") in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_run_folder_works_from_another_directory(work, tmp_path, monkeypatch, capsys):
    """5: config.yaml stores absolute paths (and the spelling given); evaluate, resume, predict and
    analyze work from another folder."""
    monkeypatch.chdir(work)
    assert main(["train", "sim/particles.star", "-o", "runs/base", "--steps", "2", "--set", "batch_size=16",
                 "--set", "eval_n=16", "--gt-poses", "sim/gt_poses.pkl", "--no-progress"]) == 0
    import yaml
    cfg = yaml.safe_load((work / "runs" / "base" / "config.yaml").read_text())
    assert cfg["data"]["particles"] == str(work / "sim" / "particles.star")
    assert cfg["output"]["given_paths"]["data.particles"] == "sim/particles.star"
    monkeypatch.chdir(work / "runs")
    assert main(["evaluate", "base"]) == 0
    assert main(["train", "--resume", "base", "--steps", "3", "--no-progress"]) == 0
    assert main(["predict", "base", "../sim/particles.star", "-o", str(tmp_path / "p.star")]) == 0
    assert main(["analyze", "base", "--outdir", str(tmp_path / "an")]) == 0
    shutil.rmtree(work / "runs")


def test_resuming_a_finished_run_adds_no_rows_and_removes_stale_temporaries(work, tmp_path):
    """12: a second --resume of a finished run logs nothing twice; a 0-byte .checkpoint.pt.* left by
    a kill during the write is removed."""
    run = tmp_path / "r"
    shutil.copytree(work / "run", run)
    (run / ".checkpoint.pt.abc123.pt").write_bytes(b"")
    rows = (run / "metrics.csv").read_text()
    steps = np.load(run / "eval_poses.npz")["steps"]
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert (run / "metrics.csv").read_text() == rows
    assert list(np.load(run / "eval_poses.npz")["steps"]) == list(steps)
    assert not list(run.glob(".checkpoint.pt.*"))


def test_a_failed_new_run_leaves_no_folder_and_a_failed_spec_no_grid(work, tmp_path, monkeypatch, capsys):
    import yaml

    import eqcryo.training.trainer as tr

    def broken(*a, **k):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(tr.Evaluator, "__call__", broken)
    with pytest.raises(RuntimeError):
        main(["train", str(work / "sim" / "particles.star"), "-o", str(tmp_path / "new"), "--steps", "1"])
    assert not (tmp_path / "new").exists()
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"seeds": [0], "models": ["d8-l2"], "steps": 1,
                                    "datasets": {"a": {"particles": str(work / "sim" / "particles.star")}}}))
    assert main(["experiment", str(spec), "-o", str(tmp_path / "exp")]) == 2
    assert "model.name 'd8-l2': expected one of" in capsys.readouterr().err
    assert not (tmp_path / "exp" / "grid.json").exists()


def test_eval_n_larger_than_a_tenth_is_said(work, tmp_path, capsys):
    """10: eval_n 32 on 300 particles used to become 30 silently."""
    assert main(["train", str(work / "sim" / "particles.star"), "-o", str(tmp_path / "r"), "--steps", "1",
                 "--set", "batch_size=16", "--set", "eval_n=32", "--no-progress"]) == 0
    assert "evaluation.n_images 32 is more than a tenth of the 300 particles; evaluating on 30" in capsys.readouterr().err
    report = (tmp_path / "r" / "report.md").read_text()
    assert "command: `eqcryo train" in report and "eqcryo 0." in report  # 13: command, version, date


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1])
def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(work, tmp_path, sig):
    """12: SIGINT (Ctrl-C), SIGTERM (a scheduler's time limit) or SIGUSR1 (Slurm's warning) during
    training ends after the current step with a checkpoint; exit 128 + the signal's number; the
    message names the signal and --resume, and the run resumes."""
    run = tmp_path / "r"
    p = subprocess.Popen([sys.executable, "-m", "eqcryo.cli.main", "train", str(work / "sim" / "particles.star"),
                          "-o", str(run), "--steps", "100000", "--set", "batch_size=16", "--set", "eval_n=16",
                          "--no-progress", "--threads", "1"], stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (run / "metrics.csv").exists() and time.time() - t0 < 60:
        time.sleep(0.2)
    time.sleep(1.0)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig, err
    assert f"interrupted ({signal.Signals(sig).name})" in err and "Traceback" not in err
    assert f"eqcryo train --resume {run}" in err and (run / "checkpoint.pt").exists()
    assert not (run / ".lock").exists()  # the lock goes with the process
    assert main(["train", "--resume", str(run), "--steps", "1", "--no-progress"]) == 0
