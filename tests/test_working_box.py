"""A stack larger than the working box: trained on its images Fourier-cropped on the fly; the
outputs say which box is which."""

from __future__ import annotations

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
                 "--set", "refinement.start_images=32", "--set", "refinement.iters=1", *TRAIN]) == 0
    assert "note: working box 64 px at 6.6 Å/px (the stack: 96 px at 4.4 Å/px" in capsys.readouterr().err
    res = yaml.safe_load((run / "config.yaml").read_text())["resolved"]
    assert (res["box"], res["input_box"]) == (64, 96)
    assert res["apix"] == pytest.approx(6.6) and res["input_apix"] == pytest.approx(4.4)
    with mrcfile.open(run / "reconstruction.mrc") as m:  # the map at the working box
        assert m.data.shape == (64, 64, 64) and float(m.voxel_size.x) == pytest.approx(6.6, abs=1e-3)
    optics = starfile.read(run / "predicted_particles.star", always_dict=True)["optics"]
    assert int(optics["rlnImageSize"][0]) == 96 and float(optics["rlnImagePixelSize"][0]) == pytest.approx(4.4)
    assert "working box: 64 px at 6.6 Å/px" in (run / "report.md").read_text()
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
