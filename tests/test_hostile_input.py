"""The second bad-input catalogue: races, changed data, one-pixel decisions, memory bombs and
signals. Every refusal: exit code 2, one line, no traceback, nothing written."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

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


@pytest.fixture(scope="module")
def trained(sim, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "--steps", "2", *TRAIN]) == 0
    return run


def _copy_sim(sim: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(sim, dest)
    return dest


@pytest.mark.slow
def test_resume_refuses_data_replaced_under_the_same_name(sim, trained, tmp_path, capsys):
    """Same file names, same N and box, other images: refused, naming the images; the run is
    untouched. The same data moved elsewhere resumes with --data, and the record follows it."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    moved = _copy_sim(sim, tmp_path / "moved")
    other = tmp_path / "other"
    simulate(SimulationConfig(n=200, box=32, apix=13.2, seed=9), other, progress=False)
    # replace the stack behind the same STAR by another data set's (same N, box, names)
    shutil.copy(other / "particles_000.mrcs", moved / "particles_000.mrcs")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(["train", "--resume", str(run), "--steps", "3", "--data", str(moved / "particles.star"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not the data" in err and "the images (a sample of 16)" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    # the real data, moved: resumes and the run's config follows it
    good = _copy_sim(sim, tmp_path / "good")
    assert main(["train", "--resume", str(run), "--steps", "3", "--data", str(good / "particles.star"),
                 "--no-progress"]) == 0
    assert str(good / "particles.star") in (run / "config.yaml").read_text()


@pytest.mark.slow
def test_resume_refuses_other_ctf_and_other_counts(sim, trained, tmp_path, capsys):
    import shutil

    import starfile

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    d = _copy_sim(sim, tmp_path / "d")
    blocks = starfile.read(d / "particles.star", always_dict=True)
    blocks["particles"]["rlnDefocusU"] = blocks["particles"]["rlnDefocusU"] + 500.0
    starfile.write(blocks, d / "particles.star")
    assert main(["train", "--resume", str(run), "--steps", "3", "--data", str(d / "particles.star"),
                 "--no-progress"]) == 2
    assert "the CTF parameters" in capsys.readouterr().err
    blocks["particles"] = blocks["particles"].iloc[:150]
    starfile.write(blocks, d / "particles.star")
    assert main(["train", "--resume", str(run), "--steps", "3", "--data", str(d / "particles.star"),
                 "--no-progress"]) == 2
    assert "the number of particles (200 then, 150 now)" in capsys.readouterr().err


def test_resume_options_that_cannot_change_a_run_are_refused(trained, capsys):
    assert main(["train", "--resume", str(trained), "--seed", "3", "--steps", "3"]) == 2
    assert "--seed cannot change a run" in capsys.readouterr().err
    assert main(["train", "x.star", "-o", "y", "--data", "z.star", "--steps", "1"]) == 2
    assert "--data: only with --resume" in capsys.readouterr().err


def _star_with_optics_twice(sim: Path, dest: Path) -> Path:
    text = (sim / "particles.star").read_text()
    head, sep, rest = text.partition("data_particles")
    lines = head.rstrip("\n").splitlines()
    row = next(line for line in reversed(lines) if line.strip() and not line.strip().startswith(("_", "loop_", "data_")))
    other = row.replace("300.0", "200.0") if "300.0" in row else row + " "
    dest.write_text("\n".join(lines + [other]) + "\n\n" + sep + rest)
    return dest


@pytest.mark.parametrize("verb", ["info --check", "convert {d}/out.star", "train"])
def test_an_optics_group_defined_twice_is_refused_with_its_lines(sim, tmp_path, capsys, verb):
    star = _star_with_optics_twice(sim, tmp_path / "twice.star")
    argv = {"info --check": ["info", str(star), "--check"],
            "convert {d}/out.star": ["convert", str(star), "-o", str(tmp_path / "out.star")],
            "train": ["train", str(star), "-o", str(tmp_path / "run"), "--steps", "1"]}[verb]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "optics group 1 is defined twice (lines" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _edited_copy(sim: Path, dest: Path, edit) -> Path:
    """A copy of the simulation whose stack is ``edit(images)`` (float32 array, changed in place)."""
    import mrcfile

    d = _copy_sim(sim, dest)
    with mrcfile.open(d / "particles_000.mrcs", mode="r+") as m:
        data = np.array(m.data, dtype=np.float32)
        edit(data)
        m.set_data(data)
    return d / "particles.star"


def _contrast_and_scale(star: Path, out: Path) -> dict:
    assert main(["train", str(star), "-o", str(out), "--steps", "1", *TRAIN]) == 0
    return yaml.safe_load((out / "config.yaml").read_text())["resolved"]


@pytest.mark.slow
@pytest.mark.parametrize("value", [-1e4, -1e30])
def test_one_hot_pixel_changes_neither_the_contrast_decision_nor_the_scale(sim, tmp_path, capsys, value):
    def hot(a):
        a[137, 5, 9] = value

    ref = _contrast_and_scale(sim / "particles.star", tmp_path / "ref")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (mrcfile's header statistics of the crafted stack overflow)
        star = _edited_copy(sim, tmp_path / "hot", hot)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow on eqcryo's way
        got = _contrast_and_scale(star, tmp_path / "run")
    # the same decision, still far from the undecided band |score| <= 3 (clean: ~40)
    assert got["contrast"]["inverted"] == ref["contrast"]["inverted"] and got["contrast"]["score"] > 10
    assert got["intensity_scale"] == pytest.approx(ref["intensity_scale"], rel=0.01)
    assert "Traceback" not in capsys.readouterr().err


def test_pure_noise_keeps_its_sign_and_says_the_decision_is_not_confident(sim, tmp_path, capsys):
    rng = np.random.default_rng(0)

    def noise(a):
        a[:] = rng.standard_normal(a.shape).astype(np.float32)

    got = _contrast_and_scale(_edited_copy(sim, tmp_path / "noise", noise), tmp_path / "run")
    assert not got["contrast"]["inverted"] and not got["contrast"]["confident"]
    assert "the contrast's sign could not be decided" in capsys.readouterr().err
    assert "LOW CONFIDENCE" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.parametrize("fill", [0.0, 3.5])
def test_a_constant_stack_is_refused_before_anything_is_written(sim, tmp_path, capsys, fill):
    def const(a):
        a[:] = fill

    star = _edited_copy(sim, tmp_path / "c", const)
    assert main(["train", str(star), "-o", str(tmp_path / "run"), "--steps", "1", *TRAIN]) == 2
    err = capsys.readouterr().err
    assert "the images are constant" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("which", ["a", "b", "mask"])
def test_fsc_plot_never_overwrites_an_input(sim, tmp_path, capsys, which):
    """An MRC named .png given as a map (or mask) and as --plot: refused, the file unchanged."""
    import shutil

    files = {k: tmp_path / f"{k}.png" for k in ("a", "b", "mask")}
    for f in files.values():
        shutil.copy(sim / "gt_volume.mrc", f)
    before = files[which].read_bytes()
    assert main(["fsc", str(files["a"]), str(files["b"]), "--mask", str(files["mask"]),
                 "--plot", str(files[which])]) == 2
    assert "refusing to overwrite the input file" in capsys.readouterr().err
    assert files[which].read_bytes() == before


def test_fsc_json_prints_float32_values_at_their_precision(sim, capsys):
    assert main(["fsc", str(sim / "gt_volume.mrc"), str(sim / "gt_volume.mrc"), "--json"]) == 0
    out = capsys.readouterr().out
    d = json.loads(out)
    assert d["resolution_0.5"] == 26.4  # Nyquist of 13.2 Å/px, printed as such
    assert "26.399999" not in out and "13.199999" not in out


@pytest.mark.slow
def test_a_pose_pickle_of_shared_references_is_refused_under_a_memory_limit(sim, tmp_path):
    """308 bytes that unpickle to 10^12 floats through shared nested lists: refused in one line,
    under a 4 GB address-space limit, within 60 s (it used to build 7.5 GB before a MemoryError)."""
    import pickle
    import resource

    rot: object = 0.0
    for _ in range(12):  # 10^12 floats, one list of ten per level
        rot = [rot] * 10
    bomb = tmp_path / "bomb.pkl"
    bomb.write_bytes(pickle.dumps((rot, [[0.0, 0.0]] * 200)))
    assert bomb.stat().st_size < 1000

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "eqcryo.cli.main", "convert", str(bomb), "--box", "32", "-o",
                        str(tmp_path / "out.star")], capture_output=True, text=True, timeout=60, preexec_fn=limit)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "would expand to more than 1e+09 numbers" in r.stderr and "Traceback" not in r.stderr
    assert time.time() - t0 < 60 and not (tmp_path / "out.star").exists()


@pytest.mark.parametrize("name", ["../../../x", "/tmp/abs", "..", "a/b", ".hidden", "-flag", "a b"])
def test_an_experiment_data_set_name_cannot_leave_the_experiment_folder(sim, tmp_path, capsys, name):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"seeds": [0], "models": ["d4-l2"], "steps": 1,
                                    "datasets": {name: {"particles": str(sim / "particles.star")}}}))
    work = tmp_path / "deep" / "er"
    work.mkdir(parents=True)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert main(["experiment", str(spec), "-o", str(work / "exp")]) == 2
    assert "names become folders under the experiment folder" in capsys.readouterr().err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


