"""``eqcryo VERB ...``: the command-line entry point.

Each verb lives in its own module with ``add_parser(subparsers)`` and ``run(args)``; bad input
(:class:`~eqcryo.data.errors.InputError`) is reported in one line, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from .. import __version__
from ..data.errors import InputError

#: verb -> module, in the order ``eqcryo --help`` lists them.
VERBS = {
    "info": "info",
    "convert": "convert",
    "simulate": "simulate",
    "project": "project",
    "backproject": "backproject",
    "train": "train",
    "evaluate": "evaluate",
    "predict": "predict",
    "select": "select",
    "refine": "refine",
    "experiment": "experiment",
    "analyze": "analyze",
    "downsample": "downsample",
    "fsc": "fsc",
}

DESCRIPTION = """\
eqcryo: cryo-EM ab initio reconstruction by equivariant amortized pose inference.

Run `eqcryo VERB --help` for the inputs, outputs, units and an example of each verb.
Units: Å for lengths and shifts, degrees for angles, kV, mm (Cs); poses follow RELION."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a bad option reported in one line (the usage is one --help away), as every
    other refusal is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="eqcryo", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"eqcryo {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    for mod in VERBS.values():
        importlib.import_module(f"eqcryo.cli.{mod}").add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad option (2, argparse has printed why)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    args.argv = argv  # the command line as given (recorded by verbs that write a report)
    rc = _run(args)
    from ..training.distributed import exit_distributed

    exit_distributed(rc)  # under torchrun: leave without the gloo teardown that can deadlock
    return rc


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"eqcryo {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"eqcryo {args.verb}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, read-only folder, an output path under a regular file, ...
        where = e.filename or "writing the output"
        print(f"eqcryo {args.verb}: error: {where}: {e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
