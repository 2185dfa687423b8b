"""Training: exact resume, NaN guard, refinement, bad input, and the verbs end to end on a tiny
simulated data set."""

import csv
import json
import pickle

import numpy as np
import pytest
import torch

from eqcryo.cli.main import main
from eqcryo.data.errors import InputError
from eqcryo.data.simulate import SimulationConfig, simulate
from eqcryo.physics.rotations import random_rotations
from eqcryo.training.config import TrainConfig
from eqcryo.training.inference import infer
from eqcryo.training.trainer import Trainer, TrainingDiverged


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
    return TrainConfig.from_dict(base)


@pytest.mark.slow
@pytest.mark.parametrize("fast", [{}, dict(encoder_bin=2, lowpass_start=4.0, lowpass_images=100, view_prior=1.0),
                                  dict(refine_images=48, refine_iters=1), dict(refine_images=96, refine_iters=1),
                                  dict(refine_images=48, refine_iters=1, distill_only=True, distill_augment=True,
                                       distill_simulate=0.5),
                                  dict(refine_images=48, refine_iters=1, refine_max_particles=40)])
def test_resume_equals_uninterrupted(tiny, tmp_path, fast):
    """Also for the fast path: binned encoder input, band-limited loss crossing to the full band
    (160 images), and the orientation prior; and for the projection-matching refinement, both
    before the interruption (its targets and map come from the checkpoint) and after it; and for
    poses-only distillation on turned and simulated images (random draws and noise spectrum)."""
    full = Trainer(_cfg(tiny, tmp_path / "full", steps=10, **fast))
    assert full.model.encoder.bin == fast.get("encoder_bin", 1)
    assert full.data.n == 160
    full.run(progress=False)
    part = Trainer(_cfg(tiny, tmp_path / "part", steps=4, **fast))
    part.run(progress=False)
    again = Trainer(_cfg(tiny, tmp_path / "part", steps=10, **fast), resume=True)
    assert again.step == 4
    again.run(progress=False)
    for (k, a), b in zip(full.model.state_dict().items(), again.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=k)


@pytest.mark.slow
def test_progress_bar_redirected_to_a_file_does_not_redraw_every_step(tiny, tmp_path, capsys):
    """Under pytest stderr is not a terminal, as in `eqcryo train ... 2> log`: the bar may draw
    when it opens and closes, not once per step (it used to, through set_postfix's refresh)."""
    Trainer(_cfg(tiny, tmp_path / "r", steps=8)).run(progress=True)
    draws = capsys.readouterr().err.count("train d4-l2")
    assert 1 <= draws <= 3, draws


@pytest.mark.slow
def test_resume_drops_evaluations_logged_after_the_checkpoint(tiny, tmp_path, capsys):
    """A run killed after its last checkpoint: the evaluations it logged later are redone by
    the resumed run, so they are dropped rather than duplicated; its log says where it picks up."""
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
    capsys.readouterr()
    again.run(progress=False)
    err = capsys.readouterr().err
    assert f"at step 4 ({4 * again.cfg.optimisation.batch_size} images seen" in err and "stage ab initio: start" in err
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [0, 4, 6] and float(rows[-1]["loss"]) != 123.0


@pytest.mark.slow
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


@pytest.mark.slow
def test_refinement_sets_targets_map_and_report(tiny, tmp_path):
    """--refine-images: projection matching runs once at that point, writes refinement.json,
    sets the voxel decoder to its map and the distillation targets for the training particles;
    the pull towards them is zero for the encoder's own eval-mode poses (same conventions)."""
    tr = Trainer(_cfg(tiny, tmp_path / "r", model="c4-mirror", steps=5, refine_images=32, refine_iters=2,
                      lowpass_start=4, lowpass_images=1000, distill_band=6))
    before = tr.model.decoder.vol.detach().clone()
    assert tr.band_radius() == 4  # before the refinement: the frequency-marching schedule
    tr.run(progress=False)
    assert tr.band_radius() == 6  # after it: held at distill_band
    rounds = json.loads((tmp_path / "r" / "refinement.json").read_text())["rounds"]
    assert len(rounds) == 1  # once: no refine_every
    info = rounds[0]
    assert info["images_seen"] == 32 and info["step"] == 2 and info["decoder_set_to_map"]
    assert [h["iteration"] for h in info["iterations"]] == [0, 1, 2]  # 0: the encoder's poses
    assert all(0 <= h["train_pose_mse"] <= 8 for h in info["iterations"])
    ref, data = tr.refinement, tr.data
    T = ref.target_R[data.train_ids].double()
    torch.testing.assert_close(T @ T.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(T), atol=1e-5, rtol=0)
    assert (ref.target_R[data.eval_ids] == 0).all()  # held-out particles are never refined
    assert not torch.equal(before, tr.model.decoder.vol.detach())
    # targets = the encoder's own current poses -> zero pull
    ids = data.train_ids[:16]
    R, origin, _ = infer(tr.model, data.ds, ids)
    ref.target_R[ids], ref.target_origin_px[ids] = R.float(), (origin / data.apix).float()
    tr.model.eval()
    with torch.no_grad():
        b = data.ds.batch(ids)
        out = tr.model(b.images, b.ctf)
    assert ref.penalty(out, ids, data.box).item() < 1e-8


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


