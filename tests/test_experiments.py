"""Experiments: Table-1 aggregation rules, consistent subsets (Eq. 32), a resumable grid, analyze."""

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from helpers import gaussian_blobs

from eqcryo.cli.main import main
from eqcryo.evaluation.analysis import (
    consistent_subset_sizes,
    mirror_symmetry_score,
    projective_plane_coords,
    view_prior_penalty,
    viewing_direction_anisotropy,
)
from eqcryo.experiments.grid import grid_runs, load_spec, run_grid, run_status
from eqcryo.experiments.report import aggregate, diagnostics_markdown, read_run, runs_markdown, table1_markdown
from eqcryo.physics.rotations import random_rotations
from eqcryo.training.rundir import RunDir


def _metrics(path, mses, times=None):
    path.mkdir(parents=True)
    times = times or [60.0 * (i + 1) for i in range(len(mses))]
    with open(path / "metrics.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "train_seconds", "pose_mse", "pose_medse", "resolution_0.5_angstrom"])
        for i, (m, t) in enumerate(zip(mses, times)):
            w.writerow([100 * (i + 1), t, m, m / 2, 20.0 - i])


def test_table1_best_three_and_dash_rule(tmp_path):
    # seeds 0-3 of d4: final MSEs 0.01, 0.02, 0.03 (all converged), 2.0 (not)
    runs = {0: [3.0, 0.05, 0.01], 1: [3.0, 0.5, 0.02], 2: [3.0, 2.0, 0.03], 3: [3.0, 2.5, 2.0]}
    res = []
    for s, m in runs.items():
        _metrics(tmp_path / f"d4_{s}", m)
        res.append(read_run(tmp_path / f"d4_{s}", "spl", "d4-l2", s))
    # standard: the third best did not converge -> dash for time/steps
    for s, m in {0: [3.0, 0.05], 1: [3.0, 0.09], 2: [3.0, 0.5]}.items():
        _metrics(tmp_path / f"std_{s}", m)
        res.append(read_run(tmp_path / f"std_{s}", "spl", "standard", s))
    assert res[0].conv_step == 200 and res[0].conv_seconds == 120.0  # first evaluation below 0.1
    assert res[2].conv_step == 300
    rows = {r["model"]: r for r in aggregate(res)}
    d4 = rows["d4-l2"]
    assert d4["best_seeds"] == [0, 1, 2]
    assert d4["mse"] == f"{np.mean([0.01, 0.02, 0.03]):.4f} ± {np.std([0.01, 0.02, 0.03]):.4f}"
    assert d4["conv_seconds"] == f"{np.mean([120, 180, 180]):.0f} ± {np.std([120, 180, 180]):.0f}"
    assert d4["converged_pct"] == 75.0
    std = rows["standard"]
    assert std["conv_seconds"] == "–" and std["conv_steps"] == "–"
    assert std["converged_pct"] == pytest.approx(200 / 3)
    md = table1_markdown(list(rows.values()))
    assert "| spl | standard |" in md and "–" in md


def test_failure_mode_indicators_average_all_seeds(tmp_path):
    # two seeds with images, geodesic error, mirror score and training-set MSE logged; a second model without them
    for s, (mses, mirror) in enumerate([([3.0, 0.5, 1.0], 0.9), ([2.0, 1.5, 1.8], 0.7)]):
        p = tmp_path / f"c4_{s}"
        p.mkdir()
        with open(p / "metrics.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["step", "train_seconds", "images_seen", "pose_mse", "pose_medse", "geodesic_median_deg",
                        "resolution_0.5_angstrom", "mirror_score", "train_pose_mse"])
            for i, m in enumerate(mses):
                w.writerow([10 * (i + 1), 60.0 * (i + 1), 1000 * (i + 1) + s, m, m, 20.0 + s, 30.0, mirror, m / 10 + s])
    _metrics(tmp_path / "std_0", [3.0, 2.0])
    res = [read_run(tmp_path / f"c4_{s}", "spl", "c4-l2", s) for s in (0, 1)]
    res.append(read_run(tmp_path / "std_0", "spl", "standard", 0))
    assert res[0].min_mse == 0.5 and res[1].min_mse == 1.5  # the lowest evaluation, not the last
    md = diagnostics_markdown(res).splitlines()
    assert md[2] == "| spl | c4-l2 | 2 | 3000 | 1.000 | 20.5 | 0.800 | 0.640 |"  # (0.1 + 1.18) / 2: the last
    assert md[3] == "| spl | standard | 1 | n/a | 2.000 | n/a | n/a | n/a |"


