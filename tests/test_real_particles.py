"""Real particles: the 7 EMPIAR-10076 particles of ../shared/data/formats (RELION 3.1 STAR
and cryoSPARC .cs of the same images, 320 px, 1.31 Å/px, no poses) through info, downsample,
predict (a model trained on a small simulation at the same box) and backproject from the
predicted poses; data without poses are refused by backproject with a message; mixed optics
groups with different pixel sizes are refused by train naming the groups. Skips without the
shared data."""

import mrcfile
import numpy as np
import pytest

from eqcryo.cli.main import main
from eqcryo.data.io import load_particles


@pytest.fixture(scope="module")
def trained_32(tmp_path_factory):
    """A tiny d4-l2 run at 32 px (a few steps: the point is the plumbing, not the poses)."""
    d = tmp_path_factory.mktemp("run32")
    assert main(["simulate", "builtin:5nrl", "-o", str(d / "sim"), "--n", "96", "--box", "32", "--apix", "13.1",
                 "--seed", "1", "--snr", "1"]) == 0
    assert main(["train", str(d / "sim" / "particles.star"), "-o", str(d / "run"), "--steps", "3",
                 "--set", "batch_size=16", "--set", "eval_n=16", "--no-progress"]) == 0
    return d / "run"


@pytest.mark.parametrize("name", ["empiar_10076_7.star", "empiar_10076_7.cs"])
def test_real_particles_info_downsample_predict_backproject(shared_data, tmp_path, trained_32, name, capsys):
    src = shared_data / "formats" / name
    before = {p.name: p.read_bytes() for p in (shared_data / "formats").iterdir() if p.name.startswith("empiar")}
    assert main(["info", str(src), "--check"]) == 0
    out = capsys.readouterr().out
    assert "320" in out
    # no poses in these files: backproject says so instead of reconstructing from zeros
    assert main(["backproject", str(src), "-o", str(tmp_path / "nope.mrc")]) == 2
    err = capsys.readouterr().err
    assert "pose" in err.lower() and name in err
    assert not (tmp_path / "nope.mrc").exists()
    # 320 -> 32 px (13.1 Å/px): the box of the trained run
    ds = tmp_path / "ds.mrcs"
    assert main(["downsample", str(src), "-D", "32", "-o", str(ds), "--out-star", str(tmp_path / "ds.star")]) == 0
    t = load_particles(tmp_path / "ds.star")
    assert (t.n, t.box) == (7, 32) and np.allclose(t.apix, 1.31 * 10, rtol=1e-4)
    x = t.images.read(np.arange(7))
    assert np.isfinite(x).all() and (x.std(axis=(1, 2)) > 0).all()  # no blank images
    assert main(["predict", str(trained_32), str(tmp_path / "ds.star"), "-o", str(tmp_path / "pred.star")]) == 0
    p = load_particles(tmp_path / "pred.star")
    assert p.n == 7 and p.rotations is not None
    np.testing.assert_allclose(p.rotations @ p.rotations.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (7, 3, 3)),
                               atol=1e-5)
    np.testing.assert_allclose(p.ctf["defocus_u_angstrom"], t.ctf["defocus_u_angstrom"], rtol=1e-5)  # CTF kept
    capsys.readouterr()
    assert main(["backproject", str(tmp_path / "pred.star"), "-o", str(tmp_path / "bp.mrc"), "--no-half-maps"]) == 0
    with mrcfile.open(tmp_path / "bp.mrc") as m:
        v = m.data.copy()
        assert v.shape == (32, 32, 32) and abs(float(m.voxel_size.x) - 13.1) < 1e-2
    assert np.isfinite(v).all() and v.std() > 0
    after = {p.name: p.read_bytes() for p in (shared_data / "formats").iterdir() if p.name.startswith("empiar")}
    assert after == before  # inputs untouched


def test_mixed_pixel_sizes_are_refused_naming_the_groups(tmp_path, capsys):
    """Two optics groups (13.1 and 14.0 Å/px) in one STAR file: train refuses before reading an
    image, naming each group's pixel size; the input is untouched and no run folder is left."""
    import starfile

    assert main(["simulate", "builtin:5nrl", "-o", str(tmp_path / "sim"), "--n", "80", "--box", "32",
                 "--apix", "13.1", "--seed", "0"]) == 0
    d = starfile.read(tmp_path / "sim" / "particles.star", always_dict=True)
    optics, parts = d["optics"], d["particles"]
    second = optics.iloc[[0]].copy()
    second["rlnOpticsGroup"], second["rlnOpticsGroupName"], second["rlnImagePixelSize"] = 2, "opticsGroup2", 14.0
    d["optics"] = optics._append(second, ignore_index=True) if hasattr(optics, "_append") else \
        __import__("pandas").concat([optics, second], ignore_index=True)
    parts.loc[40:, "rlnOpticsGroup"] = 2
    src = tmp_path / "sim" / "mixed.star"
    starfile.write(d, src)
    before = src.read_bytes()
    capsys.readouterr()
    assert main(["train", str(src), "-o", str(tmp_path / "r"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "different pixel sizes" in err and "1: 13.1 Å" in err and "2: 14 Å" in err, err
    assert not (tmp_path / "r").exists() and src.read_bytes() == before


def test_a_runs_predicted_star_finds_its_images(trained_32, tmp_path, monkeypatch):
    """RUN/predicted_particles.star names its images relative to the run folder (the training
    star's names are relative to *its* folder), so `eqcryo refine RUN/predicted_particles.star`
    works from anywhere."""
    monkeypatch.chdir(tmp_path)
    pred = load_particles(trained_32 / "predicted_particles.star")
    src = load_particles(trained_32.parent / "sim" / "particles.star")
    np.testing.assert_array_equal(pred.images.read([0, 5]), src.images.read([0, 5]))
    assert all(not str(n).split("@", 1)[1].startswith("/") for n in pred.image_names[:3])
