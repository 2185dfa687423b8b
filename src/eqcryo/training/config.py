"""What a training run is: :class:`TrainConfig`, in typed sections that validate themselves.

One source of truth per default: the fields of the section dataclasses below, each with its
one-line meaning (``--list-recipes`` and ``train --help`` print them). A run's configuration is

    defaults  <-  recipe  <-  --set section.key=value  <-  command-line options

and is written whole to ``RUN/config.yaml`` in the same sections (``--resume`` reads it back).

A *recipe* is a YAML file of sections (package data in ``eqcryo/training/recipes/``, or any
file); it may ``extends:`` another recipe and carries a one-line ``description:``. Recipes,
``--set`` and run folders written before the sections existed use flat keys (``lr``,
``refine_images``, ``encoder_bin`` ...): :data:`FLAT_KEYS` maps each to its section and name, so
they are still read.
"""

from __future__ import annotations

import math
import os
from dataclasses import MISSING, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ..data.errors import InputError
from ..models.presets import PRESETS, PROFILES

#: the recipe ``eqcryo train`` uses when none is named (docs/training.md says why)
DEFAULT_RECIPE = "default"

__all__ = ["DEFAULT_RECIPE", "FLAT_KEYS", "SECTIONS", "TrainConfig", "check_device", "describe_keys",
           "list_recipes", "load_recipe", "make_config", "parse_sets", "resolve_device"]


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when PyTorch sees a CUDA GPU, else ``cpu``; any other device as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, in one line rather than deep in torch."""
    import torch

    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r}: this machine has no CUDA GPU that PyTorch can use; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        raise InputError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")


# ----------------------------------------------------------------------------- typed options
def opt(default: Any, kind: str, help: str, *, choices: tuple = (), settable: bool = True) -> Any:
    """A config field: its default, its kind (what values it takes, checked by
    :meth:`Section.validate`) and its one-line meaning.

    kinds: ``pos`` number > 0, ``posint`` whole number > 0, ``nonneg`` number >= 0, ``nonnegint``,
    ``fraction`` number in [0, 1], ``bool``, ``choice`` (one of ``choices``), ``path``, ``text``,
    ``any``. Every kind but ``bool``/``choice``/``path``/``text``/``any`` may be None when the
    default is None. NaN and infinity are refused for every number."""
    return field(default=default, metadata={"kind": kind, "help": help, "choices": choices, "settable": settable})


def _check(section: str, name: str, kind: str, choices: tuple, value: Any, nullable: bool) -> Any:
    """``value`` checked against ``kind`` (one line naming ``section.name`` otherwise); whole numbers
    given as floats (1e5) become ints."""
    key = f"{section}.{name}"
    if value is None:
        if nullable or kind == "any":
            return None
        raise InputError(f"{key}: a value is required")
    if kind == "bool":
        if not isinstance(value, bool):
            raise InputError(f"{key} {value!r}: expected true or false")
        return value
    if kind == "choice":
        if isinstance(value, bool) and {"yes", "no"} <= set(choices):  # YAML reads a bare yes/no as a boolean
            value = "yes" if value else "no"
        if value not in choices:
            raise InputError(f"{key} {value!r}: expected one of {', '.join(map(str, choices))}")
        return value
    if kind in ("path", "text"):
        if not isinstance(value, str) or (kind == "path" and not value):
            raise InputError(f"{key} {value!r}: expected a {'file name' if kind == 'path' else 'string'}")
        return value
    if kind == "any":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{key} {value!r}: expected a number")
    if not math.isfinite(value):
        raise InputError(f"{key} {value!r}: expected a finite number")
    if kind in ("posint", "nonnegint"):
        if not float(value).is_integer():
            raise InputError(f"{key} {value!r}: expected a whole number")
        value = int(value)
    lo_ok = {"pos": value > 0, "posint": value > 0, "nonneg": value >= 0, "nonnegint": value >= 0,
             "fraction": 0 <= value <= 1}[kind]
    if not lo_ok:
        need = {"pos": "> 0", "posint": ">= 1", "nonneg": ">= 0", "nonnegint": ">= 0", "fraction": "from 0 to 1"}[kind]
        raise InputError(f"{key} {value!r}: must be {need}")
    return value


@dataclass
class Section:
    """A group of options; :meth:`validate` checks every field by its kind."""

    NAME: ClassVar[str] = ""

    def validate(self) -> Section:
        for f in fields(self):
            nullable = f.default is None
            setattr(self, f.name, _check(self.NAME, f.name, f.metadata["kind"], f.metadata["choices"],
                                         getattr(self, f.name), nullable))
        return self

    @classmethod
    def from_dict(cls, d: dict, origin: str) -> Section:
        if not isinstance(d, dict):
            raise InputError(f"{origin}: section {cls.NAME!r}: expected a mapping of options, found "
                             f"{type(d).__name__}")
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise InputError(f"{origin}: unknown option(s) {', '.join(f'{cls.NAME}.{b}' for b in bad)}; "
                             f"{cls.NAME} has {', '.join(sorted(known))}")
        return cls(**d)


@dataclass
class DataConfig(Section):
    """The particles and how to read them."""

    NAME: ClassVar[str] = "data"
    particles: str = opt("", "text", "particles: .star, .cs, or .mrcs (with --ctf or data.no_ctf)", settable=False)
    ctf: str | None = opt(None, "path", "cryoDRGN CTF .pkl replacing or supplying the file's CTF")
    no_ctf: bool | None = opt(False, "any", "use no CTF (CTF-free or phase-flipped images); a CTF in the file is "
                                      "then ignored")
    datadir: str | None = opt(None, "path", "folder of the image stacks named in the metadata")
    apix: float | None = opt(None, "pos", "pixel size in Å (None: the file's)")
    invert_contrast: str = opt("auto", "choice", "multiply the images by -1: auto decides from the data",
                               choices=("auto", "yes", "no"))
    preload: bool | None = opt(None, "any", "hold the stack in memory (true), read lazily (false), or by size (null)")
    working_box: int | None = opt(None, "posint", "train on the images Fourier-cropped to this even box (None: the "
                                                  "stack's box up to 64 px, else 64)")


@dataclass
class ModelConfig(Section):
    """The encoder (poses) and decoder (map)."""

    NAME: ClassVar[str] = "model"
    name: str = opt("d4-l2", "choice", "encoder and loss: standard, c4-l2, c4-mirror or d4-l2",
                    choices=tuple(PRESETS))
    profile: str = opt("cpu", "choice", "widths: cpu (quarter widths, voxel decoder) or paper (cryoAI sizes)",
                       choices=tuple(PROFILES))
    decoder: str | None = opt(None, "any", "voxel or fouriernet (None: the profile's)")
    rotation_param: str = opt("gram_schmidt", "choice", "6-D to SO(3) map of the standard encoder",
                              choices=("gram_schmidt", "svd"))
    encoder_input_bin: int | None = opt(None, "posint", "the encoder sees the mean of bin x bin pixel blocks "
                                                        "(None: 1)")
    hypotheses: int = opt(1, "posint", "K pose hypotheses per image (equivariant encoders; 1 = the paper)")
    encoder_bf16: bool = opt(False, "bool", "run the encoder trunk in bfloat16 (CPUs with AVX512-BF16)")


@dataclass
class OptimisationConfig(Section):
    """How long and how the amortized stage learns."""

    NAME: ClassVar[str] = "optimisation"
    seed: int = opt(0, "nonnegint", "seed of the held-out split, batch order and initial weights")
    steps: int | None = opt(None, "posint", "stop after this many steps")
    time_budget_seconds: float | None = opt(None, "pos", "stop after this much training wall time "
                                                         "(evaluation excluded)")
    batch_size: int = opt(64, "posint", "images per step (all processes together)")
    lr: float = opt(1e-4, "pos", "Adam learning rate of the encoder")
    lr_decoder: float | None = opt(None, "pos", "Adam learning rate of the decoder (None: lr)")
    grad_clip: float = opt(1.0, "pos", "gradient norm clip")
    lowpass_start_shells: float | None = opt(None, "pos", "frequency marching: loss band at the start, in "
                                                          "Fourier shells (None: full band)")
    lowpass_images: int = opt(50000, "posint", "frequency marching: images until the band reaches Nyquist")
    view_prior: float = opt(0.0, "nonneg", "weight of the uniform-viewing-direction prior (0: off, as the paper)")


@dataclass
class RefinementConfig(Section):
    """Projection-matching rounds from the encoder's poses, distilled into the encoder (None/0: off)."""

    NAME: ClassVar[str] = "refinement"
    start_images: int | None = opt(None, "nonnegint", "first round after this many images (None: no refinement)")
    every_images: int | None = opt(None, "posint", "then again every this many images (None: once)")
    max_rounds: int | None = opt(None, "posint", "at most this many rounds (None: no limit)")
    min_rounds: int = opt(1, "posint", "a settled round ends the repeats only from this round on")
    iters: int = opt(3, "posint", "projection-matching iterations per round")
    keep: int = opt(1, "posint", "global-search candidates per particle refined locally")
    orbit: int = opt(1, "posint", "in-plane turns of each pose also tried (2: the half turn)")
    radius_shells: float = opt(16.0, "pos", "search band, in Fourier shells")
    distill_weight: float = opt(1.0, "nonneg", "weight of the pull of the encoder towards the refined poses")
    distill_band_shells: float | None = opt(None, "pos", "loss band once refined poses are targets (None: "
                                                         "the marching goes on)")
    distill_only: bool = opt(False, "bool", "once targets exist, train the encoder on them alone (no image loss)")
    distill_hypotheses: str = opt("all-once-settled", "choice", "which of K hypotheses learn a target",
                                  choices=("winner", "all-once-settled"))
    distill_augment: bool = opt(False, "bool", "turn each distillation image and its target in-plane at random")
    distill_simulate: float = opt(0.0, "fraction", "fraction of each distillation batch simulated from the map")
    max_particles: int | None = opt(20000, "posint", "rounds search at most this many training particles (a seeded "
                                                     "random subset, then the batches' particles; None: all)")
    trim: bool = opt(False, "bool", "after each round train only on the particles the refined map explains best (the "
                                    "upper group of those above the junk split), re-decided every round; for mixtures")
    finish: str = opt("auto", "choice", "the gold-standard finish at the stack's box (poses refined per half-set): "
                      "auto (when the stack is larger than the working box), yes or no", choices=("auto", "yes", "no"))
    finish_max_iters: int = opt(8, "posint", "the finish's iterations at most")
    finish_max_box: int | None = opt(None, "posint", "the final maps' box at most, then padded to the stack's "
                                                     "(None: as the resolution reached and the free memory allow)")
    finish_budget_fraction: float = opt(0.25, "fraction", "share of the time budget kept for the finish")


