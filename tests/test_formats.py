"""Formats: cryoDRGN reproduction, every real file read, round trips, and bad input."""

import pickle

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from eqcryo.cli.main import main
from eqcryo.data import InputError, load_particles, save_metadata
from eqcryo.data.mrc import ImageStack, read_volume, write_stack, write_volume
from eqcryo.physics.rotations import random_rotations


def _pkl(p):
    with open(p, "rb") as fh:
        return pickle.load(fh)


# --------------------------------------------------------------------------- cryoDRGN parity
def test_convert_relion30_star_reproduces_cryodrgn(shared_data, tmp_path, capsys):
    F = shared_data / "formats"
    rc = main(["convert", str(F / "FinalRefinement-OriginalParticles-PfCRT.star"), "-o", str(tmp_path / "poses.pkl"),
               "--ctf-out", str(tmp_path / "ctf.pkl"), "--box", "300", "--apix", "1.035"])
    assert rc == 0
    rot, trans = _pkl(tmp_path / "poses.pkl")
    rot_ref, trans_ref = _pkl(F / "pose.star.pkl")
    np.testing.assert_allclose(rot, rot_ref, atol=1e-5)
    np.testing.assert_allclose(trans, trans_ref, atol=1e-5)
    np.testing.assert_allclose(_pkl(tmp_path / "ctf.pkl"), _pkl(F / "ctf1.pkl"), atol=1e-5, rtol=1e-6)


def test_convert_cryosparc_reproduces_cryodrgn(shared_data, tmp_path):
    F = shared_data / "formats"
    assert main(["convert", str(F / "cryosparc_P12_J24_001_particles.cs"), "-o", str(tmp_path / "poses.pkl"),
                 "--ctf-out", str(tmp_path / "ctf.pkl")]) == 0
    rot, trans = _pkl(tmp_path / "poses.pkl")
    rot_ref, trans_ref = _pkl(F / "pose.cs.pkl")
    assert rot.shape == (2019, 3, 3)
    np.testing.assert_allclose(rot, rot_ref, atol=1e-5)
    np.testing.assert_allclose(trans, trans_ref, atol=1e-5)
    np.testing.assert_allclose(_pkl(tmp_path / "ctf.pkl"), _pkl(F / "ctf2.pkl"), atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("name,n,box,groups", [
    ("relion31.star", 5, 256, 1), ("relion31.v2.star", 5, 256, 1), ("relion31.6opticsgroups.star", 139, 196, 6),
    ("relion5.star", 17, 448, 1), ("empiar_10076_7.star", 7, 320, 1), ("empiar_10076_7.cs", 7, 320, 1),
    ("cryosparc_J2_particles_exported.cs", 22, 300, 1), ("relion31.mrcs", 5, 256, 1), ("empiar_10076_7.mrc", 7, 320, 1),
])
def test_every_real_file_is_read(shared_data, name, n, box, groups):
    t = load_particles(shared_data / "formats" / name)
    assert (t.n, t.box, len(np.unique(t.optics_group))) == (n, box, groups)


def test_six_optics_groups_carry_their_own_optics(shared_data):
    t = load_particles(shared_data / "formats" / "relion31.6opticsgroups.star")
    optics = starfile.read(shared_data / "formats" / "relion31.6opticsgroups.star")["optics"]
    for _, row in optics.iterrows():
        sel = t.optics_group == row.rlnOpticsGroup
        assert sel.any()
        np.testing.assert_allclose(t.apix[sel], row.rlnImagePixelSize)
        np.testing.assert_allclose(t.ctf["cs_mm"][sel], row.rlnSphericalAberration)
    with pytest.raises(InputError, match="different pixel sizes"):
        t.pixel_size()


def test_real_images_and_metadata_agree(shared_data):
    a = load_particles(shared_data / "formats" / "empiar_10076_7.star")
    b = load_particles(shared_data / "formats" / "empiar_10076_7.cs")
    a.images.validate(check_pixels=True)
    np.testing.assert_array_equal(a.images.read([0, 6]), b.images.read([0, 6]))
    np.testing.assert_allclose(a.ctf["defocus_u_angstrom"], b.ctf["defocus_u_angstrom"], rtol=1e-6)
    np.testing.assert_allclose(a.apix, b.apix, rtol=1e-5)


# --------------------------------------------------------------------------- round trips
def test_star_round_trip_preserves_every_field(shared_data, tmp_path):
    for name in ("relion31.6opticsgroups.star", "relion5.star", "relion31.star"):
        src = shared_data / "formats" / name
        t = load_particles(src)
        out = tmp_path / name
        save_metadata(out, t)
        a = starfile.read(src, always_dict=True)
        b = starfile.read(out, always_dict=True)
        for block in ("particles", "optics"):
            A, B = a[block], b[block]
            assert set(A.columns) <= set(B.columns), set(A.columns) - set(B.columns)
            for c in A.columns:
                if A[c].dtype.kind in "fi":
                    np.testing.assert_allclose(B[c].to_numpy(float), A[c].to_numpy(float), rtol=1e-9, err_msg=c)
                else:
                    assert (B[c].astype(str).to_numpy() == A[c].astype(str).to_numpy()).all(), c
        t2 = load_particles(out)
        np.testing.assert_allclose(t2.rotations, t.rotations, atol=1e-12)
        np.testing.assert_allclose(t2.shifts_angstrom, t.shifts_angstrom)


def test_relion30_star_to_31_keeps_values(shared_data, tmp_path):
    src = shared_data / "formats" / "FinalRefinement-OriginalParticles-PfCRT.star"
    t = load_particles(src, box=300)
    save_metadata(tmp_path / "o.star", t)
    t2 = load_particles(tmp_path / "o.star")
    np.testing.assert_allclose(t2.shifts_angstrom, t.shifts_angstrom)
    np.testing.assert_allclose(t2.apix, 1.035)
    for k in t.ctf:
        np.testing.assert_allclose(t2.ctf[k], t.ctf[k])


def test_pkl_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    rot = random_rotations(20, g).numpy()
    trans = np.random.default_rng(0).normal(size=(20, 2)) * 0.05
    ctf = np.column_stack([np.full(20, 64), np.full(20, 2.5), np.linspace(1e4, 2e4, 20), np.linspace(1.1e4, 2.1e4, 20),
                           np.linspace(-50, 50, 20), np.full(20, 300), np.full(20, 2.7), np.full(20, 0.1),
                           np.zeros(20)]).astype(np.float32)
    with open(tmp_path / "p.pkl", "wb") as fh:
        pickle.dump((rot, trans), fh)
    with open(tmp_path / "c.pkl", "wb") as fh:
        pickle.dump(ctf, fh)
    assert main(["convert", str(tmp_path / "p.pkl"), "--ctf", str(tmp_path / "c.pkl"), "-o", str(tmp_path / "x.star")]) == 0
    assert main(["convert", str(tmp_path / "x.star"), "-o", str(tmp_path / "p2.pkl"), "--ctf-out", str(tmp_path / "c2.pkl")]) == 0
    r2, t2 = _pkl(tmp_path / "p2.pkl")
    np.testing.assert_allclose(r2, rot, atol=1e-9)
    np.testing.assert_allclose(t2, trans, atol=1e-9)
    np.testing.assert_array_equal(_pkl(tmp_path / "c2.pkl"), ctf)


def test_mrc_write_read_keeps_voxel_size(tmp_path):
    v = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)
    write_volume(tmp_path / "v.mrc", v, 3.3)
    v2, apix = read_volume(tmp_path / "v.mrc")
    np.testing.assert_array_equal(v, v2)
    assert apix == pytest.approx(3.3)
    write_stack(tmp_path / "s.mrcs", v, 1.5)
    st = ImageStack(tmp_path / "s.mrcs")
    assert len(st) == 8 and st.apix == pytest.approx(1.5)
    assert list(tmp_path.glob(".*")) == []  # no temp files left behind
    import os
    import stat
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "v.mrc").st_mode) == 0o666 & ~umask  # not mkstemp's 0600


