"""The training configuration: typed sections that validate themselves, the old flat layout still read."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from eqcryo.cli.main import main
from eqcryo.data.errors import InputError
from eqcryo.data.simulate import SimulationConfig, simulate
from eqcryo.training.config import (
    FLAT_KEYS,
    SECTIONS,
    TrainConfig,
    describe_keys,
    list_recipes,
    load_recipe,
    make_config,
    parse_sets,
)

FLAT_CONFIG = Path(__file__).parent / "data" / "config_flat_layout.yaml"


def test_every_flat_key_maps_to_a_field_of_its_section():
    for flat, (section, key) in FLAT_KEYS.items():
        assert key in SECTIONS[section].__dataclass_fields__, (flat, section, key)
    described = {k for k, _, _ in describe_keys(settable_only=False)}
    assert {f"{s}.{k}" for s, k in FLAT_KEYS.values()} <= described
    assert all(desc for _, _, desc in describe_keys(settable_only=False))  # every key says what it means


def test_flat_and_sectioned_keys_give_the_same_config():
    flat = make_config("default", parse_sets(["lr=2e-3", "refine_iters=5", "encoder_bin=1", "so3=svd"]),
                       particles="p.star", out="o", time_budget=60)
    nested = make_config("default", parse_sets(["optimisation.lr=2e-3", "refinement.iters=5",
                                                "model.encoder_input_bin=1", "model.rotation_param=svd"]),
                         particles="p.star", out="o", time_budget=60)
    assert flat.to_dict() == nested.to_dict()
    assert nested.optimisation.lr == 2e-3 and nested.refinement.iters == 5 and nested.model.rotation_param == "svd"
    assert nested.optimisation.time_budget_seconds == 60 and nested.output.recipe == "default"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("key", ["optimisation.seed", "optimisation.lr", "optimisation.view_prior",
                                 "optimisation.lowpass_start_shells", "refinement.start_images",
                                 "refinement.distill_weight", "refinement.distill_simulate",
                                 "evaluation.stop_match_mse", "evaluation.every_seconds"])
def test_nan_and_infinity_are_refused_in_every_numeric_option(key, value):
    section, name = key.split(".")
    with pytest.raises(InputError, match=rf"{key} .*: expected a finite number"):
        make_config("default", {section: {name: value}}, particles="p.star", out="o", steps=1)


def test_sections_refuse_wrong_types_and_unknown_keys():
    with pytest.raises(InputError, match="model.hypotheses 2.5: expected a whole number"):
        make_config(None, {"model": {"hypotheses": 2.5}}, steps=1)
    with pytest.raises(InputError, match="evaluation.track_mirror 'yes': expected true or false"):
        make_config(None, {"evaluation": {"track_mirror": "yes"}}, steps=1)
    with pytest.raises(InputError, match="unknown option.*model.width"):
        TrainConfig.from_dict({"model": {"width": 3}})
    with pytest.raises(InputError, match="unknown section 'optim'"):
        parse_sets(["optim.lr=1"])
    assert make_config(None, {"refinement": {"start_images": 1e5}}, steps=1).refinement.start_images == 100000


def test_bundled_recipes_load_and_round_trip_through_config_yaml():
    for name in list_recipes():
        cfg = make_config(name, None, particles="p.star", out="o", steps=1)
        again = TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))).validate()
        assert again.to_dict() == cfg.to_dict()
    assert load_recipe("default")["refinement"]["distill_only"] is True


def test_a_recipe_file_of_flat_keys_is_still_read(tmp_path):
    f = tmp_path / "old.yaml"
    f.write_text("extends: cpu-amortized\nmodel: c4-mirror\nrefine_images: 5000\ndistill_band: 12\n")
    cfg = make_config(str(f), None, steps=1)
    assert (cfg.model.name, cfg.refinement.start_images, cfg.refinement.distill_band_shells) == ("c4-mirror", 5000, 12)
    assert cfg.optimisation.lowpass_images == 300000  # from cpu-amortized


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    simulate(SimulationConfig(n=120, box=32, apix=13.2, seed=3, snr=2.0), d / "sim", progress=False)
    return d


@pytest.mark.slow
def test_a_run_folder_with_the_flat_config_layout_evaluates_predicts_and_resumes(tiny, tmp_path, capsys):
    """A run written before the sections (its config.yaml as eqcryo wrote it then, tests/data):
    evaluate, predict and train --resume read it as it was trained."""
    sim, run = tiny / "sim", tmp_path / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "--steps", "2", "--set", "batch_size=16",
                 "--set", "eval_n=16", "--gt-poses", str(sim / "gt_poses.pkl"), "--no-progress"]) == 0
    resolved = yaml.safe_load((run / "config.yaml").read_text())["resolved"]
    resolved.pop("ctf")  # (recorded since the CTF rule; the old layout has no such key)
    old = FLAT_CONFIG.read_text().replace("{SIM}", str(sim)).replace("{RUN}", str(run))
    (run / "config.yaml").write_text(old + yaml.safe_dump({"resolved": resolved}))
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["step"] == 2 and math.isfinite(row["pose_mse"])
    assert main(["predict", str(run), str(sim / "particles.star"), "-o", str(tmp_path / "p.star")]) == 0
    assert (tmp_path / "p.star").exists()
    assert main(["train", "--resume", str(run), "--steps", "4", "--no-progress"]) == 0
    summary = yaml.safe_load((run / "summary.json").read_text())
    assert summary["steps"] == 4
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"] == "d4-l2" and cfg["encoder_bin"] == 2  # resume leaves the run's own record as it was


@pytest.mark.slow
def test_model_shortcut_keeps_other_options_of_the_model_section(tiny, tmp_path):
    """`--model c4-l2` beside `--set model.profile=cpu-wide`: both hold (the shortcut writes into the
    model section instead of replacing it)."""
    run = tmp_path / "run"
    assert main(["train", str(tiny / "sim" / "particles.star"), "-o", str(run), "--steps", "1", "--model", "c4-l2",
                 "--set", "model.profile=cpu-wide", "--set", "batch_size=16", "--set", "eval_n=12",
                 "--no-progress"]) == 0
    m = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert (m["name"], m["profile"]) == ("c4-l2", "cpu-wide")


def test_a_bare_yes_or_no_is_read_as_the_choice_not_as_a_boolean():
    # YAML reads `no` as false: --set refinement.finish=no must still mean "no"
    cfg = make_config("default", parse_sets(["refinement.finish=no", "data.invert_contrast=yes"]),
                      particles="x.star", out="o", steps=1)
    assert (cfg.refinement.finish, cfg.data.invert_contrast) == ("no", "yes")
    with pytest.raises(InputError, match="model.name True"):
        make_config("default", parse_sets(["model.name=yes"]), particles="x.star", out="o", steps=1)