@dataclass
class ClassesConfig(Section):
    """Discrete classes (:mod:`.classes`): several species and junk in one stack."""

    NAME: ClassVar[str] = "classes"
    count: int = opt(1, "posint", "number of classes (maps); 1: one map, the classic run")
    junk: bool = opt(True, "bool", "a junk sink: particles no class explains better than structureless images "
                                   "with their own power spectra join no class")
    iters: int = opt(4, "posint", "classification rounds (search every particle in every class, reassign, "
                                  "reconstruct) after the classes' ab initio")
    max_iters: int = opt(12, "posint", "more classification rounds, up to this many, while a round still moves "
                                       "more than 1% of the particles between classes")
    ab_initio_fraction: float = opt(0.85, "fraction", "share of the time budget for the classes' first ab initio "
                                                      "stages (the rest: classification, classes learned again, "
                                                      "outputs)")
    revisit_purity: float = opt(0.8, "fraction", "a class whose ab initio trained on particles of which less than "
                                                 "this share end in it is learned again from its members")
    min_members: int = opt(20, "posint", "a class with fewer members is reseeded from poorly explained particles")


@dataclass
class EvaluationConfig(Section):
    """What is measured during the run, and the no-ground-truth stop rule."""

    NAME: ClassVar[str] = "evaluation"
    every_seconds: float = opt(60.0, "pos", "evaluate every this many seconds of training")
    n_images: int = opt(256, "posint", "held-out particles evaluated (at most a tenth of the set)")
    gt_poses: str | None = opt(None, "path", "ground-truth poses (.pkl), evaluation only")
    gt_volume: str | None = opt(None, "path", "ground-truth map (.mrc), evaluation only")
    track_mirror: bool = opt(False, "bool", "log the map's best mirror-plane correlation")
    stop_match_mse: float | None = opt(None, "pos", "end the run once encoder and search agree below this, "
                                                    "the search's own scatter at the data's noise taken off "
                                                    "(None: run the budget)")


