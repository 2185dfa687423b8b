"""Build the bundled demo structure (src/eqcryo/resources/5nrl_atoms.npz) from PDB 5NRL.

PDB data are public domain. We keep only what a molmap-style map needs: heavy-atom positions
(centred on the mean position, stored as int16 in units of 0.01 Å) and atomic numbers.
Usage: python scripts/make_default_structure.py ../shared/data/5nrl.cif.gz
"""

import sys

import numpy as np

from eqcryo.data.structure import read_atoms

xyz, z = read_atoms(sys.argv[1])
centre = xyz.mean(0)
q = np.round((xyz - centre) * 100).astype(np.int64)
assert np.abs(q).max() < 32767, "coordinates do not fit int16 at 0.01 Å"
np.savez_compressed("src/eqcryo/resources/5nrl_atoms.npz", xyz_centiangstrom=q.astype(np.int16),
                    atomic_number=z.astype(np.uint8), source=np.array("PDB 5NRL heavy atoms (public domain)"))
print(f"{len(z)} atoms written")