def test_runs_table_says_images_to_convergence_and_how_each_run_ended(tmp_path):
    # one run ended by its agreement rule after converging, one by its budget without converging
    for name, mses in {"agreed": [3.0, 0.08, 0.05], "budget": [3.0, 0.4, 0.6]}.items():
        p = tmp_path / name
        p.mkdir()
        with open(p / "metrics.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["step", "train_seconds", "images_seen", "pose_mse", "pose_medse", "resolution_0.5_angstrom",
                        "train_pose_mse", "train_pose_medse"])
            for i, m in enumerate(mses):
                w.writerow([10 * (i + 1), 60.0 * (i + 1), 32_000 * (i + 1), m, m / 2, 20.0 - i, m / 4, m / 8])
    RunDir(tmp_path / "agreed").write_summary({"steps": 30, "images_seen": 96_000, "agreement": {"step": 30}})
    RunDir(tmp_path / "budget").write_summary({"steps": 30, "images_seen": 96_000})
    res = [read_run(tmp_path / "agreed", "snr1", "d4-l2", 0), read_run(tmp_path / "budget", "snr1", "d4-l2", 1)]
    assert res[0].conv_images == 64_000 and res[1].conv_images is None
    md = runs_markdown(res).splitlines()
    assert md[2] == ("| snr1 | d4-l2 | 0 | 96,000 | 64,000 | agreement rule at 96,000 images | 0.050 / 0.025 | 0.050 "
                     "| 0.013 / 0.006 | 18.0 |")
    assert md[3] == "| snr1 | d4-l2 | 1 | 96,000 | – | budget | 0.600 / 0.300 | 0.400 | 0.150 / 0.075 | 18.0 |"