@dataclass
class OutputConfig(Section):
    """Where the run is written, and its record."""

    NAME: ClassVar[str] = "output"
    dir: str = opt("", "text", "the run folder", settable=False)
    checkpoint_every_seconds: float = opt(300.0, "pos", "write checkpoint.pt every this many seconds of training")
    recipe: str | None = opt(None, "any", "the recipe this configuration started from", settable=False)
    given_paths: dict | None = opt(None, "any", "the paths as typed (they are stored absolute)", settable=False)


@dataclass
class ComputeConfig(Section):
    """Where the arithmetic runs."""

    NAME: ClassVar[str] = "compute"
    device: str = opt("auto", "text", "auto (CUDA when PyTorch sees a GPU, else CPU), cpu, cuda or cuda:N")
    threads: int | None = opt(None, "posint", "CPU threads for PyTorch (None: PyTorch's)")


#: section name -> its dataclass, in config.yaml's order
SECTIONS: dict[str, type[Section]] = {s.NAME: s for s in (DataConfig, ModelConfig, OptimisationConfig,
                                                          RefinementConfig, ClassesConfig, EvaluationConfig,
                                                          OutputConfig, ComputeConfig)}

#: the flat keys of recipes, ``--set`` and config.yaml before the sections -> (section, key).
#: Unchanged names map to themselves; the renamed say what they hold (units in names).
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "particles": ("data", "particles"), "ctf": ("data", "ctf"), "datadir": ("data", "datadir"),
    "apix": ("data", "apix"), "invert_contrast": ("data", "invert_contrast"), "preload": ("data", "preload"),
    "model": ("model", "name"), "profile": ("model", "profile"), "decoder": ("model", "decoder"),
    "so3": ("model", "rotation_param"), "encoder_bin": ("model", "encoder_input_bin"),
    "hypotheses": ("model", "hypotheses"), "encoder_bf16": ("model", "encoder_bf16"),
    "seed": ("optimisation", "seed"), "steps": ("optimisation", "steps"),
    "time_budget": ("optimisation", "time_budget_seconds"), "batch_size": ("optimisation", "batch_size"),
    "lr": ("optimisation", "lr"), "lr_decoder": ("optimisation", "lr_decoder"), "clip": ("optimisation", "grad_clip"),
    "lowpass_start": ("optimisation", "lowpass_start_shells"), "lowpass_images": ("optimisation", "lowpass_images"),
    "view_prior": ("optimisation", "view_prior"),
    "refine_images": ("refinement", "start_images"), "refine_every": ("refinement", "every_images"),
    "refine_rounds": ("refinement", "max_rounds"), "refine_min_rounds": ("refinement", "min_rounds"),
    "refine_max_particles": ("refinement", "max_particles"),
    "refine_iters": ("refinement", "iters"), "refine_keep": ("refinement", "keep"),
    "refine_orbit": ("refinement", "orbit"), "refine_radius": ("refinement", "radius_shells"),
    "distill": ("refinement", "distill_weight"), "distill_band": ("refinement", "distill_band_shells"),
    "distill_only": ("refinement", "distill_only"), "distill_hypotheses": ("refinement", "distill_hypotheses"),
    "distill_augment": ("refinement", "distill_augment"), "distill_simulate": ("refinement", "distill_simulate"),
    "eval_every": ("evaluation", "every_seconds"), "eval_n": ("evaluation", "n_images"),
    "gt_poses": ("evaluation", "gt_poses"), "gt_volume": ("evaluation", "gt_volume"),
    "track_mirror": ("evaluation", "track_mirror"), "stop_match_mse": ("evaluation", "stop_match_mse"),
    "out": ("output", "dir"), "checkpoint_every": ("output", "checkpoint_every_seconds"),
    "recipe": ("output", "recipe"), "given_paths": ("output", "given_paths"),
    "device": ("compute", "device"), "threads": ("compute", "threads"),
}
_DEAD_KEYS = ("poses", "extra")  # flat keys of early versions that no longer mean anything