@pytest.mark.slow
@pytest.mark.parametrize("what", ["stack", "star", "spec"])
def test_a_fifo_is_refused_not_waited_on(sim, tmp_path, what):
    """A FIFO (or socket, or device) where a file is expected: one line, rc 2, at once (opening a
    FIFO for reading would wait for a writer forever)."""
    import shutil

    d = _copy_sim(sim, tmp_path / "d")
    if what == "stack":
        (d / "particles_000.mrcs").unlink()
        os.mkfifo(d / "particles_000.mrcs")
        argv = ["info", str(d / "particles.star"), "--check"]
    elif what == "star":
        os.mkfifo(tmp_path / "fifo.star")
        argv = ["info", str(tmp_path / "fifo.star")]
    else:
        os.mkfifo(tmp_path / "spec.yaml")
        argv = ["experiment", str(tmp_path / "spec.yaml"), "-o", str(tmp_path / "exp")]
    r = subprocess.run([sys.executable, "-m", "eqcryo.cli.main", *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "not a regular file (a FIFO, socket or device)" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    shutil.rmtree(d)


@pytest.mark.parametrize("field,dtype,message", [
    ("blob/shape", "<f4", "field blob/shape holds one number per particle; expected (2,)"),
    ("blob/psize_A", "S8", "field blob/psize_A is not numbers"),
    ("alignments3D/pose", ("<f4", (2,)), "field alignments3D/pose holds (2,) per particle; expected (3,)"),
])
def test_a_cs_file_with_a_field_of_the_wrong_shape_or_type_is_one_line(sim, tmp_path, capsys, field, dtype, message):
    n = 200
    fields = {"blob/path": "S64", "blob/idx": "<i8", "blob/shape": ("<f4", (2,)), "blob/psize_A": "<f4",
              "alignments3D/pose": ("<f4", (3,)), "alignments3D/shift": ("<f4", (2,))}
    fields[field] = dtype
    a = np.zeros(n, dtype=[(k, *(v if isinstance(v, tuple) else (v,))) for k, v in fields.items()])
    a["blob/path"] = str(sim / "particles_000.mrcs").encode()
    a["blob/idx"] = np.arange(n)
    if field != "blob/shape":
        a["blob/shape"] = 32
    if field != "blob/psize_A":
        a["blob/psize_A"] = 13.2
    else:
        a["blob/psize_A"] = b"abc"
    with open(tmp_path / "p.cs", "wb") as fh:
        np.save(fh, a)
    assert main(["info", str(tmp_path / "p.cs")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_checkpoint_with_objects_is_refused_without_torchs_advice_to_unpickle_it(trained, tmp_path, capsys):
    import shutil

    import torch

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    torch.save({"model": _Payload()}, run / "checkpoint.pt")
    assert main(["predict", str(run), str(run.parent / "x.star"), "-o", str(tmp_path / "p.star")]) == 2
    captured = capsys.readouterr()
    assert "not a readable eqcryo checkpoint (it holds objects other than tensors" in captured.err
    assert "weights_only" not in captured.err and "this must never run" not in captured.out


def test_a_file_name_with_backticks_and_html_stays_text_in_the_report(sim, tmp_path):
    import re
    import shutil

    from eqcryo.evaluation.report import md_code

    name = "a`b``<img src=x onerror=alert(1)>.star"
    d = _copy_sim(sim, tmp_path / "d")
    shutil.copy(d / "particles.star", d / name)
    assert main(["train", str(d / name), "-o", str(tmp_path / "run"), "--steps", "1", *TRAIN]) == 0
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"particles: {md_code(str(d / name))} (" in report
    # CommonMark: a code span is closed only by a run of exactly as many backticks as opened it
    span = md_code("x`y``z")
    assert span == "``` x`y``z ```" and not re.search(r"(?<!`)```(?!`)", span[3:-3])
    assert "&lt;img" in (tmp_path / "run" / "report.html").read_text()


def test_a_full_disk_at_a_checkpoint_is_one_line_naming_the_checkpoint(sim, tmp_path, monkeypatch, capsys):
    import shutil

    import eqcryo.training.rundir as rundir

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(rundir.torch, "save", full)
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 0))
    run = tmp_path / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "--steps", "2", *TRAIN]) == 2
    err = capsys.readouterr().err
    errors = [x for x in err.strip().splitlines() if "error:" in x]  # (after the training log's first line)
    assert len(errors) == 1 and f"{run / 'checkpoint.pt'}: no space left on the device" in errors[0], err
    assert "Traceback" not in err and not run.exists()  # a new run that never saved leaves nothing


