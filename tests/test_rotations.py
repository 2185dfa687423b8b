"""Rotations: conversions, uniform sampling, the 6-D heads."""

import math

import numpy as np
import pytest
import torch

from eqcryo.physics import rotations as R


def relion_reference(rot, tilt, psi):
    """RELION's Euler_angles2matrix, transcribed independently (numpy, scalar)."""
    a, b, g = np.radians([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array([[cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
                     [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
                     [sc, ss, cb]])


def test_euler_matches_relion_formula_and_is_zyz():
    ang = torch.tensor([[10.0, 20.0, 30.0], [-170.0, 95.0, 3.0], [0.0, 0.0, 45.0]])
    M = R.euler_relion_to_matrix(*ang.T)
    for i in range(3):
        np.testing.assert_allclose(M[i].numpy(), relion_reference(*ang[i].tolist()), atol=1e-12)
    # ZYZ: R = Rz(psi) Ry(tilt) Rz(rot) acting on coordinates (passive, RELION's sense).
    def rz(t):
        c, s = math.cos(math.radians(t)), math.sin(math.radians(t))
        return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])
    def ry(t):
        c, s = math.cos(math.radians(t)), math.sin(math.radians(t))
        return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])
    np.testing.assert_allclose(M[0].numpy(), rz(30) @ ry(20) @ rz(10), atol=1e-12)


def test_euler_round_trip_including_poles():
    g = torch.Generator().manual_seed(0)
    Rs = torch.cat([R.random_rotations(200, g), R.euler_relion_to_matrix(torch.tensor([30., -40.]),
                                                                          torch.tensor([0., 180.]),
                                                                          torch.tensor([20., 15.]))])
    e = R.matrix_to_euler_relion(Rs)
    assert (e[:, 1] >= 0).all() and (e[:, 1] <= 180).all()
    torch.testing.assert_close(R.euler_relion_to_matrix(*e.T), Rs, atol=1e-9, rtol=0)


def test_axis_angle_quaternion_cryosparc_round_trips():
    g = torch.Generator().manual_seed(1)
    Rs = R.random_rotations(50, g)
    torch.testing.assert_close(R.axis_angle_to_matrix(R.matrix_to_axis_angle(Rs)), Rs, atol=1e-10, rtol=0)
    torch.testing.assert_close(R.quaternion_to_matrix(R.matrix_to_quaternion(Rs)), Rs, atol=1e-10, rtol=0)
    torch.testing.assert_close(R.cryosparc_pose_to_matrix(R.matrix_to_cryosparc_pose(Rs)), Rs, atol=1e-10, rtol=0)
    # quaternion (w, x, y, z) about z by 90 deg
    q = torch.tensor([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)], dtype=torch.float64)
    torch.testing.assert_close(R.quaternion_to_matrix(q), R.rotation_z(math.pi / 2), atol=1e-12, rtol=0)


def test_random_rotations_are_uniform():
    """Haar measure: the rotation angle θ has density (1 - cos θ)/π, mean(cos θ) = -1/2 ... and
    the third column (a viewing direction) is uniform on the sphere: each coordinate ~ U(-1, 1)."""
    g = torch.Generator().manual_seed(2)
    Rs = R.random_rotations(20000, g)
    theta = torch.deg2rad(R.geodesic_angle_degrees(torch.eye(3, dtype=torch.float64).expand_as(Rs), Rs))
    # E[θ] for Haar on SO(3) = π/2 + 2/π
    assert abs(theta.mean().item() - (math.pi / 2 + 2 / math.pi)) < 0.02
    z = Rs[:, 2, :]
    for c in range(3):
        hist = torch.histc(z[:, c], bins=10, min=-1, max=1)
        assert (hist / len(z) - 0.1).abs().max() < 0.012
    # mean Frobenius distance to identity over SO(3) is 6 (used by the pose-MSE tests)
    assert abs(((Rs - torch.eye(3, dtype=torch.float64)) ** 2).sum((-2, -1)).mean().item() - 6.0) < 0.05


def test_sixd_svd_is_left_equivariant_and_gradcheck():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 6, generator=g, dtype=torch.float64)
    Q = R.random_rotations(5, g)
    xq = torch.cat([(Q @ x[:, :3, None])[..., 0], (Q @ x[:, 3:, None])[..., 0]], -1)
    torch.testing.assert_close(R.sixd_to_matrix_svd(xq), Q @ R.sixd_to_matrix_svd(x), atol=1e-10, rtol=0)
    out = R.sixd_to_matrix_svd(x)
    torch.testing.assert_close(out @ out.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(5, 3, 3),
                               atol=1e-10, rtol=0)
    assert torch.allclose(torch.linalg.det(out), torch.ones(5, dtype=torch.float64))
    assert torch.autograd.gradcheck(R.sixd_to_matrix_svd, (x.clone().requires_grad_(),))
    assert torch.autograd.gradcheck(R.sixd_to_matrix_gram_schmidt, (x.clone().requires_grad_(),))


@pytest.mark.parametrize("x", [
    [1.0, 0, 0, 1.0, 0, 0],      # parallel: M has rank 1, two zero singular values
    [0.0, 0, 0, 0, 0, 0],        # all zero
    [1.0, 0, 0, 0, 1.0, 0],      # orthonormal: repeated singular values
])
def test_svd_head_gradient_finite_at_degenerate_inputs(x):
    v = torch.tensor([x], dtype=torch.float64, requires_grad=True)
    out = R.sixd_to_matrix_svd(v)
    (out * torch.arange(9, dtype=torch.float64).reshape(3, 3)).sum().backward()
    assert torch.isfinite(v.grad).all()