#: options that name files or folders: stored absolute, so a run folder works from any directory
PATH_KEYS = (("data", "particles"), ("data", "ctf"), ("data", "datadir"), ("evaluation", "gt_poses"),
             ("evaluation", "gt_volume"), ("output", "dir"))


def _section_field(cls: type[Section]):
    return field(default_factory=cls)


@dataclass
class TrainConfig:
    """Everything a run needs, in sections; written to ``RUN/config.yaml``. Times are seconds of
    training wall time (evaluation excluded, see :mod:`.schedule`)."""

    data: DataConfig = _section_field(DataConfig)
    model: ModelConfig = _section_field(ModelConfig)
    optimisation: OptimisationConfig = _section_field(OptimisationConfig)
    refinement: RefinementConfig = _section_field(RefinementConfig)
    classes: ClassesConfig = _section_field(ClassesConfig)
    evaluation: EvaluationConfig = _section_field(EvaluationConfig)
    output: OutputConfig = _section_field(OutputConfig)
    compute: ComputeConfig = _section_field(ComputeConfig)

    def validate(self) -> TrainConfig:
        """Check every section, then what spans sections; raise :class:`InputError` naming the first
        option that makes no sense; returns self."""
        for name in SECTIONS:
            getattr(self, name).validate()
        m, o, r = self.model, self.optimisation, self.refinement
        if m.decoder not in (None, "voxel", "fouriernet"):
            raise InputError(f"model.decoder {m.decoder!r}: expected voxel or fouriernet")
        if self.data.preload not in (None, True, False):
            raise InputError(f"data.preload {self.data.preload!r}: expected true, false or null (decide by size)")
        if o.steps is None and o.time_budget_seconds is None:
            raise InputError("give --steps and/or --time-budget")
        check_device(self.compute.device)
        if r.distill_augment and not r.distill_only:
            raise InputError("refinement.distill_augment turns the images of distillation steps: it needs "
                             "refinement.distill_only (an image loss would need the CTF turned too)")
        if r.distill_simulate and not r.distill_only:
            raise InputError("refinement.distill_simulate replaces images of distillation steps by simulated ones: "
                             "it needs refinement.distill_only")
        if m.hypotheses != 1 and PRESETS[m.name][0] is None:
            raise InputError(f"model.hypotheses {m.hypotheses}: several pose hypotheses need an equivariant encoder "
                             f"(c4-l2, c4-mirror, d4-l2), not {m.name!r}")
        wb = self.data.working_box
        if wb is not None and (wb % 2 or wb < 24):
            raise InputError(f"data.working_box {wb}: expected an even box of at least 24 px")
        if self.data.no_ctf not in (True, False, None):  # (None: a run written before the rule)
            raise InputError(f"data.no_ctf {self.data.no_ctf!r}: expected true or false")
        if self.data.no_ctf and self.data.ctf:
            raise InputError("data.no_ctf and a CTF file (--ctf) contradict each other; give one")
        return self

    def to_dict(self) -> dict:
        """Nested plain mapping, section by section (config.yaml's layout)."""
        return {name: {f.name: getattr(getattr(self, name), f.name) for f in fields(getattr(self, name))}
                for name in SECTIONS}

    @classmethod
    def from_dict(cls, d: dict, origin: str = "configuration") -> TrainConfig:
        """A config from sections (``{"optimisation": {"lr": ...}}``), flat keys of older versions
        (``{"lr": ...}``), or both; unknown keys are an :class:`InputError`. Not validated."""
        nested = to_nested(d, origin)
        return cls(**{name: SECTIONS[name].from_dict(nested.get(name, {}), origin)  # type: ignore[arg-type]
                      for name in SECTIONS})

    def copy(self) -> TrainConfig:
        return TrainConfig.from_dict(self.to_dict())