def test_consistent_subsets_all_and_two_mirrored_halves():
    g = torch.Generator().manual_seed(0)
    N = 60
    R_gt = random_rotations(N, g)
    Q = random_rotations(1, g)[0]
    pred = R_gt @ Q.T
    assert (consistent_subset_sizes(pred, R_gt) == N).all()
    # Two internally consistent halves: the second half explained by the other of two
    # mirror-related solutions (a map with a spurious mirror plane sees its images at
    # R_gt M Qᵀ, M a π rotation about an in-plane axis). Each half has its own global alignment.
    M = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    half = pred.clone()
    half[N // 2:] = R_gt[N // 2:] @ M @ Q.T
    sizes = consistent_subset_sizes(half, R_gt)
    assert (sizes == N // 2).all()
    # whereas images put in the opposite hand are each consistent only with themselves
    D = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    flipped = pred.clone()
    flipped[N // 2:] = D @ pred[N // 2:] @ D
    assert (consistent_subset_sizes(flipped, R_gt)[N // 2:] < N // 4).all()
    # a solution entirely in the other hand is one consistent set once the hand is flipped back
    mirror_world = D @ pred @ D
    assert (consistent_subset_sizes(mirror_world, R_gt, hand_flipped=True) == N).all()
    assert (consistent_subset_sizes(mirror_world, R_gt) < N // 4).all()
    xy = projective_plane_coords(R_gt)
    assert (xy.norm(dim=1) <= 1 + 1e-12).all()


def test_viewing_direction_anisotropy_and_prior_on_constructed_poses():
    g = torch.Generator().manual_seed(1)
    R = random_rotations(20000, g)
    # uniform on SO(3): directions cover the sphere, second moment ≈ I/3
    assert abs(viewing_direction_anisotropy(R) - 1 / 3) < 0.02
    assert view_prior_penalty(R).item() < 1e-3
    # every image viewed along the same axis (any in-plane angle, either sign): anisotropy 1
    a = torch.rand(500, generator=g, dtype=torch.float64) * 2 * torch.pi
    Rz = torch.zeros(500, 3, 3, dtype=torch.float64)
    Rz[:, 0, 0], Rz[:, 0, 1], Rz[:, 1, 0], Rz[:, 1, 1], Rz[:, 2, 2] = a.cos(), -a.sin(), a.sin(), a.cos(), 1.0
    Rz[::2] = Rz[::2] @ torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))  # half at -z
    Q = random_rotations(1, g)[0]
    assert abs(viewing_direction_anisotropy(Rz @ Q) - 1) < 1e-12
    assert abs(view_prior_penalty(Rz @ Q).item() - 2 / 3) < 1e-12
    # the penalty's gradient pushes a collapsed batch apart (it is differentiable)
    v = (Rz[:8] @ random_rotations(8, g) * 0.1 + Rz[:8]).requires_grad_(True)
    view_prior_penalty(v).backward()
    assert v.grad.abs().sum() > 0


def test_mirror_score_finds_a_planted_mirror_plane():
    sym = gaussian_blobs(32, [(5, 2, -3), (-5, 2, -3), (0, -6, 4)], [3.0, 3.0, 3.0])
    chiral = gaussian_blobs(32, [(5, 2, -3), (-4, 6, 1), (0, -6, 4), (3, -1, 6)], [3, 2.5, 3, 2], [1, 0.7, 1.2, 0.9])
    s_sym, n = mirror_symmetry_score(sym, 64)
    s_chi, _ = mirror_symmetry_score(chiral, 64)
    assert s_sym > 0.93 and abs(n[0]) > 0.95  # the plane x = 0
    assert s_sym - s_chi > 0.08


@pytest.fixture
def spec_file(tmp_path):
    spec = {"steps": 2, "seeds": [0], "models": ["d4-l2", "standard"], "profile": "cpu",
            "train": {"batch_size": 16, "eval_n": 16, "eval_every": 1e9, "track_mirror": True},
            "datasets": {"tiny": {"simulate": {"n": 80, "box": 32, "apix": 13.2, "seed": 1, "snr": 2.0}, "snr": 2.0}}}
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


@pytest.mark.slow
def test_grid_skips_finished_and_resumes_interrupted_runs(spec_file, tmp_path, capsys):
    out = tmp_path / "exp"
    assert run_grid(str(spec_file), str(out), only=0, progress=False) == ["new"]
    spec = load_spec(spec_file)
    runs = grid_runs(spec, out)
    assert [run_status(r, spec) for r in runs] == ["done", "new"]
    # a grid run in pieces: the report tables the finished run only, and says one is missing
    for extra in ([], ["--spec", str(spec_file)]):
        assert main(["experiment", "report", str(out)] + extra) == 0
        assert "1 of 2 runs are not finished" in capsys.readouterr().out
    assert run_grid(str(spec_file), str(out), progress=False) == ["new"]  # run 0 skipped
    # extend the budget: both runs are now interrupted and continue from their checkpoints
    d = yaml.safe_load(spec_file.read_text())
    d["steps"] = 3
    spec_file.write_text(yaml.safe_dump(d))
    assert run_grid(str(spec_file), str(out), progress=False) == ["interrupted", "interrupted"]
    for r in runs:
        assert json.loads((r.path / "summary.json").read_text())["steps"] == 3
    capsys.readouterr()
    assert main(["experiment", "report", str(out), "--spec", str(spec_file)]) == 0
    text = capsys.readouterr().out
    assert "| tiny | d4-l2 |" in text and "Table 2" in text
    assert (out / "table1.csv").exists() and (out / "pose_error_tiny_d4-l2.png").exists()
    assert (out / "fsc_best_tiny.png").exists()
    # App. G figures of one run
    assert main(["analyze", str(runs[0].path)]) == 0
    for f in ("consistent_subsets.png", "projective_plane.png", "mirror_score.png", "analysis.json"):
        assert (runs[0].path / f).exists(), f


@pytest.mark.slow
def test_grid_counts_a_run_ended_by_its_agreement_rule_as_done(spec_file, tmp_path):
    """The default recipe ends a run early once encoder and search agree (stop_match_mse); with
    a larger budget such a run must not be resumed and trained past its own end."""
    out = tmp_path / "exp"
    run_grid(str(spec_file), str(out), only=0, progress=False)
    d = yaml.safe_load(spec_file.read_text())
    d["steps"] = 3
    spec_file.write_text(yaml.safe_dump(d))
    spec = load_spec(spec_file)
    run0 = grid_runs(spec, out)[0]
    assert run_status(run0, spec) == "interrupted"  # budget not reached, no rule: resumed
    s = json.loads((run0.path / "summary.json").read_text())
    s["agreement"] = {"rule": "match_mse < 0.08 after a settled refinement", "step": 2, "match_mse": 0.05}
    (run0.path / "summary.json").write_text(json.dumps(s))
    assert run_status(run0, spec) == "done"


@pytest.mark.parametrize("signum, status", [(2, 130), (15, 143)])  # Ctrl-C; a scheduler's SIGTERM
def test_an_interrupted_grid_is_a_message_and_exits_128_plus_the_signal(spec_file, tmp_path, capsys,
                                                                        monkeypatch, signum, status):
    """As `train` does: a scheduler that preempts a grid job reads 143 (128 + SIGTERM)."""
    import eqcryo.experiments.grid as grid
    from eqcryo.training.trainer import TrainingInterrupted

    def interrupted(*a, **k):
        raise TrainingInterrupted("interrupted at step 3; a checkpoint was saved", signum=signum)

    monkeypatch.setattr(grid, "run_one", interrupted)
    assert main(["experiment", str(spec_file), "-o", str(tmp_path / "exp"), "--only", "0"]) == status
    err = capsys.readouterr().err
    assert "interrupted at step 3" in err and "rerun this command" in err


def test_bad_spec_is_a_clear_error(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"seeds": [0], "models": ["d4-l2"], "datasets": {}, "steps": 1,
                                 "train": {"learning_rate": 1}}))
    assert main(["experiment", str(p), "-o", str(tmp_path / "x")]) == 2
    assert "unknown training option 'learning_rate'" in capsys.readouterr().err
    p.write_text(yaml.safe_dump({"seeds": 0, "models": ["d4-l2"], "datasets": {"a": {}}, "steps": 1}))
    assert main(["experiment", str(p), "-o", str(tmp_path / "x")]) == 2
    assert "seeds must be a non-empty list, found 0" in capsys.readouterr().err
    p.write_text(yaml.safe_dump({"seeds": [0], "models": ["d4-l2"], "datasets": {"a": {}}, "steps": 1,
                                 "recipe": "no-such-recipe"}))
    assert main(["experiment", str(p), "-o", str(tmp_path / "x")]) == 2
    assert "unknown recipe 'no-such-recipe'" in capsys.readouterr().err


def test_plot_series_groups_lines_that_share_a_label(tmp_path, monkeypatch):
    """The seeds of one model share a colour and one legend entry; distinct labels differ."""
    from eqcryo.evaluation import figures

    closed = []
    monkeypatch.setattr(figures.plt, "close", closed.append)
    figures.plot_series(tmp_path / "f.png", [("d4", [0, 1], [1.0, 0.1]), ("d4", [0, 1], [2.0, 0.2]),
                                             ("c4", [0, 1], [3.0, 0.3])], "pose MSE", title="grid")
    ax = closed[0].axes[0]
    colours = [line.get_color() for line in ax.get_lines()[:3]]
    assert colours[0] == colours[1] != colours[2]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["d4", "c4"]
    assert ax.get_title() == "grid" and (tmp_path / "f.png").stat().st_size > 0


@pytest.mark.slow
def test_a_budget_in_images_sets_each_runs_steps_from_its_batch_size(tmp_path, capsys):
    """images: 40 with batch 16 -> 3 steps (rounded up), 48 images; rerunning runs nothing."""
    spec = {"images": 40, "seeds": [0], "models": ["d4-l2"],
            "train": {"batch_size": 16, "eval_n": 16, "eval_every": 1e9},
            "datasets": {"tiny": {"simulate": {"n": 80, "box": 32, "apix": 13.2, "seed": 1}}}}
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(spec))
    assert main(["experiment", str(p), "-o", str(tmp_path / "exp"), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["started"] == 1
    s = json.loads((tmp_path / "exp" / "runs" / "tiny__d4-l2__seed0" / "summary.json").read_text())
    assert s["steps"] == 3 and s["images_seen"] == 48
    assert main(["experiment", str(p), "-o", str(tmp_path / "exp"), "--no-progress"]) == 0
    assert '"runs": 0' in capsys.readouterr().out  # done: nothing ran again
    # a larger budget resumes the run; the last line says so, not the cell's old "interrupted"
    p.write_text(yaml.safe_dump({**spec, "images": 56}))
    assert main(["experiment", str(p), "-o", str(tmp_path / "exp"), "--only", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[-1]) == {"runs": 1, "started": 0, "resumed": 1, "already_done": 0}
    assert "interrupted" not in out
    assert main(["experiment", str(p), "-o", str(tmp_path / "exp"), "--only", "0", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["already_done"] == 1
    p.write_text(yaml.safe_dump({**spec, "steps": 3}))
    assert main(["experiment", str(p), "-o", str(tmp_path / "exp2")]) == 2
    assert "give images or steps, not both" in capsys.readouterr().err


def test_convergence_figures_show_each_models_seeds_as_a_median_and_a_range(tmp_path, capsys):
    import csv

    import numpy as np

    from eqcryo.evaluation.figures import convergence_band

    # three seeds on different evaluation points: the band is the pointwise min/max, the line the median
    x1, x2, x3 = np.array([0, 100, 200]), np.array([0, 50, 150, 250]), np.array([10, 200])
    band = convergence_band([(x1, [4, 2, 1]), (x2, [5, 4, 3, 2]), (x3, [6.0, 0.5])])
    grid, med, lo, hi = band
    assert grid[0] == 10 and grid[-1] == 200  # the latest start to the earliest end
    i = np.argmin(abs(grid - 100))
    vals = [np.interp(grid[i], x1, [4, 2, 1]), np.interp(grid[i], x2, [5, 4, 3, 2]), np.interp(grid[i], x3, [6, .5])]
    assert (med[i], lo[i], hi[i]) == pytest.approx((np.median(vals), min(vals), max(vals)))
    assert convergence_band([([0.0], [1.0])]) is None
    # from an experiment folder: one figure per data set and x axis
    d = tmp_path / "exp"
    grid_json = []
    for k, (model, seed) in enumerate([("d4-l2", 0), ("d4-l2", 1), ("standard", 0)]):
        run = d / "runs" / f"ds__{model}__seed{seed}"
        run.mkdir(parents=True)
        with open(run / "metrics.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["step", "train_seconds", "images_seen", "pose_mse", "pose_medse", "train_pose_mse",
                        "train_pose_medse"])
            for s in range(4):  # only the d4-l2 runs measured their training particles
                train = [1.0 / (1 + s), 0.5 / (1 + s)] if model == "d4-l2" else ["", ""]
                w.writerow([s, 10.0 * s, 320 * s, 5.0 / (1 + s + seed), 4.0 / (1 + s + seed), *train])
        (run / "summary.json").write_text(json.dumps({"steps": 3, "train_seconds": 30.0}))  # finished
        grid_json.append({"index": k, "dataset": "ds", "model": model, "seed": seed, "path": f"elsewhere/{run.name}"})
    # a seed still training (no summary.json) is left out: it would cut every band short
    (d / "runs" / "ds__d4-l2__seed2").mkdir()
    (d / "runs" / "ds__d4-l2__seed2" / "metrics.csv").write_text("step,train_seconds,images_seen,pose_mse\n0,0,0,5\n")
    grid_json.append({"index": 3, "dataset": "ds", "model": "d4-l2", "seed": 2, "path": "elsewhere/ds__d4-l2__seed2"})
    (d / "grid.json").write_text(json.dumps(grid_json))
    assert main(["experiment", str(d), "--figures"]) == 0
    out = capsys.readouterr().out
    assert "1 of 4 runs are not finished and are left out of the figures" in out
    for name in ("convergence_ds_images.png", "convergence_ds_seconds.png"):
        assert f"wrote {d / name}" in out and (d / name).read_bytes()[:4] == b"\x89PNG"
    assert f"wrote {d / 'memorisation.png'}" in out  # held-out against training error, where logged
    import matplotlib.image

    img = matplotlib.image.imread(d / "memorisation.png")[..., :3]
    assert (img.std(-1) > 0.1).sum() > 200  # coloured lines drawn, not an empty frame


def test_a_model_keeps_its_colour_in_every_data_sets_convergence_figure(tmp_path, monkeypatch):
    import eqcryo.evaluation.figures as figures

    drawn = []
    monkeypatch.setattr(figures, "plot_convergence",
                        lambda path, curves, xlabel, colours=None: drawn.append((path.name, list(curves), colours)))
    d = tmp_path / "exp"
    grid_json = []
    # data set "b" has no finished standard run: d4-l2 must not take standard's colour there
    for k, (ds, model) in enumerate([("a", "standard"), ("a", "d4-l2"), ("b", "d4-l2")]):
        run = d / "runs" / f"{ds}__{model}__seed0"
        run.mkdir(parents=True)
        (run / "metrics.csv").write_text("step,train_seconds,images_seen,pose_mse\n0,0,0,5\n1,10,320,4\n")
        (run / "summary.json").write_text(json.dumps({"steps": 1, "train_seconds": 10.0}))
        grid_json.append({"index": k, "dataset": ds, "model": model, "seed": 0, "path": f"x/{run.name}"})
    (d / "grid.json").write_text(json.dumps(grid_json))
    assert main(["experiment", str(d), "--figures"]) == 0
    assert [(name, models) for name, models, _ in drawn] == [
        ("convergence_a_images.png", ["standard", "d4-l2"]), ("convergence_a_seconds.png", ["standard", "d4-l2"]),
        ("convergence_b_images.png", ["d4-l2"]), ("convergence_b_seconds.png", ["d4-l2"])]
    colours = {name: c for name, _, c in drawn}
    assert colours["convergence_b_images.png"]["d4-l2"] == colours["convergence_a_images.png"]["d4-l2"]
    assert colours["convergence_a_images.png"]["d4-l2"] != colours["convergence_a_images.png"]["standard"]


def test_snr_sweep_figure_has_one_panel_per_snr_level(tmp_path, capsys):
    import matplotlib.image

    d = tmp_path / "exp"
    spec = {"steps": 3, "seeds": [0], "models": ["d4-l2"],
            "datasets": {"hi": {"particles": "a.star", "snr": 1.0}, "lo": {"particles": "b.star", "snr": 0.25},
                         "clean": {"particles": "c.star"}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    d.mkdir()
    (d / "experiment.json").write_text(json.dumps({"spec": str(tmp_path / "spec.yaml")}))
    grid_json = []
    for k, ds in enumerate(spec["datasets"]):
        run = d / "runs" / f"{ds}__d4-l2__seed0"
        run.mkdir(parents=True)
        with open(run / "metrics.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["step", "train_seconds", "images_seen", "pose_mse", "pose_medse"])
            for s in range(4):
                w.writerow([s, 10.0 * s, 32 * s, 5.0 / (1 + s), 4.0 / (1 + s)])
        RunDir(run).write_summary({"steps": 3, "train_seconds": 30.0})  # finished by the spec's rule
        grid_json.append({"index": k, "dataset": ds, "model": "d4-l2", "seed": 0, "path": str(run)})
    (d / "grid.json").write_text(json.dumps(grid_json))
    assert main(["experiment", str(d), "--figures"]) == 0
    assert f"wrote {d / 'snr_sweep.png'}" in capsys.readouterr().out
    img = matplotlib.image.imread(d / "snr_sweep.png")[..., :3]
    # two panels side by side (the data set without an snr is not one): each has a coloured line
    coloured = (img.std(-1) > 0.1).any(0)
    half = img.shape[1] // 2
    assert coloured[:half].sum() > 20 and coloured[half:].sum() > 20
    # one SNR level is no sweep
    spec["datasets"].pop("lo")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    (d / "snr_sweep.png").unlink()
    (d / "grid.json").write_text(json.dumps([g for g in grid_json if g["dataset"] != "lo"]))
    assert main(["experiment", str(d), "--figures"]) == 0
    assert not (d / "snr_sweep.png").exists()


def test_a_moved_experiment_folder_reports_its_runs_with_the_recorded_spec(tmp_path, capsys):
    # a grid run elsewhere (grid.json's paths point to a folder that no longer exists), copied here
    spec = {"steps": 3, "seeds": [0, 1], "models": ["d4-l2"],
            "datasets": {"hi": {"particles": "a.star", "snr": 1.0}, "lo": {"particles": "b.star", "snr": 0.25}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    d = tmp_path / "copied"
    d.mkdir()
    (d / "experiment.json").write_text(json.dumps({"spec": str(tmp_path / "spec.yaml")}))
    grid_json = []
    for k, (ds, seed) in enumerate([("hi", 0), ("hi", 1), ("lo", 0), ("lo", 1)]):
        name = f"{ds}__d4-l2__seed{seed}"
        grid_json.append({"index": k, "dataset": ds, "model": "d4-l2", "seed": seed,
                          "path": f"/cluster/scratch/exp/runs/{name}"})
        if (ds, seed) == ("lo", 1):
            continue  # never started
        _metrics(d / "runs" / name, [3.0, 0.05 if ds == "hi" else 0.4])
        RunDir(d / "runs" / name).write_summary({"steps": 3 if seed == 0 else 2})  # hi seed 1: budget not reached
    (d / "grid.json").write_text(json.dumps(grid_json))
    assert main(["experiment", "report", str(d)]) == 0
    out = capsys.readouterr().out
    # by the recorded spec's budget, hi seed 1 is unfinished: two runs in the tables, two left out
    assert "2 of 4 runs are not finished" in out
    runs = out.split("## Runs")[1].splitlines()
    assert [r.split(" | ")[:3] for r in runs if r.startswith("| hi") or r.startswith("| lo")] == \
        [["| hi", "d4-l2", "0"], ["| lo", "d4-l2", "0"]]
    assert "## Table 2" in out  # the SNR levels came from the recorded spec
    assert (d / "pose_error_hi_d4-l2.png").exists()
    # --status reads the same folder
    assert main(["experiment", str(d), "--status"]) == 0
    assert "| 0 | hi | d4-l2 | 0 | done |" in capsys.readouterr().out
    (d / "grid.json").write_text("[{\"index\": 0}]")
    assert main(["experiment", "report", str(d)]) == 2
    assert f"{d / 'grid.json'}: not a grid record" in capsys.readouterr().err
    (d / "grid.json").write_text(json.dumps(grid_json))
    (d / "experiment.json").write_text("{\"spec\": ")  # cut short
    assert main(["experiment", str(d), "--figures"]) == 2
    assert f"{d / 'experiment.json'}: not an experiment record" in capsys.readouterr().err


def test_snr_sweep_keeps_each_models_colour_across_panels(tmp_path):
    import matplotlib.image

    from eqcryo.evaluation.figures import plot_snr_sweep

    x = np.linspace(0, 1000, 20)
    curve = [(x, np.full(20, 1.0))]
    # level 2 has runs of model b only: b is drawn in its level-1 colour (C1, orange), not C0 (blue)
    plot_snr_sweep(tmp_path / "s.png", {"SNR 1": {"a": curve, "b": [(x, np.full(20, 3.0))]}, "SNR 0.25": {"b": curve}})
    img = matplotlib.image.imread(tmp_path / "s.png")[..., :3]
    right = img[:, img.shape[1] // 2:]
    orange = (right[..., 0] > 0.8) & (right[..., 2] < 0.3)
    blue = (right[..., 2] > 0.6) & (right[..., 0] < 0.3)
    assert orange.sum() > 300 and blue.sum() < 30
