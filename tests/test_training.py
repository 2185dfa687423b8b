"""Training and evaluation: metrics on constructed cases, exact resume, NaN guard, bad input,
and the verbs end to end on a tiny simulated data set."""

import csv
import json
import pickle

import numpy as np
import pytest
import torch

from eqcryo.cli.main import main
from eqcryo.data.simulate import SimulationConfig, simulate
from eqcryo.evaluation.metrics import align_poses, align_volume, pose_metrics
from eqcryo.physics.projection import flip_hand, rotate_volume
from eqcryo.physics.rotations import random_rotations
from eqcryo.training.trainer import TrainConfig, Trainer, TrainingDiverged

from conftest import gaussian_blobs

D = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


def test_pose_mse_zero_for_a_global_rotation_with_and_without_hand_flip():
    g = torch.Generator().manual_seed(0)
    R_gt = random_rotations(300, g)
    Q = random_rotations(1, g)[0]
    pred = R_gt @ Q.T  # a map rotated by Q explains the data with these
    al = align_poses(pred, R_gt)
    assert al.mse < 1e-12 and not al.flip
    torch.testing.assert_close(al.Q, Q)
    al = align_poses(D @ pred @ D, R_gt)  # the mirror-image solution
    assert al.mse < 1e-12 and al.flip


def test_pose_mse_of_random_predictions_is_about_six():
    g = torch.Generator().manual_seed(1)
    m, _ = pose_metrics(random_rotations(2000, g), random_rotations(2000, g))
    # E‖I - Q‖² = 6 for Haar-random Q; the best global alignment lowers it only slightly
    assert 5.4 < m["pose_mse"] < 6.1
    assert m["geodesic_median_deg"] > 90


def test_pose_mse_is_robust_to_outliers_and_reports_angles():
    g = torch.Generator().manual_seed(2)
    R_gt = random_rotations(400, g)
    pred = R_gt.clone()
    pred[:40] = random_rotations(40, g)  # 10% garbage
    m, al = pose_metrics(pred, R_gt)
    assert m["pose_medse"] < 1e-12 and 0.3 < m["pose_mse"] < 0.9
    assert m["geodesic_median_deg"] < 1e-5 and m["view_median_deg"] < 1e-5


def test_volume_alignment_undoes_rotation_flip_and_shift():
    v = gaussian_blobs(40, [(4, 1, -3), (-5, 3, 2), (1, -6, 4)], [3.5, 4.0, 3.0], [1.0, 0.7, 1.3])
    g = torch.Generator().manual_seed(3)
    R_gt = random_rotations(200, g)
    Q = random_rotations(1, g)[0]
    for flip in (False, True):
        rec = rotate_volume(v, Q)  # what a decoder learns with poses R_gt Qᵀ
        pred = R_gt @ Q.T
        if flip:
            rec, pred = flip_hand(rec), D @ pred @ D
        rec = torch.roll(rec, (2, -1, 1), (0, 1, 2))
        al = align_poses(pred, R_gt)
        back = align_volume(rec, v, al)
        # measured 2.5% for rotating there and back with trilinear interpolation alone
        assert ((back - v).norm() / v.norm()).item() < 0.04


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    simulate(SimulationConfig(n=160, box=32, apix=13.2, seed=3, snr=2.0, trans_std_angstrom=10.0), d / "sim",
             progress=False)
    return d / "sim"


