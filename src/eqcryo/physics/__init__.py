"""Physics: rotations, the Fourier lattice, CTF, projection, FSC and the D4 group actions.

Nothing here imports from the rest of eqcryo; every other layer builds on these conventions.
"""

from . import ctf, fsc, group, lattice, projection, rotations

__all__ = ["ctf", "fsc", "group", "lattice", "projection", "rotations"]
