"""Evaluation metrics on constructed cases: pose alignment (hand included), pose errors,
volume alignment."""

import pytest
import torch
from helpers import gaussian_blobs

from eqcryo.evaluation.metrics import align_poses, align_volume, pose_metrics
from eqcryo.physics.projection import flip_hand, rotate_volume
from eqcryo.physics.rotations import random_rotations

D = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


def test_pose_mse_zero_for_a_global_rotation_with_and_without_hand_flip():
    g = torch.Generator().manual_seed(0)
    R_gt = random_rotations(300, g)
    Q = random_rotations(1, g)[0]
    pred = R_gt @ Q.T  # a map rotated by Q explains the data with these
    al = align_poses(pred, R_gt)
    assert al.mse < 1e-12 and not al.flip
    torch.testing.assert_close(al.Q, Q)
    al = align_poses(D @ pred @ D, R_gt)  # the mirror-image solution
    assert al.mse < 1e-12 and al.flip


def test_pose_mse_of_random_predictions_is_about_six():
    g = torch.Generator().manual_seed(1)
    m, _ = pose_metrics(random_rotations(2000, g), random_rotations(2000, g))
    # E‖I - Q‖² = 6 for Haar-random Q; the best global alignment lowers it only slightly
    assert 5.4 < m["pose_mse"] < 6.1
    assert m["geodesic_median_deg"] > 90


def test_pose_mse_is_robust_to_outliers_and_reports_angles():
    g = torch.Generator().manual_seed(2)
    R_gt = random_rotations(400, g)
    pred = R_gt.clone()
    pred[:40] = random_rotations(40, g)  # 10% garbage
    m, al = pose_metrics(pred, R_gt)
    assert m["pose_medse"] < 1e-12 and 0.3 < m["pose_mse"] < 0.9
    assert m["geodesic_median_deg"] < 1e-5 and m["view_median_deg"] < 1e-5


def test_volume_alignment_undoes_rotation_flip_and_shift():
    v = gaussian_blobs(40, [(4, 1, -3), (-5, 3, 2), (1, -6, 4)], [3.5, 4.0, 3.0], [1.0, 0.7, 1.3])
    g = torch.Generator().manual_seed(3)
    R_gt = random_rotations(200, g)
    Q = random_rotations(1, g)[0]
    for flip in (False, True):
        rec = rotate_volume(v, Q)  # what a decoder learns with poses R_gt Qᵀ
        pred = R_gt @ Q.T
        if flip:
            rec, pred = flip_hand(rec), D @ pred @ D
        rec = torch.roll(rec, (2, -1, 1), (0, 1, 2))
        al = align_poses(pred, R_gt)
        back = align_volume(rec, v, al)
        # measured 2.5% for rotating there and back with trilinear interpolation alone
        assert ((back - v).norm() / v.norm()).item() < 0.04


def test_rotation_head_conditioning_finds_the_singular_set():
    """Orthogonal pairs are as far from the singular set as possible (sin 1, σ ratio 1); a pair
    with V2 ∥ V1 is on it (sin 0, σ ratio 0); the 5th percentile sees two such images in 20."""
    from eqcryo.evaluation.analysis import rotation_head_conditioning
    e = torch.eye(3, dtype=torch.float64)
    good = torch.cat([e[[0]], 2 * e[[1]]], 1).expand(18, 6)
    c = rotation_head_conditioning(good)
    assert c["head_sin_median"] == pytest.approx(1) and c["head_sigma_ratio_median"] == pytest.approx(0.5)
    bad = torch.cat([e[[0]], 3 * e[[0]]], 1).expand(2, 6)
    c = rotation_head_conditioning(torch.cat([good, bad]))
    assert c["head_sin_median"] == pytest.approx(1) and c["head_sin_p05"] < 0.1
    assert rotation_head_conditioning(bad)["head_sigma_ratio_median"] == pytest.approx(0)
    assert rotation_head_conditioning(torch.cat([good, bad]).reshape(10, 2, 6))["head_sin_p05"] < 0.1  # (n, K, 6)