# --------------------------------------------------------------------------- bad input
@pytest.fixture
def small_set(tmp_path):
    """A 4-image stack and a STAR file that points at it."""
    imgs = np.random.default_rng(1).normal(size=(4, 16, 16)).astype(np.float32)
    write_stack(tmp_path / "p.mrcs", imgs, 2.0)
    parts = pd.DataFrame({"rlnImageName": [f"{i + 1}@p.mrcs" for i in range(4)], "rlnOpticsGroup": 1,
                          "rlnDefocusU": 1e4, "rlnDefocusV": 1e4, "rlnDefocusAngle": 0.0})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g1"], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [2.0], "rlnImageSize": [16], "rlnImageDimensionality": [2]})
    starfile.write({"optics": optics, "particles": parts}, tmp_path / "p.star")
    return tmp_path, optics, parts


def _write_star(path, optics, parts):
    starfile.write({"optics": optics, "particles": parts}, path)
    return path


def test_bad_truncated_mrc(small_set):
    d, _, _ = small_set
    data = (d / "p.mrcs").read_bytes()
    (d / "p.mrcs").write_bytes(data[: len(data) - 700])
    with pytest.raises(InputError, match=r"p\.mrcs.*truncated"):
        load_particles(d / "p.star").images.validate()


def test_bad_stack_shorter_than_star(small_set):
    d, optics, parts = small_set
    parts = pd.concat([parts, parts.iloc[:1].assign(rlnImageName="5@p.mrcs")], ignore_index=True)
    t = load_particles(_write_star(d / "long.star", optics, parts))
    with pytest.raises(InputError, match=r"particle 4 .*image 5 .*holds only 4"):
        t.images.validate()


