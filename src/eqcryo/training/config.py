"""What a training run is: :class:`TrainConfig` (validated once) and the named recipes.

One source of truth per default: the fields of :class:`TrainConfig`. A *recipe* is a YAML file
of TrainConfig fields (package data in ``eqcryo/training/recipes/``, or any file); it may
``extends:`` another recipe and carries a one-line ``description:``. A run's configuration is

    TrainConfig defaults  <-  recipe  <-  --set key=value  <-  operational options

and is written whole to ``RUN/config.yaml``, the run's truth (``--resume`` reads it back).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

import yaml

from ..data.errors import InputError
from ..models.presets import PRESETS, PROFILES

#: the recipe ``eqcryo train`` uses when none is named (docs/training.md says why)
DEFAULT_RECIPE = "default"

__all__ = ["DEFAULT_RECIPE", "TrainConfig", "list_recipes", "load_recipe", "make_config", "parse_sets", "check_device"]

#: fields that name files or folders: stored absolute, so a run folder works from any directory
PATH_FIELDS = ("particles", "out", "ctf", "datadir", "gt_poses", "gt_volume")


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, in one line rather than deep in torch."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"device {device!r}: expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r}: this machine has no CUDA GPU that PyTorch can use; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        raise InputError(f"device {device!r}: expected cpu, cuda or cuda:N")

#: options that say where and how long to run, not what to learn; everything else is a recipe's
OPERATIONAL = ("particles", "out", "ctf", "datadir", "apix", "gt_poses", "gt_volume", "steps", "time_budget",
               "seed", "device", "threads", "recipe", "invert_contrast")


@dataclass
class TrainConfig:
    """Everything a run needs; written to ``RUN/config.yaml``. Units in names; times are
    seconds of training wall time (evaluation excluded, see :mod:`.schedule`)."""

    particles: str = ""
    out: str = ""
    ctf: str | None = None
    datadir: str | None = None
    apix: float | None = None
    gt_poses: str | None = None
    gt_volume: str | None = None
    # the sign of the images: "auto" decides from the data (eqcryo.reconstruction.contrast),
    # "yes" multiplies them by -1, "no" takes them as they are
    invert_contrast: str = "auto"
    recipe: str | None = None  # the recipe this configuration started from (for the record)
    given_paths: dict | None = None  # the paths above as typed (they are stored absolute)
    model: str = "d4-l2"
    profile: str = "cpu"
    decoder: str | None = None
    so3: str = "gram_schmidt"
    encoder_bin: int | None = None  # None: the profile's (average bin×bin blocks before the encoder)
    # K pose hypotheses per image from the equivariant encoder, trained winner-take-all (beyond
    # the paper; docs/training.md). 1 = the paper's single pose.
    hypotheses: int = 1
    steps: int | None = None
    time_budget: float | None = None
    seed: int = 0
    batch_size: int = 64
    lr: float = 1e-4
    lr_decoder: float | None = None
    clip: float = 1.0
    device: str = "cpu"
    threads: int | None = None
    # hold the image stack in the device's memory (True), read it lazily from disk (False), or
    # decide by size: in memory when it takes at most a quarter of the free memory (None)
    preload: bool | None = None
    eval_every: float = 60.0  # seconds of training time
    eval_n: int = 256
    checkpoint_every: float = 300.0
    # Frequency marching: the loss sees |k| < r shells, r growing linearly from
    # ``lowpass_start`` to Nyquist over ``lowpass_images`` training images (None: full band).
    lowpass_start: float | None = None
    lowpass_images: int = 50000
    # Uniform-orientation prior (beyond the paper): adds view_prior · ‖mean_b z zᵀ − I/3‖²_F over
    # each batch's predicted viewing directions z, discouraging the collapse of all images onto
    # a few viewing axes (docs/training.md). 0 = off, as the paper.
    view_prior: float = 0.0
    track_mirror: bool = False  # log the map's best mirror-plane correlation at each evaluation
    # Semi-amortized refinement (beyond the paper; docs/training.md): once ``refine_images``
    # images have been seen, the encoder's poses for the training particles seed
    # ``refine_iters`` iterations of projection matching on |k| < ``refine_radius`` shells;
    # the voxel decoder is set to the resulting map and the encoder is then also trained
    # towards the refined poses, with weight ``distill`` (chordal distance² + 0.1 · shift² px²).
    # None = off, as the paper.
    refine_images: int | None = None
    refine_every: int | None = None  # then again every this many images (None: once)
    refine_rounds: int | None = None  # at most this many refinements (None: no limit)
    # a settled round ends the repeats only from this round on: an early round can settle with a
    # minority of particles stuck in mirror-related poses, which the next round from the
    # distilled encoder's poses undoes (docs/training-notebook.md, Round 4)
    refine_min_rounds: int = 1
    refine_iters: int = 3
    refine_keep: int = 1  # global-search candidates per particle refined locally (projection_matching.MatchConfig.keep)
    refine_orbit: int = 1  # in-plane turns of each particle's pose also refined (MatchConfig.orbit; 2: the half turn)
    refine_radius: float = 16.0
    # Loss band (shells) once the refined poses are the encoder's targets (None: the
    # frequency-marching schedule goes on). The refined map already holds the higher shells, and
    # what remains is mostly teaching the encoder the refined poses: a narrower band makes each
    # step ~3.7× cheaper at 16 of 32 shells (docs/benchmarks.md), so more images in the same time.
    distill_band: float | None = None
    distill: float = 1.0
    # Once refined poses are the targets, train the encoder on them alone (no decoder read, no
    # image loss; the map stays the refined one until the next round): a step then costs the
    # encoder only, so it sees ~2-3x more images per second (docs/benchmarks.md).
    distill_only: bool = False
    # With K pose hypotheses and distill_only, which hypotheses learn a target: "winner" — each
    # image pulls only its hypothesis nearest the target (winner-take-all; the others stay free);
    # "all-once-settled" — the winner while the searches still move poses, every hypothesis once
    # a round has settled (targets trusted), so the one the image loss picks is right too. With
    # "winner" K = 4 and 8 settled their first round yet their encoders converged later than
    # K = 1 (docs/results.md).
    distill_hypotheses: str = "all-once-settled"
    # With distill_only: turn each distillation image by a random in-plane angle and its target
    # pose and shift with it (physics.group.turn_images; D4 covers only multiples of 90°). The
    # encoder fits its training particles' poses far better than held-out ones (docs/results.md).
    distill_augment: bool = False
    # With distill_only: this fraction of each distillation batch is images *simulated* from the
    # current (refined) map at uniformly random poses — the replaced particles' CTFs and target
    # shifts, Gaussian noise with the 2-D power spectrum of the data's residuals — with their true
    # poses as targets: a teacher whose poses are never wrong, with new poses and noise every
    # step. Without it the encoder learns only the searches' poses, right or wrong — at SNR 1 it
    # reproduced a settled round's ~8% wrong ones (docs/training-notebook.md, Round 7). 0 = off.
    distill_simulate: float = 0.0
    # The encoders' convolutional trunk in bfloat16 (autocast; heads and SO(3) map in float32):
    # 1.6x faster encoder forward+backward at 64 px on a CPU with AVX512-BF16 (docs/benchmarks.md)
    encoder_bf16: bool = False
    # End the run before its budget at the first evaluation after a settled refinement whose
    # held-out match_mse (encoder vs a projection-matching search in the current map; no ground
    # truth; docs/training.md) is below this (None: run the whole budget).
    stop_match_mse: float | None = None

    def validate(self) -> "TrainConfig":
        """Raise :class:`InputError` naming the first option that makes no sense; returns self."""
        if self.model not in PRESETS:
            raise InputError(f"unknown model {self.model!r}; expected one of {', '.join(PRESETS)}")
        if self.profile not in PROFILES:
            raise InputError(f"unknown profile {self.profile!r}; expected one of {', '.join(PROFILES)}")
        if self.decoder not in (None, "voxel", "fouriernet"):
            raise InputError(f"decoder {self.decoder!r}: expected voxel or fouriernet")
        if self.so3 not in ("gram_schmidt", "svd"):
            raise InputError(f"so3 {self.so3!r}: expected gram_schmidt or svd")
        if self.steps is None and self.time_budget is None:
            raise InputError("give --steps and/or --time-budget")
        check_device(self.device)
        if self.invert_contrast not in ("auto", "yes", "no"):
            raise InputError(f"invert_contrast {self.invert_contrast!r}: expected auto, yes or no")
        if self.preload not in (None, True, False):
            raise InputError(f"preload {self.preload!r}: expected true, false or null (decide by size)")
        for k in ("track_mirror", "distill_only", "distill_augment", "encoder_bf16"):
            if not isinstance(getattr(self, k), bool):
                raise InputError(f"{k} {getattr(self, k)!r}: expected true or false")
        if self.distill_augment and not self.distill_only:
            raise InputError("distill_augment turns the images of distillation steps: it needs distill_only "
                             "(an image loss would need the CTF turned too)")
        if isinstance(self.distill_simulate, bool) or not isinstance(self.distill_simulate, (int, float)) \
                or not 0 <= self.distill_simulate <= 1:
            raise InputError(f"distill_simulate {self.distill_simulate!r}: expected a fraction from 0 to 1")
        if self.distill_hypotheses not in ("winner", "all-once-settled"):
            raise InputError(f"distill_hypotheses {self.distill_hypotheses!r}: expected winner or all-once-settled")
        if self.distill_simulate and not self.distill_only:
            raise InputError("distill_simulate replaces images of distillation steps by simulated ones: it needs "
                             "distill_only")
        positive = {"batch_size": self.batch_size, "lr": self.lr, "lr_decoder": self.lr_decoder, "clip": self.clip,
                    "eval_every": self.eval_every, "eval_n": self.eval_n, "checkpoint_every": self.checkpoint_every,
                    "lowpass_start": self.lowpass_start, "lowpass_images": self.lowpass_images,
                    "refine_iters": self.refine_iters, "refine_radius": self.refine_radius, "steps": self.steps,
                    "time_budget": self.time_budget, "threads": self.threads, "encoder_bin": self.encoder_bin,
                    "hypotheses": self.hypotheses,
                    "distill_band": self.distill_band, "apix": self.apix, "stop_match_mse": self.stop_match_mse}
        for k, v in positive.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise InputError(f"{k.replace('_', '-')} {v!r}: expected a number")
            if v is not None and not v > 0:
                raise InputError(f"{k.replace('_', '-')} {v}: must be > 0")
        for k, v in {"refine_every": self.refine_every, "refine_rounds": self.refine_rounds,
                     "refine_min_rounds": self.refine_min_rounds, "refine_keep": self.refine_keep,
                     "refine_orbit": self.refine_orbit}.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise InputError(f"{k.replace('_', '-')} {v!r}: expected a whole number >= 1")
        for k, v in {"view_prior": self.view_prior, "distill": self.distill, "refine_images": self.refine_images,
                     "seed": self.seed}.items():
            if v is not None and v < 0:
                raise InputError(f"{k.replace('_', '-')} {v}: must be >= 0")
        if self.hypotheses != 1 and PRESETS[self.model][0] is None:
            raise InputError(f"hypotheses {self.hypotheses}: several pose hypotheses need an equivariant encoder "
                             f"(c4-l2, c4-mirror, d4-l2), not {self.model!r}")
        if isinstance(self.hypotheses, float) and not self.hypotheses.is_integer():
            raise InputError(f"hypotheses {self.hypotheses}: expected a whole number")
        self.hypotheses = int(self.hypotheses)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, origin: str = "configuration") -> "TrainConfig":
        """A config from a mapping of its fields; unknown keys are an :class:`InputError`."""
        if not isinstance(d, dict):
            raise InputError(f"{origin}: expected a mapping of training options, found {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise InputError(f"{origin}: unknown training option(s) {bad}")
        try:
            return cls(**d)
        except TypeError as e:
            raise InputError(f"{origin}: {e}") from None


# ----------------------------------------------------------------------------- recipes
def _recipe_dir():
    return resources.files("eqcryo.training") / "recipes"


def list_recipes() -> dict[str, str]:
    """Bundled recipe name -> its description."""
    out = {}
    for f in sorted(_recipe_dir().iterdir(), key=lambda p: p.name):
        if f.name.endswith(".yaml"):
            out[f.name[:-5]] = (yaml.safe_load(f.read_text()) or {}).get("description", "")
    return out


def load_recipe(name_or_path: str, _seen: tuple = ()) -> dict:
    """The TrainConfig fields of a bundled recipe (by name) or of a YAML file, ``extends`` resolved."""
    if name_or_path in _seen:
        raise InputError(f"recipe {name_or_path!r} extends itself (through {' -> '.join(_seen)})")
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise InputError(f"{path}: recipe file not found")
        text, origin = path.read_text(), str(path)
    else:
        f = _recipe_dir() / f"{name_or_path}.yaml"
        if not f.is_file():
            raise InputError(f"unknown recipe {name_or_path!r}; bundled recipes: {', '.join(list_recipes())} "
                             f"(or give a .yaml file)")
        text, origin = f.read_text(), f"recipe {name_or_path}"
    try:
        d = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{origin}: not valid YAML ({getattr(e, 'problem', None) or 'unreadable'}{where})") from None
    if not isinstance(d, dict):
        raise InputError(f"{origin}: expected a mapping of training options")
    d = dict(d)
    d.pop("description", None)
    parent = d.pop("extends", None)
    base = load_recipe(parent, _seen + (name_or_path,)) if parent else {}
    TrainConfig.from_dict({**base, **d}, origin)  # unknown keys named here, with the file
    return {**base, **d}


def parse_sets(items: list[str] | None) -> dict:
    """``["lr=1e-3", "lowpass_start=8"]`` -> ``{"lr": 0.001, "lowpass_start": 8}`` (values read as YAML)."""
    out = {}
    for it in items or []:
        key, sep, val = it.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InputError(f"--set {it!r}: expected KEY=VALUE, e.g. --set lr=1e-3")
        try:
            out[key] = yaml.safe_load(val) if val.strip() else None
        except yaml.YAMLError:
            raise InputError(f"--set {it!r}: cannot read the value {val!r}") from None
        if isinstance(out[key], str) and key in {f.name for f in fields(TrainConfig)}:
            # YAML reads 1e-3 as a string; numbers are numbers here
            try:
                out[key] = float(val) if any(c in val for c in ".eE") else int(val)
            except ValueError:
                pass
    return out


def recipe_keys() -> list[str]:
    """The keys a recipe (or --set) may hold: the fields of TrainConfig that are not operational."""
    return [f.name for f in fields(TrainConfig) if f.name not in OPERATIONAL + ("given_paths",)]


def make_config(recipe: str | None = None, sets: dict | None = None, **operational) -> TrainConfig:
    """Defaults <- recipe <- ``sets`` <- ``operational`` (those that are not None), validated."""
    d = load_recipe(recipe) if recipe else {}
    d.update(sets or {})
    d.update({k: v for k, v in operational.items() if v is not None})
    if recipe:
        d["recipe"] = recipe
    given = {k: d[k] for k in PATH_FIELDS if d.get(k)}
    for k, v in given.items():
        d[k] = os.path.abspath(os.path.expanduser(str(v)))
    d["given_paths"] = given or None
    cfg = TrainConfig.from_dict(d, f"recipe {recipe}" if recipe else "training options")
    # a value of the wrong type (e.g. --set batch_size=abc) is caught here, not deep in torch
    for f in fields(TrainConfig):
        v = getattr(cfg, f.name)
        if v is None or f.name in ("recipe", "given_paths"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, bool) and not isinstance(v, bool):
            raise InputError(f"{f.name}: expected true or false, got {v!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool) and \
                (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise InputError(f"{f.name}: expected a number, got {v!r}")
    return cfg.validate()
