"""The sign of the contrast: an image stack multiplied by -1 is detected from the data
alone (noiseless and SNR 0.5), training on it with defaults gives a map that correlates
positively with the true map, and the decision is recorded."""

from __future__ import annotations

import numpy as np
import pytest
import starfile
import yaml

from eqcryo.cli.main import main
from eqcryo.data.dataset import ParticleDataset
from eqcryo.data.io import load_particles
from eqcryo.data.mrc import ImageStack, read_volume, write_stack
from eqcryo.data.simulate import SimulationConfig, simulate
from eqcryo.reconstruction.contrast import check_contrast


def _inverted_copy(sim, out):
    """The simulated particles with every image multiplied by -1 (the STAR points at the copy)."""
    out.mkdir()
    st = ImageStack(sim / "particles_000.mrcs")
    write_stack(out / "particles_000.mrcs", -st.read(np.arange(len(st))), 13.2)
    blocks = starfile.read(sim / "particles.star", always_dict=True)
    starfile.write(blocks, out / "particles.star")
    return out / "particles.star"


@pytest.fixture(scope="module", params=[None, 0.5], ids=["noiseless", "snr0.5"])
def data(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("contrast")
    simulate(SimulationConfig(n=300, box=32, apix=13.2, seed=4, snr=request.param), d / "sim", progress=False)
    return d / "sim", _inverted_copy(d / "sim", d / "inv")


def test_an_inverted_stack_is_detected(data):
    sim, inv = data
    normal = check_contrast(ParticleDataset(load_particles(sim / "particles.star")))
    flipped = check_contrast(ParticleDataset(load_particles(inv)))
    assert not normal.inverted and normal.confident and normal.score > 3
    assert flipped.inverted and flipped.confident and flipped.score < -3


def _map_correlation(run, sim) -> float:
    a, b = read_volume(run / "reconstruction.mrc")[0].ravel(), read_volume(sim / "gt_volume.mrc")[0].ravel()
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.slow
def test_training_on_inverted_data_with_defaults_gives_a_positive_map(data, tmp_path, capsys):
    sim, inv = data
    args = ["--steps", "20", "--set", "batch_size=32", "--no-progress"]
    assert main(["train", str(inv), "-o", str(tmp_path / "auto")] + args) == 0
    assert "contrast is inverted" in capsys.readouterr().err
    cfg = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    assert cfg["resolved"]["contrast"]["inverted"] and cfg["resolved"]["intensity_scale"] < 0
    assert "contrast: inverted (images multiplied by -1), decided from the data" in \
        (tmp_path / "auto" / "report.md").read_text()
    assert _map_correlation(tmp_path / "auto", sim) > 0.05
    # the check can fail: the same data taken as they are give a negative map
    assert main(["train", str(inv), "-o", str(tmp_path / "kept"), "--invert-contrast", "no"] + args) == 0
    assert _map_correlation(tmp_path / "kept", sim) < -0.05
