"""The command line: help texts, info, project (vs RELION), fsc, downsample."""

import json
import subprocess
import sys

import mrcfile
import numpy as np
import pytest
import torch
from helpers import gaussian_blobs

from eqcryo.cli.main import VERBS, main
from eqcryo.data.mrc import read_volume, write_volume
from eqcryo.physics.lattice import fourier_crop_3d


def test_help_lists_every_verb_and_each_verb_has_an_example(capsys):
    out = subprocess.run([sys.executable, "-m", "eqcryo.cli.main", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for v in VERBS:  # in-process: 13 more interpreters importing torch took 40 s
        assert v in out.stdout
        assert main([v, "--help"]) == 0
        h = capsys.readouterr().out
        assert "example:" in h and f"eqcryo {v}" in h, v


def test_info_volume_and_stack(tmp_path, capsys):
    write_volume(tmp_path / "v.mrc", np.zeros((8, 8, 8), np.float32), 2.0)
    assert main(["info", str(tmp_path / "v.mrc"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["kind"] == "volume" and s["box_px"] == 8 and s["apix_angstrom"] == 2.0


def test_project_verb_matches_relion(shared_data, tmp_path):
    vol = torch.from_numpy(np.load(shared_data / "relion_project" / "clean70SRibosome_vol.npy")).double()
    write_volume(tmp_path / "v.mrc", fourier_crop_3d(vol, 64).float().numpy(), 1.0)
    star = shared_data / "relion_project" / "rln_proj_64_shifted.star"
    assert main(["project", str(tmp_path / "v.mrc"), "--poses", str(star), "-o", str(tmp_path / "p.mrcs")]) == 0
    ours = mrcfile.read(tmp_path / "p.mrcs").astype(np.float64)
    ref = mrcfile.read(shared_data / "relion_project" / "rln_proj_64_shifted.mrcs").astype(np.float64)

    def n(x):
        x = x - x.mean((-2, -1), keepdims=True)
        return x / np.linalg.norm(x, axis=(-2, -1), keepdims=True)
    assert np.linalg.norm(n(ours) - n(ref), axis=(-2, -1)).max() < 0.01


def test_fsc_verb_json_and_plot(tmp_path, capsys):
    v = gaussian_blobs(24, [(2, 1, -3), (-4, 2, 1)], [2.0, 3.0]).float().numpy()
    write_volume(tmp_path / "a.mrc", v, 2.0)
    write_volume(tmp_path / "b.mrc", v, 2.0)
    assert main(["fsc", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc"), "--json", "--plot", str(tmp_path / "f.png")]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["resolution_0.5"] == pytest.approx(4.0) and min(d["fsc"]) > 0.999
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_downsample_volume_and_stack(tmp_path):
    v = gaussian_blobs(32, [(2, 1, -3)], [3.0]).float().numpy()
    write_volume(tmp_path / "a.mrc", v, 1.5)
    assert main(["downsample", str(tmp_path / "a.mrc"), "-D", "16", "-o", str(tmp_path / "b.mrc")]) == 0
    b, apix = read_volume(tmp_path / "b.mrc")
    assert b.shape == (16, 16, 16) and apix == pytest.approx(3.0)
    assert abs(b.sum() * 8 / v.sum() - 1) < 1e-4  # same mass per physical volume
    with mrcfile.new(tmp_path / "s.mrcs") as m:
        m.set_data(v[8:12].copy())
        m.voxel_size = 1.5
    assert main(["downsample", str(tmp_path / "s.mrcs"), "-D", "16", "-o", str(tmp_path / "t.mrcs"),
                 "--out-star", str(tmp_path / "t.star")]) == 0
    from eqcryo.data import load_particles
    t = load_particles(tmp_path / "t.star")
    assert t.n == 4 and t.box == 16 and t.pixel_size() == pytest.approx(3.0)
    assert t.images.read([3]).shape == (1, 16, 16)


def test_fsc_cannot_lie_about_sign_or_hand(tmp_path, capsys):
    """A map against its negative: no resolution (it used to print 0.02 Å, finer than Nyquist),
    the reason, and the contrast inversion that makes them agree; against its mirror image: the
    hand."""
    from eqcryo.physics.projection import flip_hand
    v = gaussian_blobs(32, [(4, 1, -3), (-5, 3, 2), (1, -6, 4)], [3.5, 4.0, 3.0], [1.0, 0.7, 1.3])
    write_volume(tmp_path / "v.mrc", v.float().numpy(), 2.0)
    write_volume(tmp_path / "neg.mrc", (-v).float().numpy(), 2.0)
    write_volume(tmp_path / "mirror.mrc", flip_hand(v).float().numpy(), 2.0)
    assert main(["fsc", str(tmp_path / "v.mrc"), str(tmp_path / "neg.mrc")]) == 0
    out = capsys.readouterr().out
    assert "resolution at FSC 0.5:   none (the maps are anticorrelated" in out and "inverted?" in out
    assert "with the contrast of A inverted the maps agree: resolution at FSC 0.5 4.00 Å" in out
    assert main(["fsc", str(tmp_path / "mirror.mrc"), str(tmp_path / "v.mrc"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["resolution_0.5"] > 20  # a mirror image agrees only at low resolution
    assert d["corrected"]["operation"] == "hand of A flipped (z -> -z)" and d["corrected"]["resolution_0.5"] == 4.0
    assert main(["fsc", str(tmp_path / "v.mrc"), str(tmp_path / "v.mrc")]) == 0
    out = capsys.readouterr().out
    assert "resolution at FSC 0.5:   4.00 Å" in out and "agree" not in out


def test_resolution_is_never_finer_than_nyquist():
    from eqcryo.physics.fsc import resolution_at
    f = np.arange(17) / (32 * 2.0)
    assert resolution_at(f, -np.ones(17), 0.5) is None  # starts below: no reading (was 0.02 Å-like)
    assert resolution_at(f, np.ones(17), 0.5) == pytest.approx(4.0)  # never crosses: the Nyquist bound
    c = np.linspace(1, -1, 17)
    assert 4.0 <= resolution_at(f, c, 0.143) < 64
