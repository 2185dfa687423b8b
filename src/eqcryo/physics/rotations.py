"""Rotations in SO(3): the one place that defines eqcryo's Euler and pose conventions.

Convention (shared with RELION and cryoDRGN)
--------------------------------------------
A pose is a rotation matrix ``R`` (3, 3) built from RELION's ZYZ Euler angles
``(rot, tilt, psi)`` in degrees exactly as RELION's ``Euler_angles2matrix``. Fourier slices
are read at ``lattice @ R`` where ``lattice`` holds rows ``(kx, ky, 0)``, i.e. the slice
operator is ``S_R[W](k) = W(Rᵀ k)``. cryoDRGN's pose ``.pkl`` stores this same matrix.
cryoSPARC stores an axis-angle vector ``pose`` whose exponential map is ``Rᵀ``.

All functions are batched over leading dimensions and differentiable where that makes sense.
"""

from __future__ import annotations

import math

import roma
import torch

__all__ = [
    "fibonacci_sphere",
    "euler_relion_to_matrix",
    "matrix_to_euler_relion",
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "cryosparc_pose_to_matrix",
    "matrix_to_cryosparc_pose",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "random_rotations",
    "sixd_to_matrix_gram_schmidt",
    "sixd_to_matrix_svd",
    "special_orthogonalize",
    "geodesic_angle_degrees",
    "rotation_z",
]


def euler_relion_to_matrix(rot_deg: torch.Tensor, tilt_deg: torch.Tensor,
                           psi_deg: torch.Tensor) -> torch.Tensor:
    """RELION ZYZ Euler angles (degrees, each (...,)) -> rotation matrices (..., 3, 3)."""
    a, b, g = (torch.deg2rad(torch.as_tensor(x, dtype=torch.float64)) for x in (rot_deg, tilt_deg, psi_deg))
    ca, sa, cb, sb, cg, sg = a.cos(), a.sin(), b.cos(), b.sin(), g.cos(), g.sin()
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        torch.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
        torch.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
        torch.stack([sc, ss, cb], -1),
    ]
    return torch.stack(rows, -2)