@pytest.mark.slow
@pytest.mark.parametrize("augment,simulate,k,rule", [(False, 0.0, 1, None), (True, 0.0, 1, None), (True, 0.5, 1, None),
                                                     (True, 0.0, 2, "winner"), (True, 0.0, 2, "all-once-settled")])
def test_distill_only_steps_train_the_encoder_towards_the_targets_and_leave_the_map(tiny, tmp_path, augment,
                                                                                   simulate, k, rule):
    """distill_only: once a refinement has set targets, steps read no decoder (the map stays the
    refined one, exactly) and pull the encoder to the targets (here the true poses, a clear
    signal), also with the images turned in-plane (augment) and with half of each batch simulated
    from the map (simulate), and with K = 2 pose hypotheses (the nearest one pulled, or — the
    round here settles — both); before it, steps are ordinary (the decoder moves). Augmentation or
    simulation without distill_only is refused."""
    kw = dict(refine_images=32, refine_iters=1, distill_only=True, lowpass_start=4, lowpass_images=1000,
              distill_band=6, distill_augment=augment, distill_simulate=simulate, hypotheses=k,
              **({"distill_hypotheses": rule} if rule else {}))
    tr = Trainer(_cfg(tiny, tmp_path / "d", steps=3, **kw))
    vol0 = tr.model.decoder.vol.detach().clone()
    tr.run(progress=False)  # the refinement fires after the second step (32 images), then one distillation step
    assert tr.refinement.has_targets and not torch.equal(vol0, tr.model.decoder.vol.detach())
    refined = tr.model.decoder.vol.detach().clone()
    # half of a simulated batch is new images: twice the steps for the same number of real ones
    # (and twice the steps for turned images, below)
    more = Trainer(_cfg(tiny, tmp_path / "d", steps=160 if simulate or augment else 80, **kw), resume=True)
    ids = more.data.train_ids
    more.refinement.target_R[ids] = more.gt.R[ids].float()
    if simulate:  # simulated images need the right map to teach the right poses: the truth, as the targets
        more.model.decoder.set_volume(more.gt.volume.float() * more.data.scale)
        refined = more.model.decoder.vol.detach().clone()
        more.refinement.target_origin_px[ids] = (more.gt.origin[ids] / more.data.apix).float()
        total = more.refinement.noise_psd.sum().item()
        more.refinement.noise_psd = more.refinement.residual_power(more.model, more.data)
        # SNR 2: the truth explains ~2/3 of the images' power (the rest is noise, and the voxel map's blur)
        assert more.refinement.noise_psd.sum().item() < 0.5 * total

    def distance():
        more.model.eval()
        with torch.no_grad():
            b = more.data.ds.batch(ids)
            d = more.refinement.penalty(more.model(b.images, b.ctf, poses_only=True), ids, more.data.box).item()
        more.model.train()
        return d
    before = distance()
    more.run(progress=False)
    assert torch.equal(more.model.decoder.vol.detach(), refined)  # no decoder step since the round
    # turned images are a harder task on 144 particles of 32 px: twice the steps (after 80 the pull
    # was 0.67-0.88 of the start, varying with float rounding; after 160 it is 0.44-0.59), and a
    # smaller pull when both hypotheses must learn every target (the distance is their mean)
    if rule == "all-once-settled":
        assert more.refinement.settled  # so the rule pulls both hypotheses
    assert distance() < (0.85 if rule == "all-once-settled" else 0.75 if augment else 0.5) * before, (before,
                                                                                                       distance())
    with pytest.raises(InputError, match="distill_augment turns the images of distillation steps"):
        _cfg(tiny, tmp_path / "k", distill_augment=True).validate()
    with pytest.raises(InputError, match="distill_simulate replaces images"):
        _cfg(tiny, tmp_path / "k", distill_simulate=0.5).validate()
    with pytest.raises(InputError, match="distill_simulate 1.5: must be from 0 to 1"):
        _cfg(tiny, tmp_path / "k", distill_only=True, distill_simulate=1.5).validate()


