"""What a run trained on, in a few hundred bytes: enough to notice that the data changed.

A run records the fingerprint of its particles in ``config.yaml``; ``train --resume`` compares it
with the data found now and refuses a mismatch, naming what changed.
Only content counts (the number of particles, the box, the pixel sizes, the CTF parameters, a
sample of images), not file names or times: data moved or copied on purpose still match.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from .particles import ParticleTable

__all__ = ["fingerprint", "differences"]

#: images hashed per fingerprint, spread evenly over the stack
SAMPLE = 16


def _digest(*arrays: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def fingerprint(table: ParticleTable) -> dict[str, Any]:
    """n, box, and short hashes of the pixel sizes, the CTF parameters and a sample of images."""
    ids = np.unique(np.linspace(0, table.n - 1, min(SAMPLE, table.n)).round().astype(np.int64))
    images = table.images.read(ids) if table.images is not None else None
    ctf = None if table.ctf is None else np.stack([np.asarray(table.ctf[k], np.float64) for k in sorted(table.ctf)])
    return {"n_particles": int(table.n), "box": table.box,
            "apix": _digest(None if table.apix is None else np.asarray(table.apix, np.float64).round(6)),
            "ctf": "none" if ctf is None else _digest(ctf.round(6)),
            "images": _digest(None if images is None else np.asarray(images, np.float32)),
            "images_sampled": [int(i) for i in ids]}


def differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words ([] when they match)."""
    out = []
    for key, what in (("n_particles", "the number of particles"), ("box", "the box")):
        if recorded.get(key) != now.get(key):
            out.append(f"{what} ({recorded.get(key)} then, {now.get(key)} now)")
    if out:  # (the hashes then differ too; the counts say it better)
        return out
    for key, what in (("apix", "the pixel sizes"), ("ctf", "the CTF parameters"),
                      ("images", f"the images (a sample of {len(now.get('images_sampled', []))})")):
        if recorded.get(key) != now.get(key):
            out.append(what)
    return out