def matrix_to_euler_relion(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) -> RELION Euler angles (..., 3) = (rot, tilt, psi) in degrees.

    tilt is in [0, 180]; at the poles (tilt 0 or 180) psi is set to 0 and rot carries the
    in-plane angle (RELION's ``Euler_matrix2angles`` does the same).
    """
    R = torch.as_tensor(R, dtype=torch.float64)
    tilt = torch.atan2(torch.sqrt(R[..., 2, 0] ** 2 + R[..., 2, 1] ** 2), R[..., 2, 2])
    pole = torch.sqrt(R[..., 2, 0] ** 2 + R[..., 2, 1] ** 2) < 1e-9
    rot = torch.atan2(R[..., 2, 1], R[..., 2, 0])
    psi = torch.atan2(R[..., 1, 2], -R[..., 0, 2])
    # Poles: with psi = 0, tilt = 0 gives R = Rz(rot) -> rot = atan2(R01, R00);
    # tilt = 180 gives R00 = -cos(rot), R01 = -sin(rot).
    sign = torch.where(R[..., 2, 2] < 0, -1.0, 1.0).to(R.dtype)
    rot = torch.where(pole, torch.atan2(sign * R[..., 0, 1], sign * R[..., 0, 0]), rot)
    psi = torch.where(pole, torch.zeros_like(psi), psi)
    return torch.rad2deg(torch.stack([rot, tilt, psi], -1))


def axis_angle_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """Axis-angle vectors (..., 3), angle = norm in radians -> matrices (..., 3, 3)."""
    return roma.rotvec_to_rotmat(torch.as_tensor(v))


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """Matrices (..., 3, 3) -> axis-angle vectors (..., 3) (radians)."""
    return roma.rotmat_to_rotvec(torch.as_tensor(R))


def cryosparc_pose_to_matrix(pose: torch.Tensor) -> torch.Tensor:
    """cryoSPARC ``alignments3D/pose`` (..., 3) -> eqcryo/RELION matrix (..., 3, 3).

    cryoSPARC's axis-angle exponentiates to the transpose of RELION's matrix (this is what
    cryoDRGN's parser does, and our test against its output pins it).
    """
    return axis_angle_to_matrix(pose).transpose(-1, -2)


def matrix_to_cryosparc_pose(R: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`cryosparc_pose_to_matrix`."""
    return matrix_to_axis_angle(torch.as_tensor(R).transpose(-1, -2))


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (..., 4) in scalar-first order (w, x, y, z) -> matrices (..., 3, 3)."""
    q = torch.as_tensor(q)
    return roma.unitquat_to_rotmat(torch.cat([q[..., 1:], q[..., :1]], -1))


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Matrices (..., 3, 3) -> unit quaternions (..., 4), scalar first, w >= 0."""
    q = roma.rotmat_to_unitquat(torch.as_tensor(R))
    q = torch.cat([q[..., 3:], q[..., :3]], -1)
    return torch.where(q[..., :1] < 0, -q, q)


def random_rotations(n: int, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` rotations drawn uniformly (Haar measure) on SO(3), shape (n, 3, 3).

    A normalised standard-normal 4-vector is a uniform unit quaternion.
    """
    q = torch.randn(n, 4, generator=generator, dtype=dtype)
    q = q / q.norm(dim=-1, keepdim=True)
    return quaternion_to_matrix(q)


def rotation_z(angle_rad: torch.Tensor | float) -> torch.Tensor:
    """Rotation by ``angle_rad`` about z, (..., 3, 3)."""
    a = torch.as_tensor(angle_rad, dtype=torch.float64)
    c, s, o, z = a.cos(), a.sin(), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1),
                        torch.stack([z, z, o], -1)], -2)


def sixd_to_matrix_gram_schmidt(x: torch.Tensor) -> torch.Tensor:
    """cryoAI's map: 6-vector (..., 6) -> rotation (..., 3, 3) by Gram-Schmidt on the *rows*.

    Not equivariant to left multiplication; kept for the standard (cryoAI) encoder.
    """
    a, b = x[..., :3], x[..., 3:]
    r1 = torch.nn.functional.normalize(a, dim=-1)
    b = b - (r1 * b).sum(-1, keepdim=True) * r1
    r2 = torch.nn.functional.normalize(b, dim=-1)
    r3 = torch.cross(r1, r2, dim=-1)
    return torch.stack([r1, r2, r3], -2)


def special_orthogonalize(M: torch.Tensor) -> torch.Tensor:
    """Closest rotation to M (..., 3, 3): ``U diag(1, 1, det(U Vᵀ)) Vᵀ`` from ``M = U S Vᵀ``.

    Uses ``roma.special_procrustes``, whose hand-written backward clamps the 1/(s_i + s_j)
    terms (``gradient_eps``), so gradients stay finite for repeated or zero singular values
    where a plain ``torch.linalg.svd`` backward returns NaN/Inf.
    """
    return roma.special_procrustes(M)


def sixd_to_matrix_svd(x: torch.Tensor) -> torch.Tensor:
    """Equivariant 6-D map of the paper: ``x = [V1; V2]`` (..., 6) -> rotation (..., 3, 3).

    ``M = [V1, V2, V1 x V2]`` (columns), then special orthogonalisation. For any rotation
    ``Q``: ``f(Q V1, Q V2) = Q f(V1, V2)`` exactly, which makes the encoder's rotation head
    equivariant when V1, V2 transform with ``φ_r``.
    """
    v1, v2 = x[..., :3], x[..., 3:]
    v3 = torch.cross(v1, v2, dim=-1)
    M = torch.stack([v1, v2, v3], -1)
    return special_orthogonalize(M)


def geodesic_angle_degrees(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """Angle (degrees) of ``R1ᵀ R2`` for batches of rotations (..., 3, 3) -> (...,)."""
    tr = (R1.transpose(-1, -2) @ R2).diagonal(dim1=-2, dim2=-1).sum(-1)
    cos = ((tr - 1.0) / 2.0).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos))


def frobenius_sq_from_angle(theta_rad: float) -> float:
    """‖I − Q‖²_F for a rotation by ``theta_rad``: ``8 sin²(θ/2)`` (pose-MSE units)."""
    return 8.0 * math.sin(theta_rad / 2.0) ** 2


def fibonacci_sphere(n: int, hemisphere: bool = False) -> torch.Tensor:
    """``n`` nearly uniform unit vectors (n, 3) on the sphere (the golden-angle spiral); with
    ``hemisphere`` all with z >= 0 (directions up to sign, e.g. plane normals)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = i / n if hemisphere else 1 - 2 * i / n
    phi = i * math.pi * (3 - math.sqrt(5))
    r = torch.sqrt(1 - z ** 2)
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)
