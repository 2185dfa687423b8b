"""Fuzzing the readers: malformed STAR, .cs, .pkl and MRC files either load into a table
whose values are sane, or stop with an :class:`InputError` — never another exception (a
traceback) and never a silently accepted bad value. Seeded and bounded (derandomize, a fixed
number of examples per reader)."""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eqcryo.data.errors import InputError
from eqcryo.data.io import load_particles
from eqcryo.data.mrc import ImageStack, write_stack

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: values a STAR cell may hold in the fuzz: numbers, garbage, empty-ish, non-finite, huge
CELL = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32).map(lambda x: f"{x:g}"),
                 st.integers(-5, 400).map(str), st.sampled_from(["abc", "nan", "inf", "-0", "1e400", "None", "@", "1@"]),
                 st.text(alphabet="0123456789.-eE@x", min_size=1, max_size=6))


def _sane(t) -> None:
    """What a table that loads must satisfy: nothing malformed accepted silently."""
    if t.apix is not None:
        assert np.isfinite(t.apix).all() and (t.apix > 0).all()
    if t.box is not None:
        assert int(t.box) > 0
    if t.ctf is not None:
        for k, v in t.ctf.items():
            assert np.isfinite(v).all(), k
    if t.rotations is not None:
        R = t.rotations
        assert np.isfinite(R).all()
        np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-3)
    if t.shifts_angstrom is not None:
        assert np.isfinite(t.shifts_angstrom).all()


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fuzz")
    write_stack(d / "s.mrcs", np.random.default_rng(0).normal(size=(4, 8, 8)).astype(np.float32), 2.0)
    return d


COLUMNS = ["rlnImageName", "rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnAngleRot",
           "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]
OPTICS = ["rlnOpticsGroup", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize",
          "rlnImageSize"]


@FUZZ
@given(rows=st.lists(st.lists(CELL, min_size=len(COLUMNS), max_size=len(COLUMNS)), min_size=1, max_size=4),
       optics=st.lists(CELL, min_size=len(OPTICS), max_size=len(OPTICS)),
       keep=st.lists(st.booleans(), min_size=len(COLUMNS), max_size=len(COLUMNS)),
       good_names=st.booleans(), extra_line=st.sampled_from(["", "garbage here", "loop_", "data_x"]))
def test_star_reader(stack, rows, optics, keep, good_names, extra_line):
    cols = [c for c, k in zip(COLUMNS, keep) if k or c == "rlnImageName"]
    lines = ["data_optics", "", "loop_"] + [f"_{c}" for c in OPTICS] + [" ".join(optics), "", "data_particles", "",
                                                                          "loop_"] + [f"_{c}" for c in cols]
    for i, r in enumerate(rows):
        vals = dict(zip(COLUMNS, r))
        if good_names:
            vals["rlnImageName"] = f"{i % 4 + 1}@s.mrcs"
        lines.append(" ".join(vals[c] for c in cols))
    lines.append(extra_line)
    with tempfile.NamedTemporaryFile("w", suffix=".star", dir=stack, delete=False) as fh:
        fh.write("\n".join(lines) + "\n")
    try:
        t = load_particles(fh.name)
        _sane(t)
        if t.images is not None:
            t.validate_images()
    except InputError:
        pass
    finally:
        Path(fh.name).unlink()


@FUZZ
@given(n=st.integers(0, 4), fields=st.sets(st.sampled_from(["blob/shape", "blob/psize_A", "ctf/df1_A", "ctf/df2_A",
                                                            "ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast",
                                                            "alignments3D/pose", "alignments3D/shift"])),
       value=st.floats(allow_nan=True, allow_infinity=True, width=32), idx=st.integers(-2, 6),
       path_ok=st.booleans())
def test_cs_reader(stack, n, fields, value, idx, path_ok):
    dt = [("blob/path", "S64"), ("blob/idx", "<i8")] + [(f, "<f4", (2,) if f in ("blob/shape", "alignments3D/shift")
                                                         else (3,) if f == "alignments3D/pose" else ()) for f in sorted(fields)]
    a = np.zeros(n, dtype=dt)
    a["blob/path"] = b"s.mrcs" if path_ok else b"missing.mrcs"
    a["blob/idx"] = idx
    for f in fields:
        a[f] = value
    p = Path(tempfile.mktemp(suffix=".cs", dir=stack))
    with open(p, "wb") as fh:
        np.save(fh, a)
    try:
        t = load_particles(p)
        _sane(t)
        t.validate_images()
    except InputError:
        pass
    finally:
        p.unlink()


ARRAYS = st.one_of(
    st.tuples(st.integers(0, 3), st.integers(1, 10)).map(lambda s: np.random.default_rng(s[0]).normal(size=(s[1], 9))),
    st.integers(1, 5).map(lambda k: np.random.default_rng(k).normal(size=(k, 3, 3))),
    st.integers(1, 5).map(lambda k: np.tile(np.eye(3), (k, 1, 1))),
    st.just(np.array([[np.nan] * 9])), st.just(np.zeros((0, 9))), st.just("a string"), st.just({"a": 1}),
    st.just(np.array(["x"] * 9, dtype=object).reshape(1, 9)))


@FUZZ
@given(obj=st.one_of(ARRAYS, st.tuples(ARRAYS, ARRAYS), st.tuples(ARRAYS, ARRAYS, ARRAYS), st.lists(ARRAYS, max_size=3)),
       as_ctf=st.booleans())
def test_pkl_readers(stack, obj, as_ctf):
    from eqcryo.data.cryodrgn import read_ctf_pkl, read_pose_pkl
    p = Path(tempfile.mktemp(suffix=".pkl", dir=stack))
    p.write_bytes(pickle.dumps(obj))
    try:
        if as_ctf:
            ctf, box, apix = read_ctf_pkl(p)
            assert box > 0 and (apix > 0).all() and all(np.isfinite(v).all() for v in ctf.values())
        else:
            R, tr = read_pose_pkl(p, 8)
            np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-3)
            assert tr is None or np.isfinite(tr).all()
    except InputError:
        pass
    finally:
        p.unlink()


@FUZZ
@given(cut=st.integers(0, 2000), flip=st.lists(st.tuples(st.integers(0, 1023), st.integers(0, 255)), max_size=6))
def test_mrc_reader(stack, cut, flip):
    """Truncated files and random header bytes: a readable stack of finite images, or an InputError."""
    raw = bytearray((stack / "s.mrcs").read_bytes())
    for pos, b in flip:
        raw[pos] = b
    p = Path(tempfile.mktemp(suffix=".mrcs", dir=stack))
    p.write_bytes(bytes(raw[: len(raw) - cut]))
    try:
        s = ImageStack(p)
        for i in range(len(s)):
            assert np.isfinite(s[i]).all()
        s.close()
    except InputError:
        pass
    finally:
        p.unlink()
