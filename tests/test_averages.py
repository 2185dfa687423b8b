"""2-D class averages: members of one viewing direction, centred and turned onto one pose,
average to the map's projection there (checked against the forward model, not against itself)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import roma
import torch
from helpers import gaussian_blobs

from eqcryo.physics.ctf import ctf_2d
from eqcryo.physics.group import in_plane_turn
from eqcryo.physics.lattice import fft2_centered, ifft2_centered
from eqcryo.physics.projection import project
from eqcryo.physics.rotations import fibonacci_sphere
from eqcryo.reconstruction.averages import class_averages

L, APIX = 32, 6.0


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _turns(n: int, g: torch.Generator) -> torch.Tensor:
    """n random in-plane turns diag(g_i, 1) (n, 3, 3): applied to a pose, one viewing direction."""
    theta = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    T = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    T[:, :2, :2] = in_plane_turn(theta)
    return T


@pytest.mark.parametrize("with_ctf", [False, True])
def test_members_of_one_view_average_to_the_projection(with_ctf):
    g = torch.Generator().manual_seed(3)
    vol = gaussian_blobs(L, [(-6, 0, 0), (-2, 3, 0), (3, 4, 1), (6, -3, 0)], [2.0, 2.0, 1.5, 2.0], [1, 1, 1.2, 0.8])
    R0, R1 = roma.random_rotmat(2, dtype=torch.float64, generator=g)
    T = _turns(80, g)
    R = T @ torch.cat([R0.expand(60, 3, 3), R1.expand(20, 3, 3)])  # the populated view first, a smaller one
    origin = (torch.rand(len(R), 2, generator=g, dtype=torch.float64) - 0.5) * 10
    ctf = None
    if with_ctf:
        n = len(R)
        du = 8000 + 20000 * torch.rand(n, generator=g)
        ctf = ctf_2d(L, APIX, {"defocus_u_angstrom": du, "defocus_v_angstrom": du, "defocus_angle_degrees":
                               torch.zeros(n), "voltage_kv": torch.full((n,), 300.0), "cs_mm": torch.full((n,), 2.7),
                               "amplitude_contrast": torch.full((n,), 0.1)}, torch.float64)
    images = project(vol, R, origin, ctf)

    def reader(ids):
        return images[ids].float(), None if ctf is None else ctf[ids].float()

    av = class_averages(reader, np.arange(len(R)), R, origin, n_views=2, cells=24)
    assert list(av.counts) == [60, 20] and list(av.direction_counts) == [60, 20]
    # the reference pose is in the view's direction
    assert torch.allclose(av.R_ref[0][2], R0[2], atol=1e-9) and torch.allclose(av.R_ref[1][2], R1[2], atol=1e-9)
    # what a wrong convention would give: turns of the other hand, origins not undone
    other_hand = class_averages(reader, np.arange(len(R)), T.transpose(1, 2) @ (T.transpose(1, 2) @ R), origin,
                                n_views=2, cells=24)
    not_centred = class_averages(reader, np.arange(len(R)), R, torch.zeros_like(origin), n_views=2, cells=24)
    for k in range(2):
        ref = project(vol, av.R_ref[k][None])[0]
        if ctf is not None:  # phase-flipped members average to the projection filtered by their mean |CTF|
            ref = ifft2_centered(fft2_centered(ref) * ctf[[slice(0, 60), slice(60, 80)][k]].abs().mean(0)).real
        c = _corr(av.images[k], ref)
        # the average is that projection, up to the turns' bilinear blur
        assert c > (0.92 if with_ctf else 0.97), c
        assert _corr(other_hand.images[k], project(vol, other_hand.R_ref[k][None])[0]) < c - 0.1
        assert _corr(not_centred.images[k], ref) < c - 0.05


def test_fibonacci_sphere_is_spread_and_hemisphere_up():
    s, h = fibonacci_sphere(200), fibonacci_sphere(50, hemisphere=True)
    assert torch.allclose(s.norm(dim=1), torch.ones(200, dtype=torch.float64))
    assert s.mean(0).norm() < 0.02 and (h[:, 2] >= 0).all()
    d = s @ s.T - 2 * torch.eye(200, dtype=torch.float64)
    assert torch.rad2deg(torch.acos(d.max(1).values.clamp(max=1))).max() < 20  # no point far from the rest
