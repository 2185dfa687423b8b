"""A stack larger than the working box: trained on its images Fourier-cropped on the fly; the
outputs say which box is which."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import pytest
import starfile
import yaml

from eqcryo.cli.main import main
from eqcryo.data.simulate import SimulationConfig, simulate

TRAIN = ["--set", "batch_size=16", "--set", "eval_n=16", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def sim96(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("wb")
    simulate(SimulationConfig(n=160, box=96, apix=4.4, seed=3, snr=2.0), d / "sim", progress=False)
    return d / "sim"


@pytest.mark.slow
def test_a_96px_stack_trains_at_64px_and_its_outputs_describe_both(sim96, tmp_path, capsys):
    run = tmp_path / "run"
    # a projection-matching round after 32 images: the search reads the working box too
    assert main(["train", str(sim96 / "particles.star"), "-o", str(run), "--steps", "3", "--gt-poses",
                 str(sim96 / "gt_poses.pkl"), "--gt-volume", str(sim96 / "gt_volume.mrc"),
                 "--set", "refinement.start_images=32", "--set", "refinement.iters=1",
                 "--set", "refinement.finish_max_iters=1", *TRAIN]) == 0
    err = capsys.readouterr().err
    assert "note: working box 64 px at 6.6 Å/px (the stack: 96 px at 4.4 Å/px" in err
    for stage in ("ab initio", "gold-standard finish", "outputs"):  # one line at each start and end
        assert f"stage {stage}: start" in err and f"stage {stage}: end" in err
    res = yaml.safe_load((run / "config.yaml").read_text())["resolved"]
    assert (res["box"], res["input_box"]) == (64, 96)
    assert res["apix"] == pytest.approx(6.6) and res["input_apix"] == pytest.approx(4.4)
    for name in ("reconstruction.mrc", "half1.mrc", "half2.mrc", "mask.mrc"):  # the finish: the stack's box
        with mrcfile.open(run / name) as m:
            assert m.data.shape == (96, 96, 96) and float(m.voxel_size.x) == pytest.approx(4.4, abs=1e-3)
    star = starfile.read(run / "predicted_particles.star", always_dict=True)
    optics, parts = star["optics"], star["particles"]
    assert int(optics["rlnImageSize"][0]) == 96 and float(optics["rlnImagePixelSize"][0]) == pytest.approx(4.4)
    assert sorted(set(parts["rlnRandomSubset"])) == [1, 2]  # the half-sets, recorded
    halves = json.loads((run / "fsc_halfmaps.json").read_text())
    assert halves["corrected"]["box"] == 96 and halves["n_half1"] + halves["n_half2"] == 160
    summary = json.loads((run / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["ab initio", "gold-standard finish", "outputs"]
    report = (run / "report.md").read_text()
    assert "working box: 64 px at 6.6 Å/px" in report and "resolution without ground truth" in report
    assert "phase randomisation" in report
    assert (run / "refinement.json").exists()
    # the stack itself, for new particles: read at the working box by predict
    assert main(["predict", str(run), str(sim96 / "particles.star"), "-o", str(tmp_path / "p.star")]) == 0


@pytest.mark.slow
def test_the_working_box_is_a_key_and_is_checked(sim96, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(sim96 / "particles.star"), "-o", str(run), "--steps", "1",
                 "--set", "data.working_box=96", *TRAIN]) == 0
    res = yaml.safe_load((run / "config.yaml").read_text())["resolved"]
    assert res["box"] == res["input_box"] == 96  # (no crop: the stack's own box)
    for value, message in (("25", "expected an even box of at least 24 px"), ("128", "larger than the stack's 96 px")):
        assert main(["train", str(sim96 / "particles.star"), "-o", str(tmp_path / "x"), "--steps", "1",
                     "--set", f"data.working_box={value}", *TRAIN]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_time_budget_keeps_a_share_for_the_finish(sim96, tmp_path):
    from eqcryo.training.config import make_config
    from eqcryo.training.trainer import Trainer

    def stop_budget(**sets):
        cfg = make_config("default", {"refinement": sets}, particles=str(sim96 / "particles.star"),
                          out=str(tmp_path / f"r{len(sets)}{sets.get('finish', '')}"), time_budget=400.0, threads=1)
        return Trainer(cfg).stop.time_budget
    assert stop_budget() == pytest.approx(300.0)  # the finish's 25% is kept out of ab initio's training time
    assert stop_budget(finish_budget_fraction=0.5) == pytest.approx(200.0)
    assert stop_budget(finish="no") == pytest.approx(400.0)
