"""eqcryo: cryo-EM ab initio reconstruction by equivariant amortized pose inference.

Layers (each imports only the ones above it):

- :mod:`eqcryo.physics`    rotations, Fourier lattice, CTF, projection, FSC, D4 actions
- :mod:`eqcryo.data`       file formats, the particle table, simulation
- :mod:`eqcryo.models`     encoders, group convolutions, decoders, losses
- :mod:`eqcryo.evaluation` pose metrics, alignment, reports
- :mod:`eqcryo.training`   the training loop
- :mod:`eqcryo.cli`        the ``eqcryo`` command
"""

__version__ = "0.1.0"