def test_bad_index_out_of_range_on_read(small_set):
    d, optics, parts = small_set
    t = load_particles(_write_star(d / "bad.star", optics, parts.assign(rlnImageName=["1@p.mrcs", "9@p.mrcs", "2@p.mrcs", "3@p.mrcs"])))
    with pytest.raises(InputError, match=r"p\.mrcs: particle 1 .*image 9"):
        t.images.get(1)
    with pytest.raises(InputError, match="must be >= 1"):
        load_particles(_write_star(d / "zero.star", optics, parts.assign(rlnImageName="0@p.mrcs")))


def test_bad_missing_image_file(small_set):
    d, optics, parts = small_set
    t = load_particles(_write_star(d / "m.star", optics, parts.assign(rlnImageName="1@nope.mrcs")))
    with pytest.raises(InputError, match=r"nope\.mrcs: image file not found -- needed by particle 0"):
        t.images.validate()


def test_bad_missing_required_column(small_set):
    d, optics, parts = small_set
    with pytest.raises(InputError, match="rlnVoltage"):
        load_particles(_write_star(d / "nov.star", optics.drop(columns=["rlnVoltage"]), parts))
    with pytest.raises(InputError, match="rlnAngleTilt"):
        load_particles(_write_star(d / "noang.star", optics, parts.assign(rlnAngleRot=1.0, rlnAnglePsi=2.0)))


def test_bad_nan_pixels(small_set):
    d, _, _ = small_set
    imgs = mrcfile.read(d / "p.mrcs").copy()
    imgs[2, 3, 3] = np.nan
    write_stack(d / "p.mrcs", imgs, 2.0)
    t = load_particles(d / "p.star")
    t.images.validate()  # headers are fine
    with pytest.raises(InputError, match=r"p\.mrcs: image 2 .*NaN or Inf.*particle 2"):
        t.images.get(2)
    with pytest.raises(InputError, match="NaN or Inf"):
        t.images.validate(check_pixels=True)


def test_bad_non_square_images(tmp_path):
    with mrcfile.new(tmp_path / "r.mrcs") as m:
        m.set_data(np.zeros((3, 16, 20), np.float32))
    with pytest.raises(InputError, match=r"r\.mrcs: images must be square, got 20 x 16"):
        load_particles(tmp_path / "r.mrcs")


def test_bad_unknown_extension(tmp_path, capsys):
    (tmp_path / "x.foo").write_text("hello")
    with pytest.raises(InputError, match=r"unknown extension '\.foo'"):
        load_particles(tmp_path / "x.foo")
    assert main(["info", str(tmp_path / "x.foo")]) == 2
    assert "unknown extension" in capsys.readouterr().err


def test_bad_output_would_overwrite_input(small_set, capsys):
    d, _, _ = small_set
    before = (d / "p.star").read_bytes()
    assert main(["convert", str(d / "p.star"), "-o", str(d / "p.star")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (d / "p.star").read_bytes() == before


def test_nothing_written_when_a_check_fails(small_set):
    d, _, _ = small_set
    # STAR without poses cannot become a pose pkl: no pkl and no ctf pkl may appear
    assert main(["convert", str(d / "p.star"), "-o", str(d / "o.pkl"), "--ctf-out", str(d / "c.pkl")]) == 2
    assert not (d / "o.pkl").exists() and not (d / "c.pkl").exists()


def test_txt_list_of_stacks_and_mrcs_with_separate_poses_and_ctf(tmp_path):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(3, 16, 16)).astype(np.float32), rng.normal(size=(2, 16, 16)).astype(np.float32)
    write_stack(tmp_path / "a.mrcs", a, 2.0)
    write_stack(tmp_path / "b.mrcs", b, 2.0)
    (tmp_path / "list.txt").write_text("a.mrcs\n# a comment\nb.mrcs\n")
    t = load_particles(tmp_path / "list.txt")
    assert t.n == 5 and t.box == 16 and t.pixel_size() == pytest.approx(2.0)
    np.testing.assert_array_equal(t.images.read([3, 4]), b)
    np.testing.assert_array_equal(t.images.read([2]), a[2:])
    # a stack + cryoDRGN poses and CTF -> STAR with everything
    rot = random_rotations(5, torch.Generator().manual_seed(0)).numpy()
    with open(tmp_path / "p.pkl", "wb") as fh:
        pickle.dump((rot, np.full((5, 2), 0.1)), fh)
    ctf = np.tile(np.array([16, 2.0, 1.5e4, 1.4e4, 10.0, 300, 2.7, 0.1, 0.0], np.float32), (5, 1))
    with open(tmp_path / "c.pkl", "wb") as fh:
        pickle.dump(ctf, fh)
    assert main(["convert", str(tmp_path / "list.txt"), "--poses", str(tmp_path / "p.pkl"), "--ctf",
                 str(tmp_path / "c.pkl"), "-o", str(tmp_path / "all.star")]) == 0
    s = load_particles(tmp_path / "all.star")
    np.testing.assert_allclose(s.rotations, rot, atol=1e-9)
    np.testing.assert_allclose(s.shifts_angstrom, 0.1 * 16 * 2.0)  # fraction of the box -> Å
    np.testing.assert_array_equal(s.images.read([4]), b[1:])
    assert s.ctf["defocus_u_angstrom"][0] == 1.5e4
