"""Reconstruction from known or searched poses: Fourier backprojection (fixed poses) and
projection matching (hard-EM pose search against the current map).

Builds on :mod:`eqcryo.physics` only; used by ``eqcryo backproject``/``refine`` and by training's
semi-amortized refinement.
"""