def test_simulated_noise_has_the_requested_power_spectrum():
    """Refinement.simulate_noise: Gaussian noise whose mean |FFT2|² is the (here strongly
    coloured and anisotropic) spectrum asked for — checked against the spectrum itself."""
    from eqcryo.training.refinement import Refinement
    L = 16
    k = torch.fft.fftfreq(L) * L
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    psd = 50.0 / (1 + kx ** 2 + 4 * ky ** 2) + 0.5  # even in k: the spectrum of a real process
    ref = Refinement(1, 8.0, 1.0, 0)
    ref.noise_psd = psd
    n = ref.simulate_noise(20000, torch.Generator().manual_seed(1))
    assert n.dtype == torch.float32 and n.shape == (20000, L, L)
    got = (torch.fft.fft2(n.double()).abs() ** 2).mean(0)
    assert ((got / psd.double()) - 1).abs().max() < 0.1  # 20000 draws: ~1% noise per frequency
    assert abs(n.double().var().item() - psd.double().mean().item() / L ** 2) < 0.02 * psd.mean().item() / L ** 2


@pytest.mark.slow
def test_simulated_distillation_images_are_the_map_at_their_target_poses(tiny, tmp_path):
    """The simulated rows of a distillation batch are the decoder's map rendered at their targets
    (with the replaced particles' CTFs and shifts; noise switched off here); the other rows are the
    real images with their refined poses; the residual spectrum is a positive (L, L) array."""
    tr = Trainer(_cfg(tiny, tmp_path / "s", steps=2, refine_images=32, refine_iters=1, distill_only=True,
                      distill_simulate=0.25))
    tr.run(progress=False)
    ref = tr.refinement
    assert ref.noise_psd.shape == (32, 32) and (ref.noise_psd > 0).all() and torch.isfinite(ref.noise_psd).all()
    ref.noise_psd = torch.zeros(32, 32)
    b = tr.data.ds.batch(tr.data.train_ids[:16])
    images, R_t, d_t, turn = tr.distillation_batch(b)
    assert turn is None and images.shape == b.images.shape
    with torch.no_grad():
        torch.testing.assert_close(images[:4], tr.model.render(R_t[:4], d_t[:4], b.ctf[:4]))
    torch.testing.assert_close(images[4:], b.images[4:], atol=0, rtol=0)
    R_ref, d_ref = ref.targets(b.ids, 32, images.device)
    torch.testing.assert_close(R_t[4:], R_ref[4:], atol=0, rtol=0)
    torch.testing.assert_close(d_t, d_ref, atol=0, rtol=0)  # simulated rows keep the replaced particles' shifts
    assert not torch.allclose(R_t[:4], R_ref[:4], atol=0.1)  # fresh random poses


def test_distillation_turns_images_and_targets_together():
    """distill_augment: an image turned in-plane by g has the pose diag(g, 1) R* and shift g d*;
    so an encoder that is exactly right on the originals has zero penalty on consistently turned
    images and targets, at any angle (here on poses from the D4 law, where the turn is exact)."""
    from eqcryo.models.autoencoder import ModelOutput
    from eqcryo.physics.group import displacement_to_origin, in_plane_turn, phi_r, phi_t
    from eqcryo.training.refinement import Refinement
    ref = Refinement(1, 8.0, 1.0, 0)
    gen = torch.Generator().manual_seed(0)
    ref.target_R = random_rotations(6, gen).float()
    d = torch.randn(6, 2, generator=gen)
    ref.target_origin_px = displacement_to_origin(d, 32)
    ids = np.arange(6)
    k = torch.tensor([0, 1, 2, 3, 1, 2])
    g = in_plane_turn(k * (np.pi / 2)).float()
    R_turned = torch.stack([phi_r(int(e), torch.float32) for e in k]) @ ref.target_R
    d_turned = torch.stack([phi_t(int(e), torch.float32) @ x for e, x in zip(k, d)])
    z = torch.zeros(6, dtype=torch.long)
    right = ModelOutput(None, torch.zeros(6), R_turned, d_turned, z, z)
    assert ref.penalty(right, ids, 32, g).item() < 1e-10
    assert ref.penalty(right, ids, 32).item() > 0.5  # without the turn the same outputs are wrong
    # K = 3 hypotheses (a poses-only step): each image pulls its hypothesis nearest the target only
    wrong = random_rotations(6, gen).float()
    for j in range(3):
        R3 = torch.stack([wrong, wrong, wrong], 1)
        R3[:, j] = R_turned
        three = ModelOutput(None, torch.zeros(6), R3, d_turned, z, z)
        assert ref.penalty(three, ids, 32, g).item() < 1e-10
    none_right = ModelOutput(None, torch.zeros(6), torch.stack([wrong] * 3, 1), d_turned, z, z)
    assert ref.penalty(none_right, ids, 32, g).item() > 0.5
    # all_hypotheses_once_settled: the winner alone until a round has settled, then every
    # hypothesis: one right of three then costs 2/3 of three wrong ones (the same wrong poses;
    # the shifts are right, so the penalty is the rotations' alone)
    ref.all_hypotheses_once_settled = True
    assert ref.penalty(three, ids, 32, g).item() < 1e-10  # not settled: winner-take-all
    ref.settled = True
    all_wrong = ref.penalty(none_right, ids, 32, g).item()
    assert all_wrong > 0.5
    assert ref.penalty(three, ids, 32, g).item() == pytest.approx(all_wrong * 2 / 3, rel=1e-5)