def test_a_refused_write_names_the_output_not_a_hidden_temporary_file(sim, tmp_path, monkeypatch, capsys):
    import tempfile

    def denied(*a, prefix="", dir=None, **k):
        raise PermissionError(13, "Permission denied", str(Path(dir) / f"{prefix}x1y2"))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    out = tmp_path / "out.pkl"
    assert main(["convert", str(sim / "particles.star"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out}: Permission denied" in err and ".out.pkl." not in err


def test_one_ctf_rule_for_train_predict_and_backproject(sim, trained, tmp_path, capsys):
    """A bare .mrcs (no CTF): every verb that models images refuses it without --ctf or --no-ctf,
    in the same words, and takes it with --no-ctf."""
    mrcs = sim / "particles_000.mrcs"
    cases = {"train": ["train", str(mrcs), "-o", str(tmp_path / "run"), "--steps", "1", *TRAIN],
             "predict": ["predict", str(trained), str(mrcs), "-o", str(tmp_path / "p.pkl")],
             "backproject": ["backproject", str(mrcs), "--poses", str(sim / "gt_poses.pkl"), "-o",
                             str(tmp_path / "m.mrc"), "--apix", "13.2"]}
    for verb, argv in cases.items():
        assert main(argv) == 2, verb
        err = capsys.readouterr().err
        assert "no CTF parameters; give --ctf CTF.pkl, or --no-ctf for images without a CTF" in err, (verb, err)
        assert main(argv + ["--no-ctf"]) == 0, verb
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["no_ctf"] is True
    assert "- CTF: no CTF (--no-ctf)" in (tmp_path / "run" / "report.md").read_text()


@pytest.fixture(scope="module")
def crafted(sim, trained, tmp_path_factory) -> Path:
    """The second catalogue's hostile files, made once."""
    import pickle
    import shutil

    import torch

    d = tmp_path_factory.mktemp("crafted")
    _star_with_optics_twice(sim, d / "optics_twice.star")
    os.mkfifo(d / "fifo.star")
    rot: object = 0.0
    for _ in range(12):
        rot = [rot] * 10
    (d / "bomb.pkl").write_bytes(pickle.dumps((rot, [[0.0, 0.0]] * 200)))
    (d / "spec.yaml").write_text(yaml.safe_dump({"seeds": [0], "models": ["d4-l2"], "steps": 1, "datasets": {
        "../../../x": {"particles": str(sim / "particles.star")}}}))
    a = np.zeros(3, dtype=[("blob/path", "S64"), ("blob/idx", "<i8"), ("blob/shape", "<f4"), ("blob/psize_A", "S8")])
    with open(d / "scalar_shape.cs", "wb") as fh:
        np.save(fh, a)
    shutil.copy(sim / "gt_volume.mrc", d / "map.png")
    shutil.copytree(trained, d / "evil_run")
    torch.save({"model": _Payload()}, d / "evil_run" / "checkpoint.pt")
    c = _copy_sim(sim, d / "const")
    import mrcfile

    with mrcfile.open(c / "particles_000.mrcs", mode="r+") as m:
        m.set_data(np.zeros_like(m.data))
    return d


#: the second catalogue as command lines: (argv with {d} crafted files, {s} the simulation, {r} a
#: trained run, {t} a scratch folder; what the one line must say). docs/bad-input.md lists them.
HOSTILE = {
    "optics-group-twice": ("info {d}/optics_twice.star --check", "optics group 1 is defined twice (lines"),
    "fifo": ("info {d}/fifo.star", "not a regular file (a FIFO, socket or device)"),
    "pose-pickle-bomb": ("convert {d}/bomb.pkl --box 32 -o {t}/out.star", "would expand to more than 1e+09 numbers"),
    "experiment-name-escapes": ("experiment {d}/spec.yaml -o {t}/exp", "names become folders under the experiment"),
    "set-seed-nan": ("train {s}/particles.star -o {t}/run --steps 1 --set seed=.nan",
                     "optimisation.seed nan: expected a finite number"),
    "set-view-prior-nan": ("train {s}/particles.star -o {t}/run --steps 1 --set view_prior=.nan",
                           "optimisation.view_prior nan: expected a finite number"),
    "set-not-a-key": ("train {s}/particles.star -o {t}/run --steps 1 --set out=elsewhere",
                      "output.dir is set by the command line"),
    "simulate-snr-nan": ("simulate -o {t}/sim --n 10 --snr nan", "argument --snr: must be > 0, got nan"),
    "simulate-trans-std-inf": ("simulate -o {t}/sim --n 10 --trans-std inf", "must be a finite number >= 0"),
    "negative-seed": ("backproject {s}/particles.star -o {t}/m.mrc --seed -1", "argument --seed: must be >= 0"),
    "analyze-n-0": ("analyze {r} --n 0", "argument --n: must be > 0"),
    "encoder-bin-3": ("train {s}/particles.star -o {t}/run --steps 1 --set encoder_bin=3",
                      "encoder input bin 3 (model.encoder_input_bin) must divide the box 32"),
    "cs-scalar-shape": ("info {d}/scalar_shape.cs", "field blob/shape holds one number per particle"),
    "mrcs-without-ctf-train": ("train {s}/particles_000.mrcs -o {t}/run --steps 1", "no CTF parameters; give --ctf"),
    "mrcs-without-ctf-predict": ("predict {r} {s}/particles_000.mrcs -o {t}/p.pkl", "no CTF parameters; give --ctf"),
    "constant-stack": ("train {d}/const/particles.star -o {t}/run --steps 1", "the images are constant"),
    "fsc-plot-over-input": ("fsc {d}/map.png {s}/gt_volume.mrc --plot {d}/map.png", "refusing to overwrite the input"),
    "resume-with-seed": ("train --resume {r} --seed 3 --steps 3", "--seed cannot change a run"),
    "data-without-resume": ("train {s}/particles.star -o {t}/run --data {s}/particles.star --steps 1",
                            "--data: only with --resume"),
    "checkpoint-with-objects": ("predict {d}/evil_run {s}/particles.star -o {t}/p.star",
                                "it holds objects other than tensors"),
}


@pytest.mark.slow
def test_the_second_catalogue_is_one_line_exit_2_and_never_a_traceback(sim, trained, crafted, tmp_path):
    """Every case above in one process, as a user's shell would see it: exit code 2, one line on
    stderr with the expected words, no "Traceback" in any output, nothing left in the scratch folder."""
    cases = {k: argv.format(d=crafted, s=sim, r=trained, t=tmp_path).split() for k, (argv, _) in HOSTILE.items()}
    runner = (
        "import contextlib, io, json, sys, traceback\n"
        "from eqcryo.cli.main import main\n"
        "out = {}\n"
        "for name, argv in json.loads(sys.argv[1]).items():\n"
        "    o, e = io.StringIO(), io.StringIO()\n"
        "    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):\n"
        "        try:\n"
        "            rc = main(argv)\n"
        "        except BaseException:\n"
        "            rc = -1\n"
        "            e.write(traceback.format_exc())\n"
        "    out[name] = [rc, o.getvalue(), e.getvalue()]\n"
        "print(json.dumps(out))\n")
    r = subprocess.run([sys.executable, "-c", runner, json.dumps(cases)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    for name, (rc, out, err) in results.items():
        assert "Traceback" not in out + err, (name, err)
        assert rc == 2, (name, rc, err)
        lines = [x for x in err.strip().splitlines() if not x.startswith(("note:", "warning:"))]
        assert len(lines) == 1 and HOSTILE[name][1] in lines[0], (name, err)
    assert list(tmp_path.iterdir()) == []  # no refusal left a folder or file behind


@pytest.mark.slow
def test_a_30px_stack_without_ctf_trains_end_to_end(tmp_path, capsys):
    """cryoDRGN's toy set has this shape (30 px, a bare .mrcs, no CTF): the default recipe bins the
    encoder's input by 2, which would give it an odd 15 px image; it uses 30 px instead, and says so."""
    simulate(SimulationConfig(n=120, box=30, apix=15.0, seed=2, ctf=False), tmp_path / "toy", progress=False)
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "toy" / "particles_000.mrcs"), "-o", str(run), "--no-ctf", "--apix", "15",
                 "--steps", "3", "--set", "batch_size=16", "--set", "eval_n=12", "--no-progress"]) == 0
    assert "would give the encoder an odd 15 px image; using 1" in capsys.readouterr().err
    assert (run / "reconstruction.mrc").exists() and (run / "predicted_particles.star").exists()
    assert main(["predict", str(run), str(tmp_path / "toy" / "particles_000.mrcs"), "-o", str(tmp_path / "p.star")]) == 0
    assert (tmp_path / "p.star").exists()  # (the run's rule: no CTF, so none is asked of new particles)


@pytest.mark.parametrize("apix,box,message", [(0.1, 32, "pixel size 0.1 Å is outside 0.3–20 Å"),
                                              (25.0, 32, "pixel size 25 Å is outside 0.3–20 Å"),
                                              (13.2, 20, "box 20 px; eqcryo trains on boxes of at least 24 px")])
def test_an_absurd_pixel_size_or_a_tiny_box_is_refused_before_anything_is_written(tmp_path, capsys, apix, box,
                                                                                   message):
    simulate(SimulationConfig(n=60, box=box, apix=13.2 * 32 / box, seed=1, ctf=False), tmp_path / "s",
             progress=False)  # (the molecule fits the box)
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "s" / "particles_000.mrcs"), "-o", str(run), "--no-ctf", "--apix", str(apix),
                 "--steps", "1", "--set", "batch_size=16"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not run.exists()
