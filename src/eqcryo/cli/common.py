"""Helpers shared by the verbs: formatter, common options."""

from __future__ import annotations

import argparse
import json
from typing import Any


def positive_int(s: str) -> int:
    """argparse type: an integer > 0."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def nonneg_int(s: str) -> int:
    """argparse type: an integer >= 0 (seeds)."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def positive_float(s: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
    return v


def nonneg_float(s: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not (v >= 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {s}")
    return v


def fraction(s: str) -> float:
    """argparse type: a number from 0 to 1."""
    v = nonneg_float(s)
    if v > 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {s}")
    return v


def verb_parser(sub, name: str, help: str, description: str, example: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description + "\n\nexample:\n  " + example,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_particle_options(p: argparse.ArgumentParser, particles_option: bool = True) -> None:
    p.add_argument("--datadir", help="folder to look for image stacks named in the metadata "
                                      "(default: relative to the metadata file)")
    p.add_argument("--box", type=int, help="box size in pixels (overrides the file; needed for pose .pkl input)")
    p.add_argument("--apix", type=float, help="pixel size in Å (overrides the file)")
    p.add_argument("--poses", help="cryoDRGN pose .pkl replacing/supplying the poses")
    p.add_argument("--ctf", help="cryoDRGN CTF .pkl replacing/supplying the CTF")
    if particles_option:
        p.add_argument("--particles", help="image stack (.mrcs/.star/.txt) when INPUT is a pose .pkl")


def _rounded(x: Any, digits: int) -> Any:
    if isinstance(x, float):
        return float(f"{x:.{digits}g}")
    if isinstance(x, dict):
        return {k: _rounded(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_rounded(v, digits) for v in x]
    return x


def dumps(obj: Any, digits: int = 7, **kw: Any) -> str:
    """JSON with floats at ``digits`` significant digits: the values are float32 at heart, so
    13.2, not 13.199999809265137."""
    return json.dumps(_rounded(obj, digits), **kw)
