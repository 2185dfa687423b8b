"""Several species and junk: the mixture simulator, classification by projection matching,
the junk sink, select and the refusals of --classes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import gaussian_blobs

from eqcryo.cli.main import main
from eqcryo.data.errors import InputError
from eqcryo.data.mixture import parse_junk, parse_mix
from eqcryo.data.mrc import write_volume
from eqcryo.data.star import read_star
from eqcryo.evaluation.classes import class_agreement
from eqcryo.reconstruction.classification import JUNK, ClassifyConfig, classify, otsu_split
from eqcryo.reconstruction.projection_matching import BandData, MatchConfig

L, APIX = 32, 8.0


def _species_maps(tmp_path):
    """Two clearly different asymmetric maps (.mrc): four blobs in a bent line / a compact triangle."""
    a = gaussian_blobs(L, [(-6, 0, 0), (-2, 2, 0), (3, 3, 1), (6, -2, 0)], [2.5, 2.5, 2.0, 2.5], [1, 1, 1.2, 0.8])
    b = gaussian_blobs(L, [(0, 5, -2), (-4, -3, 2), (4, -3, 0)], [3.5, 3.0, 3.0], [1, 0.8, 1.1])
    pa, pb = tmp_path / "a.mrc", tmp_path / "b.mrc"
    write_volume(pa, a.float().numpy(), APIX)
    write_volume(pb, b.float().numpy(), APIX)
    return pa, pb


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mix")
    pa, pb = _species_maps(tmp)
    out = tmp / "sim"
    assert main(["simulate", "--mix", f"{pa}:120,{pb}:80", "--junk", "noise:40,edge:20,ice:20,aggregate:10",
                 "--box", str(L), "--apix", str(APIX), "--snr", "2", "--seed", "4", "--trans-std", "8",
                 "-o", str(out), "--no-progress"]) == 0
    return out


def test_parse_mix_and_junk():
    assert parse_mix("builtin:5nrl:2400,/x/70s.mrc:1600") == [("builtin:5nrl", 2400), ("/x/70s.mrc", 1600)]
    assert parse_junk("800") == {"noise": 800}
    assert parse_junk("noise:5,edge:3,noise:1") == {"noise": 6, "edge": 3}
    for bad in ("a.mrc", "a.mrc:0", "a.mrc:x"):
        with pytest.raises(InputError, match="STRUCTURE:N"):
            parse_mix(bad)
    with pytest.raises(InputError, match="KIND"):
        parse_junk("dust:4")


def test_mixture_truth_counts_scales_and_junk_kinds(mixture):
    truth = pd.read_csv(mixture / "truth.csv")
    assert len(truth) == 290
    assert truth["class"].value_counts().to_dict() == {1: 120, 2: 80, 0: 90}
    assert truth.loc[truth["class"] == 0, "kind"].value_counts().to_dict() == {"noise": 40, "edge": 20, "ice": 20,
                                                                             "aggregate": 10}
    # shuffled: the first 120 are not all species 1
    assert 0 < (truth["class"].to_numpy()[:120] == 1).mean() < 1
    t = read_star(mixture / "particles.star")
    x = np.stack([t.images.get(i) for i in range(t.n)])  # type: ignore[union-attr]
    info = json.loads((mixture / "dataset.json").read_text())
    sigma2 = info["noise_sigma"] ** 2
    var = x.var(axis=(1, 2))
    # every species at the same SNR: equal mean image variance (signal + the one noise level)
    v1, v2 = var[truth["class"] == 1].mean(), var[truth["class"] == 2].mean()
    assert abs(v1 - v2) / v1 < 0.15
    assert abs(v1 - (info["signal_variance"] + sigma2)) / v1 < 0.15
    # pure noise has the particles' variance and no structure
    noise = x[(truth["kind"] == "noise").to_numpy()]
    assert abs(noise.var(axis=(1, 2)).mean() - v1) / v1 < 0.15
    # an edge is a step: one half of the image darker than the other on average (after the noise)
    edge = x[(truth["kind"] == "edge").to_numpy()]
    assert edge.var(axis=(1, 2)).mean() > v1  # twice the signal variance plus the noise
    for k in (1, 2):
        assert (mixture / f"gt_volume_{k}.mrc").exists()


def _reader(t):
    def read(ids):
        return torch.from_numpy(np.stack([t.images.get(int(i)) for i in ids])).float(), \
            _ctf(t, ids)
    return read


def _ctf(t, ids):
    from eqcryo.physics.ctf import ctf_2d

    return ctf_2d(L, APIX, t.ctf_params(np.asarray(ids)), torch.float32)


def test_classify_from_true_maps_separates_species_and_drops_noise(mixture):
    from eqcryo.data.mrc import read_volume

    t = read_star(mixture / "particles.star")
    truth = pd.read_csv(mixture / "truth.csv")
    maps = [torch.from_numpy(read_volume(mixture / f"gt_volume_{k}.mrc")[0]).double() for k in (1, 2)]
    n = t.n
    eye = torch.eye(3, dtype=torch.float64).expand(n, 2, 3, 3)
    cfg = ClassifyConfig(iters=2, null_particles=128, seed=0,
                         match=MatchConfig(radius=10.0, n_rotations=2048, refine_rounds=3, seed=0))
    res = classify(_reader(t), np.arange(n), L, maps, eye, torch.zeros(n, 2, 2, dtype=torch.float64), cfg,
                   log=lambda m: None)
    out = class_agreement(res.label, truth["class"].to_numpy(), truth["kind"].to_numpy())
    assert out["species"][1]["class"] == 1 and out["species"][2]["class"] == 2
    assert out["species"][1]["share"] >= 0.95 and out["species"][2]["share"] >= 0.95
    # structureless images fall below the null's threshold: the junk sink takes them
    assert out["junk_dropped_by_kind"]["noise"] >= 0.9
    print(out)
    score = res.score
    assert res.threshold is not None and 0 < res.threshold < np.quantile(score[truth["class"] > 0], 0.05)
    assert len(res.history) == 2 and res.history[-1]["members"][0] >= 36
    # scores: ρ in the own class is higher for particles than for noise
    assert np.median(score[truth["class"] > 0]) > np.median(score[(truth["kind"] == "noise").to_numpy()]) + 0.1


def test_classify_without_junk_sink_assigns_everyone(mixture):
    from eqcryo.data.mrc import read_volume

    t = read_star(mixture / "particles.star")
    maps = [torch.from_numpy(read_volume(mixture / f"gt_volume_{k}.mrc")[0]).double() for k in (1, 2)]
    n = 60
    cfg = ClassifyConfig(iters=1, junk=False, match=MatchConfig(radius=8.0, n_rotations=512, refine_rounds=2))
    res = classify(_reader(t), np.arange(n), L, maps, torch.eye(3, dtype=torch.float64).expand(n, 2, 3, 3),
                   torch.zeros(n, 2, 2, dtype=torch.float64), cfg, log=lambda m: None)
    assert res.threshold is None and (res.label != JUNK).all()
    assert res.posterior().shape == (n, 2) and np.allclose(res.posterior().sum(1), 1)


def test_an_empty_class_is_reseeded():
    """A map nobody fits still ends a round with members (taken from the worst explained)."""
    g = torch.Generator().manual_seed(0)
    good = gaussian_blobs(L, [(-4, 0, 0), (4, 2, 0)], [3.0, 3.0])
    from eqcryo.physics.projection import prepare_fourier_volume, render_images
    from eqcryo.physics.rotations import random_rotations

    R = random_rotations(80, g).double()
    imgs = render_images(prepare_fourier_volume(good, 2).slice(R), None, torch.zeros(80, 2, dtype=torch.float64))
    imgs = imgs + 0.2 * imgs.std() * torch.randn(imgs.shape, generator=g, dtype=torch.float64)

    def reader(ids):
        return imgs[torch.as_tensor(ids)].float(), None

    empty = torch.zeros(L, L, L, dtype=torch.float64)
    empty[L // 2, L // 2, L // 2] = 1e-3  # a single faint voxel: explains nothing
    cfg = ClassifyConfig(iters=1, junk=False, min_members=10,
                         match=MatchConfig(radius=8.0, n_rotations=256, refine_rounds=1))
    res = classify(reader, np.arange(80), L, [good, empty], R[:, None].expand(80, 2, 3, 3).clone(),
                   torch.zeros(80, 2, 2, dtype=torch.float64), cfg, log=lambda m: None)
    assert (res.label == 2).sum() >= 10


def test_otsu_splits_two_groups():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.2, 0.03, 300), rng.normal(0.6, 0.05, 500)])
    s = otsu_split(x)
    assert (x[:300] < s).mean() > 0.99 and (x[300:] > s).mean() > 0.99


def test_class_agreement_counts():
    true = np.array([1, 1, 1, 1, 2, 2, 2, 0, 0, 0])
    pred = np.array([2, 2, 2, 1, 1, 1, 0, 0, 0, 1])
    out = class_agreement(pred, true, kept=pred > 0)
    assert out["species"][1] == {"n": 4, "class": 2, "share": 0.75, "junk_share": 0.0}
    assert out["species"][2]["class"] == 1 and out["species"][2]["junk_share"] == pytest.approx(1 / 3)
    assert out["species_in_different_classes"]
    assert out["junk_dropped"] == pytest.approx(2 / 3)
    assert out["real_kept"] == pytest.approx(6 / 7) and out["junk_kept"] == pytest.approx(1 / 3)


def test_train_classes_refusals(mixture, tmp_path, capsys):
    star = str(mixture / "particles.star")
    assert main(["train", star, "-o", str(tmp_path / "r0"), "--classes", "0", "--time-budget", "10"]) == 2
    assert "classes" in capsys.readouterr().err
    assert main(["train", star, "-o", str(tmp_path / "r3"), "--classes", "3", "--time-budget", "10"]) == 2
    err = capsys.readouterr().err
    assert "too many classes for 290 particles" in err and err.count("\n") == 1
    assert not (tmp_path / "r0").exists() and not (tmp_path / "r3").exists()


def test_select_refusals(tmp_path, capsys):
    assert main(["select", str(tmp_path / "nope"), "-o", str(tmp_path / "k.star")]) == 2
    assert "classes.json" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "classes.json").write_text(json.dumps({"classes": 2}))
    assert main(["select", str(run), "-o", str(tmp_path / "k.star"), "--classes", "1,5"]) == 2
    err = capsys.readouterr().err
    assert "no class 5" in err and not (tmp_path / "k.star").exists()
    assert main(["select", str(run), "-o", str(tmp_path / "k.star"), "--classes", "a"]) == 2


def test_trim_keeps_the_species_the_map_explains(mixture, tmp_path):
    """Refinement's trim: at their poses in species 1's map, the upper group of what is not junk
    goes on training: mostly species 1, no structureless junk; the choice survives a checkpoint."""
    from eqcryo.data.mrc import read_volume
    from eqcryo.training.refinement import Refinement
    from eqcryo.training.rundir import RunDir

    t = read_star(mixture / "particles.star")
    truth = pd.read_csv(mixture / "truth.csv")["class"].to_numpy()
    vol = torch.from_numpy(read_volume(mixture / "gt_volume_1.mrc")[0]).double()
    ids = np.arange(t.n)
    R = torch.from_numpy(t.rotations).double()  # type: ignore[arg-type]
    origin = torch.from_numpy(t.shifts_angstrom / APIX).double()  # type: ignore[operator]
    ref = Refinement(iters=1, radius=10.0, distill=1.0, seed=0, trim=True)
    info = ref.trim_particles(BandData.read(_reader(t), ids, L, 10.0), ids, vol, R, origin)
    assert ref.kept is not None and info["kept"] == len(ref.kept)
    kept = np.isin(ids, ref.kept)
    print(kept[truth == 1].mean(), kept[truth == 2].mean())
    assert kept[truth == 1].mean() >= 0.6 > 0.4 >= kept[truth == 2].mean()
    rd = RunDir(tmp_path)
    rd.save_checkpoint({"refinement": ref.state_dict()})  # (the checkpoint loader refuses numpy objects)
    back = Refinement(iters=1, radius=10.0, distill=1.0, seed=0, trim=True)
    back.load_state_dict(rd.load_checkpoint()["refinement"])
    assert back.kept is not None and np.array_equal(back.kept, ref.kept)
    kinds = pd.read_csv(mixture / "truth.csv")["kind"].to_numpy()
    for kind in ("noise", "edge", "ice"):
        assert kept[kinds == kind].mean() <= 0.2, kind
    # a small set is never trimmed below a batch: the best explained min_kept go on
    few = Refinement(iters=1, radius=10.0, distill=1.0, seed=0, trim=True, min_kept=64)
    sub = ids[:100]
    few.trim_particles(BandData.read(_reader(t), sub, L, 10.0), sub, vol, R[sub], origin[sub])
    assert few.kept is not None and len(few.kept) == 64


def test_training_data_draws_batches_from_the_active_particles(tmp_path):
    from eqcryo.training.batches import TrainingData
    from eqcryo.training.config import make_config

    out = tmp_path / "sim"
    assert main(["simulate", "-o", str(out), "--n", "200", "--box", "24", "--apix", "18", "--no-progress"]) == 0
    cfg = make_config("default", {}, particles=str(out / "particles.star"), out=str(tmp_path / "r"), steps=1)
    data = TrainingData(cfg)
    assert set(data.order(0)) == set(data.train_ids)
    data.set_active(data.train_ids[:50])
    assert sorted(data.order(1)) == sorted(data.train_ids[:50])
    data.set_active(None)
    assert len(data.order(2)) == len(data.train_ids)
    with pytest.raises(ValueError, match="batch size"):  # an epoch without a full batch would never end
        data.set_active(data.train_ids[:cfg.optimisation.batch_size - 1])


@pytest.mark.slow
def test_class_run_end_to_end_learns_an_impure_class_again(mixture, tmp_path, capsys):
    """train --classes 2 on the toy mixture (a few steps, one trimming round per ab initio): the
    cascade's folders, the purity of each class's ab initio, a class learned again from its
    members when its purity is below the bar (1.0 here: every impure class), then select and
    predict from the run folder alone (predict uses the encoder of the class's last run)."""
    star, run = str(mixture / "particles.star"), tmp_path / "run"
    assert main(["train", star, "-o", str(run), "--classes", "2", "--steps", "4", "--no-progress",
                 "--set", "optimisation.batch_size=32", "--set", "refinement.start_images=64", "--set", "refinement.iters=1", "--set", "refinement.radius_shells=8", "--set", "classes.iters=1",
                 "--set", "classes.revisit_purity=1.0", "--set", "evaluation.n_images=16"]) == 0
    err = capsys.readouterr().err
    rec = json.loads((run / "classes.json").read_text())
    assert len(rec["purity"]) == 2 and all(0 <= p <= 1 for p in rec["purity"])
    tried = {a["class"]: a for a in rec["learned_again"]}
    assert set(tried) == {k for k, p in enumerate(rec["purity"], start=1) if p < 1.0}, rec["purity"]
    again = {k: a for k, a in tried.items() if "skipped" not in a}
    assert again and all(a["skipped"] == "too few members" and a["members"] < 100 for k, a in tried.items()
                         if k not in again), tried
    for k, a in again.items():
        assert rec["ab_initio"][k - 1] == f"ab_initio_{k}_again" == a["folder"]
        sub = json.loads((run / a["folder"] / "subset.json").read_text())["particles"]
        assert len(sub) == a["members"] and (run / a["folder"] / "summary.json").exists()
        assert f"class {k} again" in err
    assert "classification again" in [s["stage"] for s in json.loads((run / "summary.json").read_text())["stages"]]
    labels = read_star(run / "predicted_particles.star").extra["rlnClassNumber"].to_numpy()
    assert len(labels) == 290 and set(labels) <= {0, 1, 2}
    assert main(["select", str(run), "-o", str(tmp_path / "kept.star")]) == 0
    assert read_star(tmp_path / "kept.star").n == int((labels > 0).sum())
    assert main(["predict", str(run), star, "-o", str(tmp_path / "p.star")]) == 0
    assert read_star(tmp_path / "p.star").n == 290


@pytest.mark.slow
def test_an_impure_class_without_time_left_is_flagged_not_learned_again(mixture, tmp_path):
    """With a short time budget, a class below the purity bar is not learned again (under 300 s of
    training left for it): classes.json and the report say so, and the class keeps its first run."""
    run = tmp_path / "run"
    assert main(["train", str(mixture / "particles.star"), "-o", str(run), "--classes", "2", "--steps", "4",
                 "--time-budget", "60", "--no-progress", "--set", "optimisation.batch_size=32",
                 "--set", "refinement.start_images=64", "--set", "refinement.iters=1",
                 "--set", "refinement.radius_shells=8", "--set", "classes.iters=1", "--set", "classes.max_iters=1",
                 "--set", "classes.revisit_purity=1.0", "--set", "evaluation.n_images=16"]) == 0
    rec = json.loads((run / "classes.json").read_text())
    impure = {k for k, p in enumerate(rec["purity"], start=1) if p < 1.0}
    assert impure and {a["class"] for a in rec["learned_again"]} == impure
    assert all(a["skipped"] in ("time budget", "too few members") for a in rec["learned_again"])
    assert any(a["skipped"] == "time budget" for a in rec["learned_again"])
    assert rec["ab_initio"] == ["ab_initio_1", "ab_initio_2"] and not list(run.glob("*_again"))
    assert "not learned again (time budget)" in (run / "report.md").read_text()