def to_nested(d: Any, origin: str) -> dict[str, dict]:
    """Sections, flat keys and ``section.key`` keys of ``d`` merged into ``{section: {key: value}}``."""
    if not isinstance(d, dict):
        raise InputError(f"{origin}: expected a mapping of training options, found {type(d).__name__}")
    out: dict[str, dict] = {}
    for k, v in d.items():
        if k in SECTIONS and (isinstance(v, dict) or k not in FLAT_KEYS):  # (old flat "model: d4-l2")
            if not isinstance(v, dict):
                raise InputError(f"{origin}: section {k!r}: expected a mapping of options, found {v!r}")
            out.setdefault(k, {}).update(v)
        elif k in _DEAD_KEYS:
            continue
        else:
            section, key = _resolve_key(str(k), origin)
            out.setdefault(section, {})[key] = v
    return out


def _resolve_key(k: str, origin: str) -> tuple[str, str]:
    """``section.key`` or an old flat key -> (section, key)."""
    if "." in k:
        section, _, key = k.partition(".")
        if section not in SECTIONS:
            raise InputError(f"{origin}: unknown section {section!r} in {k!r}; sections: {', '.join(SECTIONS)}")
        return section, key  # the key is checked by the section
    if k in FLAT_KEYS:
        return FLAT_KEYS[k]
    owners = [s for s, c in SECTIONS.items() if k in {f.name for f in fields(c)}]
    if len(owners) == 1:
        return owners[0], k
    raise InputError(f"{origin}: unknown training option {k!r} (write section.key; sections: {', '.join(SECTIONS)})")