def test_train_evaluate_predict_verbs(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny / "particles.star"), "-o", str(run), "--model", "c4-mirror", "--steps", "3",
                 "--set", "batch_size=16", "--set", "eval_n=16", "--gt-poses", str(tiny / "gt_poses.pkl"),
                 "--gt-volume", str(tiny / "gt_volume.mrc"), "--no-progress"]) == 0
    for f in ("config.yaml", "metrics.csv", "checkpoint.pt", "reconstruction.mrc", "predicted_particles.star",
              "predicted_poses.pkl", "report.md", "map.png", "pose_error.png", "fsc.png", "half1.mrc", "half2.mrc",
              "fsc_halfmaps.json"):
        assert (run / f).exists(), f
    halves = json.loads((run / "fsc_halfmaps.json").read_text())
    assert halves["n_half1"] + halves["n_half2"] == 160 and {"masked", "unmasked"} <= set(halves)
    assert "**resolution without ground truth** (FSC 0.143 of two half-maps" in (run / "report.md").read_text()
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
    # resumed at its budget: straight to the outputs, which still measure the map against the truth
    (run / "fsc.json").unlink()
    assert main(["train", "--resume", str(run), "--steps", "3", "--no-progress"]) == 0
    assert (run / "fsc.json").exists() and json.loads((run / "summary.json").read_text())["steps"] == 3
    assert main(["train", "--resume", str(run), "--steps", "5", "--no-progress"]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 5
    # half-maps from one encoder's poses: said to be optimistic; meaningless when the search disagrees
    from eqcryo.training.rundir import UNRELIABLE_MATCH_MSE, RunDir
    report = (run / "report.md").read_text()
    assert "the halves are not independent and this reads optimistic" in report
    for match, warned in ((UNRELIABLE_MATCH_MSE * 3, True), (UNRELIABLE_MATCH_MSE / 10, False)):
        rows = list(csv.DictReader(open(run / "metrics.csv")))
        rows[-1]["match_mse"] = str(match)
        with open(run / "metrics.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        RunDir(run).write_report()
        assert ("the half-map resolution means nothing here" in (run / "report.md").read_text()) == warned


def test_bad_inputs_are_clear_errors(tiny, tmp_path, capsys):
    import starfile
    blocks = starfile.read(tiny / "particles.star", always_dict=True)
    parts = blocks["particles"].drop(columns=["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift",
                                              "rlnCtfBfactor"])
    parts["rlnImageName"] = [f"{n.split('@')[0]}@{tiny}/{n.split('@')[1]}" for n in parts["rlnImageName"]]
    starfile.write({"optics": blocks["optics"], "particles": parts}, tmp_path / "noctf.star")
    assert main(["train", str(tmp_path / "noctf.star"), "-o", str(tmp_path / "a"), "--steps", "1"]) == 2
    assert "no CTF parameters; give --ctf CTF.pkl, or --no-ctf" in capsys.readouterr().err
    v = np.zeros((16, 16, 16), np.float32)
    from eqcryo.data.mrc import write_volume
    write_volume(tmp_path / "small.mrc", v, 1.0)
    assert main(["train", str(tiny / "particles.star"), "-o", str(tmp_path / "b"), "--steps", "1",
                 "--gt-poses", str(tiny / "gt_poses.pkl"), "--gt-volume", str(tmp_path / "small.mrc")]) == 2
    assert "box 16 differs" in capsys.readouterr().err
    # a map alone cannot be compared (the poses give the alignment): said, not silently unused
    assert main(["train", str(tiny / "particles.star"), "-o", str(tmp_path / "b2"), "--steps", "1",
                 "--gt-volume", str(tiny / "gt_volume.mrc")]) == 2
    assert "give --gt-poses too" in capsys.readouterr().err
    write_volume(tmp_path / "apix.mrc", np.zeros((32, 32, 32), np.float32), 6.6)
    assert main(["train", str(tiny / "particles.star"), "-o", str(tmp_path / "b3"), "--steps", "1",
                 "--gt-poses", str(tiny / "gt_poses.pkl"), "--gt-volume", str(tmp_path / "apix.mrc")]) == 2
    assert "voxel size 6.6 Å differs" in capsys.readouterr().err
    for opt, msg in (("lr=-1e-3", "optimisation.lr -0.001: must be > 0"),
                     ("batch_size=0", "optimisation.batch_size 0: must be >= 1"),
                     ("evaluation.n_images=0", "evaluation.n_images 0: must be >= 1"),
                     ("batch_size=abc", "optimisation.batch_size 'abc': expected a number"),
                     ("refine_orbit=0", "refinement.orbit 0: must be >= 1"),
                     ("seed=.nan", "optimisation.seed nan: expected a finite number"),
                     ("view_prior=.nan", "optimisation.view_prior nan: expected a finite number"),
                     ("refine_images=.inf", "refinement.start_images inf: expected a finite number"),
                     ("distill=-.inf", "refinement.distill_weight -inf: expected a finite number"),
                     ("lowpass_start=nan", "optimisation.lowpass_start_shells nan: expected a finite number"),
                     ("out=elsewhere", "output.dir is set by the command line"),
                     ("given_paths=1", "output.given_paths is set by the command line"),
                     ("optimisation.learning_rate=1", "optimisation has no option 'learning_rate'"),
                     ("learning_rate=1", "unknown training option 'learning_rate'")):
        assert main(["train", str(tiny / "particles.star"), "-o", str(tmp_path / "b4"), "--steps", "1",
                     "--set", opt]) == 2, opt
        assert msg in capsys.readouterr().err, opt
    for opt, msg in ((["--steps", "-3"], "--steps: must be > 0, got -3"), (["--time-budget", "0"], "--time-budget: must be > 0")):
        assert main(["train", str(tiny / "particles.star"), "-o", str(tmp_path / "b5")] + opt) == 2
        assert msg in capsys.readouterr().err, opt
    assert not (tmp_path / "b4").exists() and not (tmp_path / "b5").exists()  # refused before anything is made
    assert main(["train", str(tiny / "particles.star"), "-o", str(tmp_path / "c"), "--steps", "1",
                 "--set", "model=d8-l2"]) == 2
    assert "model.name 'd8-l2': expected one of" in capsys.readouterr().err


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


@pytest.mark.slow
def test_predict_needs_only_the_run_folder(tmp_path, capsys):
    """`eqcryo predict RUN new.star` reads the model from RUN alone: the training particles may
    have moved away (it used to re-read and re-validate them)."""
    simulate(SimulationConfig(n=64, box=32, apix=13.2, seed=5, snr=2.0), tmp_path / "sim", progress=False)
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "sim" / "particles.star"), "-o", str(run), "--steps", "2",
                 "--set", "batch_size=16", "--set", "eval_n=8", "--no-progress"]) == 0
    (tmp_path / "sim").rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["predict", str(run), str(tmp_path / "moved" / "particles.star"), "-o", str(tmp_path / "p.star")]) == 0
    from eqcryo.data import load_particles
    p = load_particles(tmp_path / "p.star")
    with open(run / "predicted_poses.pkl", "rb") as fh:
        rot, _ = pickle.load(fh)
    np.testing.assert_allclose(p.rotations, rot, atol=1e-5)  # the same encoder, the same images
    assert main(["predict", str(run), str(tmp_path / "moved" / "particles_000.mrcs"), "-o", str(tmp_path / "q.pkl"),
                 "--ctf", str(tmp_path / "moved" / "ctf.pkl")]) == 0


