"""Simulator and backprojection: ground truth recovered, SNR as defined, paired streams,
chunk-independence, byte-identical reruns, uniform poses."""

import hashlib
import json
import math
import pickle

import mrcfile
import numpy as np
import pytest
from scipy import stats

from eqcryo.cli.main import main
from eqcryo.data import InputError, load_particles
from eqcryo.data.simulate import RECIPES, SimulationConfig, sample_parameters, simulate
from eqcryo.data.structure import DEFAULT_STRUCTURE, load_structure_volume, molmap


def _stack(d):
    return np.concatenate([mrcfile.read(p) for p in sorted(d.glob("particles_*.mrcs"))])


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    """The same seed, noiseless and SNR 0.5 (32 px, 600 images, the bundled 5NRL)."""
    base = tmp_path_factory.mktemp("sim")
    cfg = dict(structure=DEFAULT_STRUCTURE, n=600, box=32, apix=13.2, seed=7, chunk=250)
    simulate(SimulationConfig(**cfg), base / "clean", progress=False)
    simulate(SimulationConfig(**cfg, snr=0.5), base / "noisy", progress=False)
    return base


def test_snr_is_as_defined_and_streams_are_paired(paired):
    clean, noisy = _stack(paired / "clean").astype(np.float64), _stack(paired / "noisy").astype(np.float64)
    noise = noisy - clean
    ratio = np.mean(clean.var(axis=(1, 2)) / noise.var(axis=(1, 2)))
    assert abs(ratio / 0.5 - 1) < 0.05
    # paired: the difference is pure white noise, uncorrelated with the clean images
    assert abs(np.corrcoef(clean.ravel(), noise.ravel())[0, 1]) < 0.01
    info = json.loads((paired / "noisy" / "dataset.json").read_text())
    assert abs(info["snr_measured_mean_ratio"] - ratio) < 1e-3 * ratio
    a, b = load_particles(paired / "clean" / "particles.star"), load_particles(paired / "noisy" / "particles.star")
    np.testing.assert_array_equal(a.rotations, b.rotations)
    np.testing.assert_array_equal(a.shifts_angstrom, b.shifts_angstrom)
    for k in a.ctf:
        np.testing.assert_array_equal(a.ctf[k], b.ctf[k])


def test_images_equal_project_with_stored_parameters(paired, tmp_path):
    d = paired / "clean"
    assert main(["project", str(d / "gt_volume.mrc"), "--poses", str(d / "particles.star"), "-o",
                 str(tmp_path / "p.mrcs"), "--ctf"]) == 0
    ours, sim = mrcfile.read(tmp_path / "p.mrcs"), _stack(d)
    assert np.abs(ours - sim).max() <= 1e-5 * np.abs(sim).max()


def test_star_and_pkl_give_back_the_stored_parameters(paired):
    d = paired / "clean"
    t = load_particles(d / "particles.star")
    ref = sample_parameters(SimulationConfig(n=600, box=32, apix=13.2, seed=7))
    np.testing.assert_allclose(t.rotations, ref.rotations, atol=1e-9)
    np.testing.assert_allclose(t.shifts_angstrom, ref.shifts_angstrom, rtol=1e-9)
    for k in ref.ctf:
        np.testing.assert_allclose(t.ctf[k], ref.ctf[k], rtol=1e-9, atol=1e-9, err_msg=k)
    with open(d / "gt_poses.pkl", "rb") as fh:
        rot, trans = pickle.load(fh)
    np.testing.assert_allclose(rot, ref.rotations, atol=1e-12)
    np.testing.assert_allclose(trans * 32 * 13.2, ref.shifts_angstrom, rtol=1e-9)
    assert t.images.read([599]).shape == (1, 32, 32)


def test_poses_are_uniform_on_so3():
    t = sample_parameters(SimulationConfig(n=5000, seed=3))
    R = t.rotations
    view = R[:, 2, :]  # projection direction in the map frame: Rᵀ e_z
    assert stats.kstest(view[:, 2], "uniform", args=(-1, 2)).pvalue > 1e-3  # cos(tilt) ~ U(-1, 1)
    assert stats.kstest(np.arctan2(view[:, 1], view[:, 0]), "uniform", args=(-np.pi, 2 * np.pi)).pvalue > 1e-3
    psi = np.arctan2(R[:, 1, 2], -R[:, 0, 2])  # in-plane angle
    assert stats.kstest(psi, "uniform", args=(-np.pi, 2 * np.pi)).pvalue > 1e-3
    sh = t.shifts_angstrom
    assert abs(sh.std() / 20.0 - 1) < 0.03


def test_chunking_does_not_change_the_data(tmp_path):
    cfg = dict(n=40, box=32, apix=13.2, seed=1, snr=1.0)
    simulate(SimulationConfig(**cfg, chunk=10), tmp_path / "a", progress=False)
    simulate(SimulationConfig(**cfg, chunk=40, batch=7), tmp_path / "b", progress=False)
    assert len(list((tmp_path / "a").glob("*.mrcs"))) == 4
    np.testing.assert_array_equal(_stack(tmp_path / "a"), _stack(tmp_path / "b"))


