"""Which operations of a training run read subnormal float32 values.

On some x86 CPUs every multiply with a subnormal float32 (|x| < 1.18e-38, not 0) takes a microcode
assist; a convolution whose *weights* held 16 subnormals ran ~20x slower (docs/benchmarks.md). This
runs any ``eqcryo`` command under a ``TorchDispatchMode`` that counts the subnormal values among the
float32/complex64 inputs of every aten operation, and prints the operations that saw any. Slow
(every input is scanned): use a short run. Example, a default-recipe run that reaches two
projection-matching rounds and distillation within 60 steps:

    python tools/subnormal_scan.py train demo_out/sim/particles.star -o /tmp/scan --steps 60 \
        --threads 2 --seed 2 --set refine_images=800 --set refine_every=640 --set eval_every=1e9 --no-progress

A handful of subnormal inputs per call costs nothing measurable; what matters is an operand that
every output element multiplies (a weight, a filter, a factor).
"""

from __future__ import annotations

import collections
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

TINY = torch.finfo(torch.float32).tiny


class SubnormalCounter(TorchDispatchMode):
    """Counts, per aten operation, the subnormal values among its float32/complex64 inputs."""

    def __init__(self):
        super().__init__()
        self.values: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()
        self.elements: collections.Counter = collections.Counter()  # values of the inputs that held any

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor) and t.dtype in (torch.float32, torch.complex64) and t.numel():
                v = torch.view_as_real(t.resolve_conj()) if t.is_complex() else t
                n = int(((v != 0) & (v.abs() < TINY)).sum())
                if n:
                    self.values[str(func)] += n
                    self.calls[str(func)] += 1
                    self.elements[str(func)] += v.numel()
        return func(*args, **kwargs)


def main() -> None:
    from eqcryo.cli.main import main as eqcryo_main

    counter = SubnormalCounter()
    with counter:
        rc = eqcryo_main(sys.argv[1:])
    print("| operation | calls with subnormal inputs | subnormal values | share of the values of the inputs that held any |")
    print("|---|---|---|---|")
    for op, n in counter.values.most_common(25):
        print(f"| {op} | {counter.calls[op]} | {n} | {n / counter.elements[op]:.1e} |")
    if not counter.values:
        print("| (none) | 0 | 0 | 0 |")
    sys.exit(rc)


if __name__ == "__main__":
    main()