@pytest.mark.slow
def test_recipes_are_listed_and_the_demo_recipe_equals_its_flags(tiny, tmp_path, capsys):
    """`--recipe one-refinement` is exactly the 13 recipe flags the demo used to copy (scaled down by the
    same --set overrides for a few dozen steps): the same metrics.csv, every number but times."""
    assert main(["train", "--list-recipes"]) == 0
    listed = capsys.readouterr().out
    assert {"one-refinement", "cpu-amortized", "paper", "default"} <= {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert "optimisation.lr " in listed and "refinement.start_images " in listed  # every key with its meaning
    small = dict(lowpass_images=600, refine_images=320, distill_band=6, eval_n=32, eval_every=1e9)
    assert main(["train", str(tiny / "particles.star"), "-o", str(tmp_path / "recipe"), "--recipe", "one-refinement",
                 "--steps", "24", "--seed", "2", "--no-progress", "--gt-poses", str(tiny / "gt_poses.pkl")]
                + [a for k, v in small.items() for a in ("--set", f"{k}={v}")]) == 0
    # the flags of scripts/demo.sh before recipes existed (commit 9dd451f), with the same overrides
    flags = dict(model="d4-l2", profile="cpu", encoder_bin=2, batch_size=32, lr=1e-3, lr_decoder=1e-2,
                 lowpass_start=8, lowpass_images=300000, view_prior=1.0, refine_images=286000, refine_iters=3,
                 distill_band=16, eval_every=60)
    flags.update(small)
    Trainer(TrainConfig.from_dict(dict(particles=str(tiny / "particles.star"), out=str(tmp_path / "flags"), steps=24,
                                       seed=2, gt_poses=str(tiny / "gt_poses.pkl"), **flags))).run(progress=False)
    timeless = []
    for d in ("recipe", "flags"):
        with open(tmp_path / d / "metrics.csv", newline="") as fh:
            timeless.append([{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in csv.DictReader(fh)])
    assert len(timeless[0]) == 3 and timeless[0] == timeless[1]  # start, after the refinement, end
    assert (tmp_path / "recipe" / "refinement.json").exists()


@pytest.mark.slow
def test_clock_is_wall_time_with_evaluation_apart(tiny, tmp_path):
    """train_seconds + eval_seconds account for the wall time of the training phase (within 10%),
    with evaluations every 0.3 s taking a real share of it."""
    tr = Trainer(_cfg(tiny, tmp_path / "r", steps=40, eval_every=0.3))
    summary = tr.run(progress=False)
    accounted = summary["train_seconds"] + summary["eval_seconds"]
    assert abs(accounted - summary["wall_seconds"]) <= 0.1 * summary["wall_seconds"], summary
    rows = list(csv.DictReader(open(tmp_path / "r" / "metrics.csv")))
    assert len(rows) >= 3 and summary["eval_seconds"] > 0
    assert [float(r["train_seconds"]) for r in rows] == sorted(float(r["train_seconds"]) for r in rows)


def test_clock_counts_what_happens_outside_evaluation(monkeypatch):
    """On a fake wall clock (deterministic, no sleeping): time outside evaluation is training."""
    import eqcryo.training.schedule as schedule
    from eqcryo.training.schedule import Clock
    now = [100.0]
    monkeypatch.setattr(schedule.time, "perf_counter", lambda: now[0])

    def sleep(dt):
        now[0] += dt
    c = Clock()
    c.start()
    sleep(0.2)  # e.g. waiting for data: training time
    with c.excluded():
        sleep(0.3)
    assert 0.18 < c.tick() < 0.3 and 0.28 < c.eval_seconds < 0.4
    c2 = Clock()
    c2.load_state_dict(c.state_dict())  # a resumed run continues the clock
    c2.start()
    sleep(0.05)
    assert c2.tick() > c.train_seconds + 0.04 and c2.eval_seconds == c.eval_seconds


@pytest.mark.slow
def test_images_in_memory_train_exactly_as_images_read_from_disk(tiny, tmp_path):
    """preload (the whole stack in device memory, batches by indexing) changes where images come
    from, not what they are: the same model after the same steps, bit for bit."""
    a = Trainer(_cfg(tiny, tmp_path / "mem", steps=5, preload=True))
    b = Trainer(_cfg(tiny, tmp_path / "disk", steps=5, preload=False))
    assert a.data.ds.memory is not None and b.data.ds.memory is None
    a.run(progress=False)
    b.run(progress=False)
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(x, y, atol=0, rtol=0, msg=k)


def test_half_maps_at_the_true_poses_resolve_the_data(tiny):
    """The no-ground-truth resolution: half-maps of the tiny set (SNR 2) at its true poses agree to
    near Nyquist; at random poses they do not."""
    from eqcryo.data import load_particles
    from eqcryo.data.dataset import ParticleDataset
    from eqcryo.training.inference import half_map_fsc
    t = load_particles(tiny / "particles.star")
    ds = ParticleDataset(t)
    _, _, rec = half_map_fsc(ds, t)
    assert rec["masked"]["resolution_0.143"] < 2.5 * 2 * 13.2  # Nyquist is 26.4 Å
    t2 = t.subset(np.arange(t.n))
    t2.rotations = random_rotations(t.n, torch.Generator().manual_seed(0)).numpy()
    _, _, bad = half_map_fsc(ds, t2)
    assert bad["masked"]["resolution_0.143"] is None or bad["masked"]["resolution_0.143"] > 2 * rec["masked"]["resolution_0.143"]


def test_report_html_is_one_self_contained_page(tiny, tmp_path):
    """report.html embeds every figure (decodable PNGs, no external file), and carries the facts:
    command, contrast decision, resolution without ground truth. When Chromium is installed it
    renders the page headless to a screenshot."""
    import base64
    import re
    import shutil
    import subprocess
    out = tmp_path / "r"
    assert main(["train", str(tiny / "particles.star"), "-o", str(out), "--steps", "2", "--set", "batch_size=16",
                 "--set", "eval_n=16", "--gt-poses", str(tiny / "gt_poses.pkl"), "--gt-volume",
                 str(tiny / "gt_volume.mrc"), "--no-progress"]) == 0
    page = (out / "report.html").read_text()
    imgs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(imgs) == 5  # loss, pose error, FSC, map, viewing directions
    assert all(base64.b64decode(x)[:8] == b"\x89PNG\r\n\x1a\n" for x in imgs)
    assert not re.search(r"src=['\"](?!data:)", page)  # nothing loaded from outside the file
    for fact in ("command: <code>eqcryo train", "contrast: as in the image model", "resolution without ground truth",
                 "against the ground truth"):
        assert fact in page, fact
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:
        shot = tmp_path / "shot.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                        "--window-size=1000,3000", (out / "report.html").as_uri()], capture_output=True, timeout=120)
        assert shot.exists() and shot.stat().st_size > 20000


def test_refinement_trigger_repeats_and_resumes():
    """Once by default; with ``every`` at after, after+every, ... up to ``rounds``; the count is
    its state (an old checkpoint's ``done`` flag reads as one round run)."""
    from eqcryo.training.schedule import RefinementTrigger
    t = RefinementTrigger(100)
    assert not t.due(99) and t.due(100)
    t.fired()
    assert t.done and not t.due(10 ** 9)
    t = RefinementTrigger(100, every=50, rounds=3)
    fired = []
    for seen in range(0, 1000, 10):
        if t.due(seen):
            t.fired()
            fired.append(seen)
    assert fired == [100, 150, 200] and t.done
    v = RefinementTrigger(100, every=50)
    v.fired()
    assert v.due(150) and not v.due(150, settled=True)  # a settled round ends the repeats
    w = RefinementTrigger(100, every=50, min_rounds=3)
    w.fired()
    w.fired()
    assert w.due(200, settled=True)  # ... but not before round min_rounds
    w.fired()
    assert not w.due(250, settled=True) and w.due(250)
    u = RefinementTrigger(100, every=50)
    u.load_state_dict({"count": 2})
    assert u.next_at() == 200 and not u.done
    u.load_state_dict({"done": True})
    assert u.count == 1
    assert RefinementTrigger(None).done and not RefinementTrigger(None).due(10 ** 9)


def test_match_check_reads_like_the_pose_error_without_ground_truth(tmp_path):
    """The held-out check searches the images in a map from the encoder's poses: in the true map
    from the true poses it reads ~0; from poses all turned 20° it reads ≈ 8 sin²(10°) = 0.24
    (the search puts them back); an empty map reads None (no evidence, not agreement)."""
    from eqcryo.physics.rotations import axis_angle_to_matrix
    from eqcryo.training.batches import TrainingData
    from eqcryo.training.evaluator import Evaluator, GroundTruth

    d = tmp_path / "sim"
    simulate(SimulationConfig(n=120, box=32, apix=13.2, seed=5, snr=None, trans_std_angstrom=15.0), d, progress=False)
    cfg = _cfg(d, tmp_path / "r", invert_contrast="no")
    data = TrainingData(cfg)
    gt = GroundTruth.load(cfg, data.n, data.box, data.apix)
    ev = Evaluator(data, gt)
    ids = data.eval_ids
    vol = gt.volume * data.scale
    R, origin = gt.R[ids], gt.origin[ids]  # RELION origins (Å), as infer() returns them
    m = ev.match_check(vol, R, origin, None)
    assert m["match_mse"] < 0.01 and m["match_median_deg"] < 2
    turn = axis_angle_to_matrix(torch.tensor([0.0, 0.0, np.radians(20.0)], dtype=torch.float64))
    m = ev.match_check(vol, R @ turn, origin, None)
    assert 0.18 < m["match_mse"] < 0.3 and 15 < m["match_median_deg"] < 25
    assert m["match_scatter"] < 0.01  # noiseless images in their own map: the search scatters nowhere
    assert ev.match_check(torch.zeros_like(vol), R, origin, None)["match_mse"] is None


def test_train_probe_measures_training_particles_against_their_true_poses(tmp_path, monkeypatch):
    """With ground truth, as many training particles as held-out ones are measured: an encoder
    right on its training images and random on the held-out ones (memorisation) reads a training
    MSE ~0 next to a held-out MSE at the random level."""
    import eqcryo.training.evaluator as evaluator
    from eqcryo.physics.rotations import random_rotations
    from eqcryo.training.batches import TrainingData

    d = tmp_path / "sim"
    simulate(SimulationConfig(n=200, box=32, apix=13.2, seed=5, snr=None), d, progress=False)
    cfg = _cfg(d, tmp_path / "r", invert_contrast="no")
    data = TrainingData(cfg)
    gt = evaluator.GroundTruth.load(cfg, data.n, data.box, data.apix)
    ev = evaluator.Evaluator(data, gt)
    probe = ev.train_probe_ids
    assert len(probe) == len(data.eval_ids) and not set(probe) & set(data.eval_ids)
    assert set(probe) <= set(data.train_ids) and len(set(probe)) == len(probe)
    assert probe.min() < 0.2 * data.n and probe.max() > 0.8 * data.n  # spread over the stack
    train = set(data.train_ids.tolist())

    def memorised(model, ds, ids, band_radius=None):
        rnd = random_rotations(len(ids), generator=torch.Generator().manual_seed(0)).double()
        R = torch.stack([gt.R[i] if int(i) in train else rnd[k] for k, i in enumerate(ids)])
        return R, torch.zeros(len(ids), 2, dtype=torch.float64), torch.zeros(len(ids))

    monkeypatch.setattr(evaluator, "infer", memorised)
    m = ev.train_probe(None, None)
    assert m["train_pose_mse"] < 1e-6
    held = evaluator.pose_metrics(memorised(None, None, data.eval_ids)[0], gt.R[data.eval_ids])[0]
    assert held["pose_mse"] > 2.0
    assert evaluator.Evaluator(data, evaluator.GroundTruth()).train_probe(None, None) == {}


def test_stop_rule_needs_a_settled_refinement_and_a_low_match():
    from eqcryo.training.schedule import StopRule
    s = StopRule(None, 600, match_mse=0.08)
    s.observe({"match_mse": 0.01, "step": 5, "train_seconds": 50}, settled=False)
    assert not s.done(5, 50)  # agreement before the search has settled does not count
    s.observe({"match_mse": 0.09, "step": 6, "train_seconds": 60}, settled=True)
    assert not s.done(6, 60)
    s.observe({"match_mse": 0.07, "step": 7, "train_seconds": 70}, settled=True)
    assert s.done(7, 70) and s.finished["train_seconds"] == 70
    t = StopRule(None, 600, match_mse=0.08)
    t.load_state_dict(s.state_dict())
    assert t.done(8, 71)  # a resumed run keeps the decision
    assert not StopRule(None, 600).done(1, 1) and StopRule(None, 600).done(1, 600)


def test_the_stop_rule_takes_the_search_own_error_off_but_never_more_than_half():
    from eqcryo.training.schedule import StopRule, match_excess
    # two searches differ by twice the search's error: half the scatter is the search's share
    assert match_excess(0.102, 0.068) == pytest.approx(0.068)
    assert match_excess(0.5, 0.9) == pytest.approx(0.25)  # a map the search cannot read: at most half
    assert match_excess(0.07, None) == 0.07 and match_excess("", "0.1") is None  # older rows: as before
    s = StopRule(None, 600, match_mse=0.08)
    s.observe({"match_mse": 0.102, "match_scatter": 0.02, "step": 6, "train_seconds": 60}, settled=True)
    assert not s.done(6, 60)
    s.observe({"match_mse": 0.102, "match_scatter": 0.068, "step": 7, "train_seconds": 70}, settled=True)
    assert s.done(7, 70) and s.finished["match_excess"] == pytest.approx(0.068)
    assert "match_scatter" in s.finished["rule"]
    t = StopRule(None, 600, match_mse=0.08)
    t.observe({"match_mse": 0.17, "match_scatter": 0.4, "step": 7, "train_seconds": 70}, settled=True)
    assert not t.done(7, 70)  # 0.17 less at most 0.085 is not agreement


@pytest.mark.slow
def test_rounds_on_a_large_set_search_a_fixed_subset_and_train_on_it(tiny, tmp_path):
    """refinement.max_particles: a round searches a seeded subset of the training particles (the
    same every round), only they get targets, and batches then come from them alone."""
    tr = Trainer(_cfg(tiny, tmp_path / "r", steps=12, refine_images=48, refine_every=48, refine_iters=1,
                      refine_max_particles=40))
    tr.run(progress=False)
    sub = tr.refinement.searched(tr.data.train_ids)
    assert len(sub) == 40 and np.isin(sub, tr.data.train_ids).all() and len(tr.data.train_ids) > 40
    assert np.array_equal(sub, tr.refinement.searched(tr.data.train_ids))  # fixed by the seed
    assert np.array_equal(tr.data.active_ids, sub)
    assert tr.refinement.target_R is not None
    has_target = tr.refinement.target_R.abs().sum((1, 2)) > 0
    assert np.array_equal(np.nonzero(has_target.numpy())[0], sub)