def test_same_seed_gives_identical_bytes(tmp_path):
    cfg = dict(n=30, box=32, apix=13.2, seed=5, snr=2.0, chunk=20)
    simulate(SimulationConfig(**cfg), tmp_path / "a", progress=False)
    simulate(SimulationConfig(**cfg), tmp_path / "b", progress=False)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "dataset.json" in files and "particles_001.mrcs" in files
    for f in files:
        assert hashlib.sha256((tmp_path / "a" / f).read_bytes()).digest() == \
            hashlib.sha256((tmp_path / "b" / f).read_bytes()).digest(), f


def test_molmap_gaussian_width_and_mass():
    """A single carbon atom: a Gaussian of σ = res/(π√2), mass Z (in Z per Å³ × voxel volume)."""
    apix, res = 2.0, 8.0
    v = molmap(np.zeros((1, 3)), np.array([6]), 32, apix, res)
    assert abs(v.sum() * apix ** 3 / 6 - 1) < 1e-5
    k = (np.arange(32) - 16) * apix
    prof = v.sum(axis=(0, 1))
    var = (prof * k ** 2).sum() / prof.sum()
    assert abs(math.sqrt(var) / (res / (math.pi * math.sqrt(2))) - 1) < 0.01


def test_structure_that_does_not_fit_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="does not fit the box"):
        load_structure_volume(DEFAULT_STRUCTURE, 32, 6.6)


def test_bundled_structure_equals_the_pdb_file(shared_data):
    a = load_structure_volume(DEFAULT_STRUCTURE, 32, 13.2)
    b = load_structure_volume(shared_data / "5nrl.cif.gz", 32, 13.2)
    assert np.abs(a - b).max() < 1e-3 * np.abs(b).max()


def test_ribosome_recipe_with_the_70s_map(shared_data, tmp_path):
    assert "ribosome-snr0.5-cpu" in RECIPES and "spliceosome-noiseless-paper" in RECIPES
    assert main(["simulate", str(shared_data / "70s_ribosome_65.mrc"), "-o", str(tmp_path / "r"),
                 "--recipe", "ribosome-snr1-cpu", "--n", "20", "--no-progress"]) == 0
    t = load_particles(tmp_path / "r" / "particles.star")
    assert t.n == 20 and t.box == 64 and t.pixel_size() == pytest.approx(7.54)


def test_ctf_from_real_table(shared_data, tmp_path):
    cfg = SimulationConfig(n=50, box=32, apix=13.2, ctf_from=str(shared_data / "empiar10028_ctf.pkl"))
    t = sample_parameters(cfg)
    assert 5000 < t.ctf["defocus_u_angstrom"].mean() < 40000 and (t.ctf["voltage_kv"] == 300).all()


@pytest.mark.slow
def test_5nrl_noiseless_backprojection_reaches_nyquist(shared_data, tmp_path, capsys):
    """Simulate 5NRL (3000, 64 px, 6.6 Å), backproject with the true poses,
    FSC against the ground-truth map = 0.5 at <= 1.5 × Nyquist (19.8 Å). Measured: the FSC
    stays >= 0.94 out to Nyquist (13.2 Å)."""
    D = tmp_path / "D"
    assert main(["simulate", str(shared_data / "5nrl.cif.gz"), "-o", str(D), "--n", "3000", "--box", "64",
                 "--apix", "6.6", "--seed", "7", "--noiseless", "--no-progress"]) == 0
    assert main(["backproject", str(D / "particles.star"), "-o", str(tmp_path / "bp.mrc")]) == 0
    capsys.readouterr()
    assert main(["fsc", str(tmp_path / "bp.mrc"), str(D / "gt_volume.mrc"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["resolution_0.5"] <= 1.5 * 2 * 6.6
    assert min(d["fsc"]) > 0.8
    half = json.loads((tmp_path / "bp_fsc.json").read_text())
    assert half["n_half1"] + half["n_half2"] == 3000 and half["resolution_0.5"] <= 19.8


def test_preferred_view_follows_von_mises_fisher():
    """κ = 10: the fraction of viewing directions within θ of z is (1 − e^{−κ(1−cos θ)})/(1 − e^{−2κ})
    (0.904 at 40°, 0.26 at 10°); rotations are proper; in-plane angles stay uniform; κ None keeps
    the uniform poses (their random stream is untouched)."""
    import math

    from eqcryo.data.simulate import SimulationConfig, preferred_view_rotations, sample_parameters

    R = preferred_view_rotations(20000, 10.0, np.random.default_rng(0))
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    ang = np.degrees(np.arccos(np.clip(R[:, 2, 2], -1, 1)))
    for th in (10.0, 40.0):
        want = (1 - math.exp(-10 * (1 - math.cos(math.radians(th))))) / (1 - math.exp(-20))
        assert abs((ang < th).mean() - want) < 0.01, (th, (ang < th).mean(), want)
    psi = np.arctan2(R[:, 0, 2], R[:, 1, 2])  # where the map's z axis points in the image plane: uniform
    assert np.histogram(psi, 8)[0].min() > 0.8 * 20000 / 8
    u = sample_parameters(SimulationConfig(n=50, seed=3))
    p = sample_parameters(SimulationConfig(n=50, seed=3, preferred_view=10.0))
    assert not np.allclose(u.rotations, p.rotations)
    np.testing.assert_array_equal(u.shifts_angstrom, p.shifts_angstrom)  # other streams untouched
    assert (np.degrees(np.arccos(np.clip(p.rotations[:, 2, 2], -1, 1))) < 90).mean() > 0.9