def describe_keys(settable_only: bool = True) -> list[tuple[str, Any, str]]:
    """(``section.key``, default, one-line meaning) of every option (``--help``, ``--list-recipes``)."""
    out = []
    for name, cls in SECTIONS.items():
        for f in fields(cls):
            if settable_only and not f.metadata["settable"]:
                continue
            default = f.default if f.default is not MISSING else None
            out.append((f"{name}.{f.name}", default, f.metadata["help"]))
    return out


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


def _merge(base: dict[str, dict], top: dict[str, dict]) -> dict[str, dict]:
    out = {k: dict(v) for k, v in base.items()}
    for k, v in top.items():
        out.setdefault(k, {}).update(v)
    return out


def load_recipe(name_or_path: str, _seen: tuple = ()) -> dict[str, dict]:
    """The options of a bundled recipe (by name) or of a YAML file, as sections, ``extends`` resolved."""
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
    merged = _merge(base, to_nested(d, origin))
    TrainConfig.from_dict(merged, origin)  # unknown keys named here, with the file
    return merged


def parse_sets(items: list[str] | None) -> dict[str, dict]:
    """``["optimisation.lr=1e-3", "lowpass_start=8"]`` -> sections (values read as YAML; flat keys
    of older versions accepted). Keys that are not options, or that the command line owns
    (``output.dir``, ``data.particles``), are refused."""
    out: dict[str, dict] = {}
    for it in items or []:
        key, sep, val = it.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InputError(f"--set {it!r}: expected SECTION.KEY=VALUE, e.g. --set optimisation.lr=1e-3")
        section, name = _resolve_key(key, f"--set {it!r}")
        f = {f.name: f for f in fields(SECTIONS[section])}.get(name)
        if f is None:
            raise InputError(f"--set {it!r}: {section} has no option {name!r}; it has "
                             f"{', '.join(sorted(x.name for x in fields(SECTIONS[section])))}")
        if not f.metadata["settable"]:
            raise InputError(f"--set {it!r}: {section}.{name} is set by the command line, not by --set")
        try:
            value = yaml.safe_load(val) if val.strip() else None
        except yaml.YAMLError:
            raise InputError(f"--set {it!r}: cannot read the value {val!r}") from None
        if isinstance(value, str) and f.metadata["kind"] not in ("text", "path", "choice", "any"):
            try:  # YAML reads 1e-3 as a string; numbers are numbers here
                value = float(val) if any(c in val for c in ".eEnN") else int(val)
            except ValueError:
                pass
        out.setdefault(section, {})[name] = value
    return out


def make_config(recipe: str | None = None, sets: dict | None = None, **given: Any) -> TrainConfig:
    """Defaults <- recipe <- ``sets`` (sections) <- ``given`` (flat or ``section__key`` command-line
    options that are not None), validated."""
    d = load_recipe(recipe) if recipe else {}
    d = _merge(d, to_nested(sets or {}, "--set"))
    d = _merge(d, to_nested({k.replace("__", "."): v for k, v in given.items() if v is not None},
                            "command-line options"))
    if recipe:
        d.setdefault("output", {})["recipe"] = recipe
    typed = {}
    for section, key in PATH_KEYS:
        v = d.get(section, {}).get(key)
        if v:
            typed[f"{section}.{key}"] = v
            d[section][key] = os.path.abspath(os.path.expanduser(str(v)))
    d.setdefault("output", {})["given_paths"] = typed or None
    return TrainConfig.from_dict(d, f"recipe {recipe}" if recipe else "training options").validate()
