"""2-D class averages: the images of one class, in a few viewing directions, aligned and averaged.

What a user looks at to trust a class (cryoSPARC's and RELION's 2-D classes): where the members'
images agree with each other and with the map's projection, the class is real. For each of the
most populated viewing directions, the members near it are centred (their RELION origins
undone), phase-flipped (the sign of their CTF, so that contrast does not cancel between
defoci) and turned in-plane onto one reference pose, then averaged. The in-plane turn is the
group action of :mod:`eqcryo.physics.group`: the image of pose ``diag(g, 1)·R`` is the image of
``R`` turned by ``g``, so members whose viewing direction (the third row of R) is the
reference's differ from it by a turn alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..physics.group import in_plane_turn, turn_images
from ..physics.lattice import fft2_centered, ifft2_centered
from ..physics.projection import shift_phase
from ..physics.rotations import fibonacci_sphere
from .projection_matching import Reader

__all__ = ["ClassAverages", "class_averages"]


@dataclass
class ClassAverages:
    """``images`` (m, L, L) the averages; ``R_ref`` (m, 3, 3) the pose each is aligned to;
    ``counts`` (m,) the images averaged in each; ``direction_counts`` (m,) the class's members
    in that direction's cell of the sphere."""

    images: torch.Tensor
    R_ref: torch.Tensor
    counts: np.ndarray
    direction_counts: np.ndarray


def class_averages(reader: Reader, ids: np.ndarray, R: torch.Tensor, origin_px: torch.Tensor, n_views: int = 4,
                   max_angle_deg: float = 10.0, per_view: int = 256, cells: int = 48) -> ClassAverages:
    """Averages of particles ``ids`` (n,) at poses R (n, 3, 3) and RELION origins (n, 2) px in
    the ``n_views`` most populated of ``cells`` viewing-direction cells. Each view's reference is
    the member nearest the cell's mean direction; the members within ``max_angle_deg`` of it (at
    most ``per_view``) are averaged. ``reader(ids)`` gives (images (b, L, L), CTF (b, L, L) centred
    or None)."""
    R, origin_px = R.double(), origin_px.double()
    d = R[:, 2, :]  # viewing direction: unchanged by in-plane turns diag(g, 1)·R
    cell = (d @ fibonacci_sphere(cells).T).argmax(1).numpy()
    sizes = np.bincount(cell, minlength=cells)
    images, refs, counts, dcounts = [], [], [], []
    for c in np.argsort(-sizes, kind="stable")[:n_views]:
        if sizes[c] == 0:
            break
        members = np.nonzero(cell == c)[0]
        mean = d[members].mean(0)
        ref = members[int((d[members] @ mean).argmax())]
        close = members[(d[members] @ d[ref]).numpy() >= math.cos(math.radians(max_angle_deg))][:per_view]
        y, ctf = reader(ids[close])
        F = fft2_centered(y.double()) * shift_phase(y.shape[-1], -origin_px[close])  # centred: origins undone
        if ctf is not None:  # phase flip: defoci's opposite contrast bands add up instead of cancelling
            F = F * torch.sign(ctf.double())
        y = ifft2_centered(F).real
        M = R[ref] @ R[close].transpose(-1, -2)  # diag(g, 1) for members in the reference's direction
        theta = torch.atan2((M[:, 0, 1] - M[:, 1, 0]) / 2, (M[:, 0, 0] + M[:, 1, 1]) / 2)
        images.append(turn_images(y, in_plane_turn(theta)).mean(0))
        refs.append(R[ref])
        counts.append(len(close))
        dcounts.append(int(sizes[c]))
    L = images[0].shape[-1] if images else 0
    return ClassAverages(torch.stack(images) if images else torch.zeros(0, L, L), torch.stack(refs) if refs else
                         torch.zeros(0, 3, 3, dtype=torch.float64), np.asarray(counts), np.asarray(dcounts))