def _cfg(tiny, out, **kw):
    base = dict(particles=str(tiny / "particles.star"), out=str(out), gt_poses=str(tiny / "gt_poses.pkl"),
                gt_volume=str(tiny / "gt_volume.mrc"), model="d4-l2", steps=6, batch_size=16, eval_every=1e9,
                eval_n=32, checkpoint_every=1e9, lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("fast", [{}, dict(encoder_bin=2, lowpass_start=4.0, lowpass_images=100, view_prior=1.0),
                                  dict(refine_images=48, refine_iters=1), dict(refine_images=96, refine_iters=1)])
def test_resume_equals_uninterrupted(tiny, tmp_path, fast):
    """Also for the fast path: binned encoder input, band-limited loss crossing to the full band
    (160 images), and the orientation prior; and for the projection-matching refinement, both
    before the interruption (its targets and map come from the checkpoint) and after it."""
    full = Trainer(_cfg(tiny, tmp_path / "full", steps=10, **fast))
    assert full.model.encoder.bin == fast.get("encoder_bin", 1)
    full.run(progress=False)
    part = Trainer(_cfg(tiny, tmp_path / "part", steps=4, **fast))
    part.run(progress=False)
    again = Trainer(_cfg(tiny, tmp_path / "part", steps=10, **fast), resume=True)
    assert again.step == 4
    again.run(progress=False)
    for (k, a), b in zip(full.model.state_dict().items(), again.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=k)


def test_progress_bar_redirected_to_a_file_does_not_redraw_every_step(tiny, tmp_path, capsys):
    """Under pytest stderr is not a terminal, as in `eqcryo train ... 2> log`: the bar may draw
    when it opens and closes, not once per step (it used to, through set_postfix's refresh)."""
    Trainer(_cfg(tiny, tmp_path / "r", steps=8)).run(progress=True)
    draws = capsys.readouterr().err.count("train d4-l2")
    assert 1 <= draws <= 3, draws


def test_resume_drops_evaluations_logged_after_the_checkpoint(tiny, tmp_path):
    """A run killed after its last checkpoint: the evaluations it logged later are redone by
    the resumed run, so they are dropped rather than duplicated."""
    out = tmp_path / "r"
    Trainer(_cfg(tiny, out, steps=4)).run(progress=False)
    with open(out / "metrics.csv", newline="") as fh:
        header = next(csv.reader(fh))
    with open(out / "metrics.csv", "a", newline="") as fh:  # what a killed run left behind
        csv.writer(fh).writerow(["5", "9.9", "80", "123.0"] + [""] * (len(header) - 4))
    z = dict(np.load(out / "eval_poses.npz"))
    np.savez(out / "eval_poses.npz", steps=np.append(z["steps"], 5), train_seconds=np.append(z["train_seconds"], 9.9),
             rotations=np.concatenate([z["rotations"], z["rotations"][-1:]]), eval_ids=z["eval_ids"])
    again = Trainer(_cfg(tiny, out, steps=6), resume=True)
    with open(out / "metrics.csv", newline="") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [0, 4]
    assert list(np.load(out / "eval_poses.npz")["steps"]) == [0, 4]
    again.run(progress=False)
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [0, 4, 6] and float(rows[-1]["loss"]) != 123.0


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
    tr = Trainer(_cfg(tiny, tmp_path / "r", steps=3))
    tr.run(progress=False)
    good = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    tr2 = Trainer(_cfg(tiny, tmp_path / "r", steps=6), resume=True)
    with torch.no_grad():
        tr2.model.decoder.vol.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became nan at step 4"):
        tr2.run(progress=False)
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == good


def test_refinement_sets_targets_map_and_report(tiny, tmp_path):
    """--refine-images: projection matching runs once at that point, writes refinement.json,
    sets the voxel decoder to its map and the distillation targets for the training particles;
    the pull towards them is zero for the encoder's own eval-mode poses (same conventions)."""
    tr = Trainer(_cfg(tiny, tmp_path / "r", model="c4-mirror", steps=5, refine_images=32, refine_iters=2,
                      lowpass_start=4, lowpass_images=1000, distill_band=6))
    before = tr.model.decoder.vol.detach().clone()
    assert tr.lowpass_radius() == 4  # before the refinement: the frequency-marching schedule
    tr.run(progress=False)
    assert tr.lowpass_radius() == 6 and tr.model.band_radius == 6  # after it: held at --distill-band
    info = json.loads((tmp_path / "r" / "refinement.json").read_text())
    assert info["images_seen"] == 32 and info["step"] == 2 and info["decoder_set_to_map"]
    assert [h["iteration"] for h in info["iterations"]] == [1, 2]
    assert all(0 <= h["train_pose_mse"] <= 8 for h in info["iterations"])
    T = tr.target_R[tr.train_ids].double()
    torch.testing.assert_close(T @ T.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(T), atol=1e-5, rtol=0)
    assert (tr.target_R[tr.eval_ids] == 0).all()  # held-out particles are never refined
    assert not torch.equal(before, tr.model.decoder.vol.detach())
    # targets = the encoder's own current poses -> zero pull
    ids = tr.train_ids[:16]
    R, origin = tr.predict(ids)
    tr.target_R[ids], tr.target_origin_px[ids] = R.float(), (origin / tr.apix).float()
    tr.model.eval()
    with torch.no_grad():
        x = torch.from_numpy(tr.t.images.read(ids) * tr.scale)
        out = tr.model(x, tr._ctf(ids))
    assert tr._distill_penalty(out, ids).item() < 1e-8


def test_refine_verb_keeps_true_poses_and_writes_outputs(tiny, tmp_path, capsys):
    """From the simulation's true poses (SNR 2) one iteration must stay at the truth: a wrong
    angle, origin or CTF convention anywhere in the chain would move the poses away."""
    out, vol = tmp_path / "ref.star", tmp_path / "ref.mrc"
    assert main(["refine", str(tiny / "particles.star"), "-o", str(out), "--map", str(vol), "--iters", "1",
                 "--n-rotations", "512", "--gt-poses", str(tiny / "gt_poses.pkl")]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert lines[-1]["iteration"] == 1 and lines[-1]["pose_mse"] < 0.02
    from eqcryo.data import load_particles
    from eqcryo.data.mrc import read_volume
    p = load_particles(out)
    assert p.n == 160 and p.rotations is not None and read_volume(vol)[0].shape == (32, 32, 32)
    assert main(["refine", str(tiny / "particles_000.mrcs"), "-o", str(tmp_path / "x.star"),
                 "--ctf", str(tiny / "ctf.pkl")]) == 2
    assert "no poses" in capsys.readouterr().err


def test_train_evaluate_predict_verbs(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny / "particles.star"), "-o", str(run), "--model", "c4-mirror", "--steps", "3",
                 "--batch-size", "16", "--eval-n", "16", "--gt-poses", str(tiny / "gt_poses.pkl"),
                 "--gt-volume", str(tiny / "gt_volume.mrc"), "--no-progress"]) == 0
    for f in ("config.yaml", "metrics.csv", "checkpoint.pt", "reconstruction.mrc", "predicted_particles.star",
              "predicted_poses.pkl", "report.md", "map.png", "pose_error.png", "fsc.png"):
        assert (run / f).exists(), f
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert {"step", "train_seconds", "loss", "pose_mse", "pose_medse", "resolution_0.5_angstrom"} <= set(rows[0])
    assert float(rows[-1]["pose_mse"]) > 0 and float(rows[-1]["resolution_0.5_angstrom"]) > 0
    with open(run / "predicted_poses.pkl", "rb") as fh:
        rot, trans = pickle.load(fh)
    assert rot.shape == (160, 3, 3) and np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-5)
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["pose_mse"] == pytest.approx(float(rows[-1]["pose_mse"]), rel=1e-6)
    assert main(["predict", str(run), str(tiny / "particles.star"), "-o", str(tmp_path / "p.star")]) == 0
    from eqcryo.data import load_particles
    p = load_particles(tmp_path / "p.star")
    np.testing.assert_allclose(p.rotations, rot, atol=1e-5)
    assert main(["train", "--resume", str(run), "--steps", "5", "--no-progress"]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 5


def test_bad_inputs_are_clear_errors(tiny, tmp_path, capsys):
    import starfile
    blocks = starfile.read(tiny / "particles.star", always_dict=True)
    parts = blocks["particles"].drop(columns=["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift",
                                              "rlnCtfBfactor"])
    parts["rlnImageName"] = [f"{n.split('@')[0]}@{tiny}/{n.split('@')[1]}" for n in parts["rlnImageName"]]
    starfile.write({"optics": blocks["optics"], "particles": parts}, tmp_path / "noctf.star")
    assert main(["train", str(tmp_path / "noctf.star"), "-o", str(tmp_path / "a"), "--steps", "1"]) == 2
    assert "no CTF columns" in capsys.readouterr().err
    v = np.zeros((16, 16, 16), np.float32)
    from eqcryo.data.mrc import write_volume
    write_volume(tmp_path / "small.mrc", v, 1.0)
    assert main(["train", str(tiny / "particles.star"), "-o", str(tmp_path / "b"), "--steps", "1",
                 "--gt-volume", str(tmp_path / "small.mrc")]) == 2
    assert "box 16 differs" in capsys.readouterr().err
    assert main(["train", str(tiny / "particles.star"), "-o", str(tmp_path / "c"), "--steps", "1",
                 "--model", "d8-l2"]) == 2
    assert "unknown model 'd8-l2'" in capsys.readouterr().err


def test_model_with_true_map_and_poses_reproduces_the_data(tiny):
    """The training image model and the simulator agree exactly: with the ground-truth map and
    the true poses, shifts and CTFs, the model's images equal the data (band-limited to the
    model's |k| < L/2 disc). Pins origin <-> displacement, scale and CTF conventions."""
    from eqcryo.data import load_particles
    from eqcryo.data.mrc import read_volume
    from eqcryo.models.presets import build_model
    from eqcryo.physics.ctf import ctf_2d
    from eqcryo.physics.group import origin_to_displacement
    from eqcryo.physics.lattice import disc_mask_2d, fft2_centered, ifft2_centered

    t = load_particles(tiny / "particles.star")
    v, apix = read_volume(tiny / "gt_volume.mrc")
    m = build_model("d4-l2", "cpu", 32).double()
    with torch.no_grad():
        m.decoder.vol.copy_(torch.from_numpy(v))
    ids = np.arange(16)
    x = torch.from_numpy(t.images.read(ids)).double()
    ctf = ctf_2d(32, apix, {k: torch.from_numpy(val[ids]) for k, val in t.ctf.items()}, torch.float64)
    d = origin_to_displacement(torch.from_numpy(t.shifts_angstrom[ids] / apix), 32)
    with torch.no_grad():
        pred = m.render(torch.from_numpy(t.rotations[ids]), d, ctf)
    # the tiny set is noisy (SNR 2): compare with the clean images implied by the same seed
    from eqcryo.data.simulate import SimulationConfig, render_clean, sample_parameters
    from eqcryo.physics.projection import prepare_fourier_volume
    clean = render_clean(prepare_fourier_volume(torch.from_numpy(v).double()),
                         sample_parameters(SimulationConfig(n=160, box=32, apix=13.2, seed=3, trans_std_angstrom=10.0)),
                         ids, apix)
    band = ifft2_centered(fft2_centered(clean) * disc_mask_2d(32)).real
    assert ((pred - band).norm() / band.norm()).item() < 1e-6
    assert ((x - clean).std() / clean.std()).item() > 0.3  # and the data really are noisy
