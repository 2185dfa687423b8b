"""Projection matching: the search finds known poses, never loses to its incumbent, and hard EM
puts back images assigned to the mirrored view (the stalled state of docs/training.md)."""

import math

import numpy as np
import pytest
import torch
from helpers import gaussian_blobs

from eqcryo.evaluation.metrics import pose_metrics
from eqcryo.physics.ctf import ctf_2d
from eqcryo.physics.projection import FourierVolume, prepare_fourier_volume, project
from eqcryo.physics.rotations import axis_angle_to_matrix, random_rotations
from eqcryo.reconstruction.projection_matching import BandData, MatchConfig, projection_matching, search_poses

L = 24
# asymmetric (no mirror plane, no rotational symmetry), inside the inscribed sphere
VOL = gaussian_blobs(L, [(3, 1, -2), (-4, 2, 1), (1, -4, 3), (0, 3, 4)], [2.5, 3.0, 2.0, 2.0], [1.0, 0.8, 1.2, 0.6])


def _data(n: int, seed: int, with_ctf: bool):
    g = torch.Generator().manual_seed(seed)
    R = random_rotations(n, g)
    origin = torch.randn(n, 2, generator=g, dtype=torch.float64)
    ctf = None
    if with_ctf:
        params = {"defocus_u_angstrom": 8000 + 4000 * torch.rand(n, generator=g, dtype=torch.float64),
                  "defocus_angle_degrees": torch.zeros(n, dtype=torch.float64),
                  "voltage_kv": torch.full((n,), 300.0, dtype=torch.float64),
                  "cs_mm": torch.full((n,), 2.7, dtype=torch.float64),
                  "amplitude_contrast": torch.full((n,), 0.1, dtype=torch.float64)}
        params["defocus_v_angstrom"] = params["defocus_u_angstrom"] + 200
        ctf = ctf_2d(L, 8.0, params, torch.float64)
    images = project(VOL, R, origin, ctf)

    def reader(ids):
        return images[ids], None if ctf is None else ctf[ids]
    return R, origin, reader, g


def _geodesic_deg(A, B):
    tr = (A.transpose(-1, -2) @ B).diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.rad2deg(torch.acos(((tr - 1) / 2).clamp(-1, 1)))


def test_search_from_random_poses_finds_the_true_ones():
    R_gt, o_gt, reader, g = _data(24, 0, with_ctf=True)
    ids = np.arange(24)
    band = BandData.read(reader, ids, L, 8.0)
    fv = prepare_fourier_volume(VOL, 2)
    start = random_rotations(24, g)
    cfg = MatchConfig(radius=8.0, n_rotations=8192, shift_step_px=0.0, refine_rounds=8)
    R, o, _ = search_poses(fv, band, start, o_gt, cfg, g)
    err = _geodesic_deg(R, R_gt)
    # 8192 random rotations are ~12° apart; the pattern search brings them to within a degree
    # (with 4096 one image of 24 stayed in a wrong basin: the nearest grid point scored lower)
    assert err.median() < 1.5 and err.max() < 5.0, err


def test_search_keeps_the_truth_when_it_starts_there():
    """The incumbent is always a candidate: starting at the true poses, the result explains the
    images at least as well (and so stays within a fraction of a degree of the truth)."""
    R_gt, o_gt, reader, g = _data(16, 1, with_ctf=False)
    band = BandData.read(reader, np.arange(16), L, 8.0)
    fv = prepare_fourier_volume(VOL, 2)
    cfg = MatchConfig(radius=8.0, n_rotations=512, shift_step_px=1.0, refine_rounds=2)
    R, o, score = search_poses(fv, band, R_gt, o_gt, cfg, g)
    _, _, score_truth = search_poses(fv, band, R_gt, o_gt, MatchConfig(radius=8.0, n_rotations=1, shift_step_px=0.0,
                                                                       refine_rounds=0), g)
    assert (score >= score_truth).all()
    assert _geodesic_deg(R, R_gt).max() < 1.0 and (o - o_gt).norm(dim=-1).max() < 0.2


def test_hard_em_repairs_mirrored_assignments():
    """30% of the starting poses are turned by π about the image's x axis (the mirrored view of
    the paper's App. G), the rest are off by a few degrees; three iterations of backprojection and
    search recover all of them."""
    n = 300
    R_gt, o_gt, reader, g = _data(n, 2, with_ctf=True)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    start = axis_angle_to_matrix(torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.05) @ R_gt
    mirrored = torch.rand(n, generator=g) < 0.3
    start[mirrored] = flip @ start[mirrored]
    before, _ = pose_metrics(start, R_gt)
    assert before["pose_mse"] > 1.5  # the mirrored third dominates
    cfg = MatchConfig(radius=8.0, n_rotations=2048, shift_step_px=0.0, seed=0)
    R, o, vol = projection_matching(reader, np.arange(n), L, start, o_gt, 3, cfg)
    after, _ = pose_metrics(R, R_gt)
    assert after["pose_mse"] < 0.02, after
    assert vol.shape == (L, L, L) and torch.isfinite(vol).all()


def test_refining_several_candidates_never_loses_and_finds_more():
    """keep = k refines the k best global candidates: refined for all rounds, per image the result
    scores at least as well as keep = 1 (whose candidate is among the k); on a coarse grid (1024
    rotations, ~19° apart), where the best grid point is often in a wrong basin, more images end
    near their true pose — also when only each image's best candidate goes on after 2 rounds."""
    R_gt, o_gt, reader, g = _data(32, 3, with_ctf=False)
    ids = np.arange(32)
    band = BandData.read(reader, ids, L, 8.0)
    fv = prepare_fourier_volume(VOL, 2)
    start = random_rotations(32, torch.Generator().manual_seed(9))
    out = {}
    for name, k, kr in (("one", 1, 2), ("all", 8, 8), ("pruned", 8, 2)):
        cfg = MatchConfig(radius=8.0, n_rotations=1024, shift_step_px=0.0, refine_rounds=8, keep=k, keep_rounds=kr)
        out[name] = search_poses(fv, band, start, o_gt, cfg, torch.Generator().manual_seed(4))
    assert (out["all"][2] >= out["one"][2] - 1e-4 * out["one"][2].abs()).all()
    near = {k: int((_geodesic_deg(v[0], R_gt) < 3).sum()) for k, v in out.items()}
    assert near["all"] > near["one"] and near["pruned"] > near["one"], near


def test_orbit_recovers_poses_turned_in_plane_with_a_wrong_origin():
    """The failure of docs/results.md (seed 3): the incumbent is the true pose turned by 180°
    about the viewing axis (a few degrees off) with an origin ~3 px wrong, and the global grid
    offers nothing better (one random rotation). orbit = 1 cannot leave that basin; orbit = 2
    tries the half turn with origins ±4 px around the incumbent's and lands on the truth; orbit = 4
    also undoes quarter turns."""
    n = 12
    R_gt, o_gt, reader, g = _data(n, 5, with_ctf=True)
    band = BandData.read(reader, np.arange(n), L, 8.0)
    fv = prepare_fourier_volume(VOL, 2)
    jitter = axis_angle_to_matrix(torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.04)
    o_start = o_gt + torch.tensor([2.0, -3.0], dtype=torch.float64)
    for turn, orbit in ((math.pi, 2), (math.pi / 2, 4)):
        start = axis_angle_to_matrix(torch.tensor([[0.0, 0.0, turn]], dtype=torch.float64)) @ jitter @ R_gt
        err = {}
        for o in (1, orbit):
            cfg = MatchConfig(radius=8.0, n_rotations=1, shift_step_px=0.0, refine_rounds=8, orbit=o)
            R, origin, _ = search_poses(fv, band, start, o_start, cfg, torch.Generator().manual_seed(0))
            err[o] = (_geodesic_deg(R, R_gt), (origin - o_gt).norm(dim=-1))
        assert err[1][0].min() > 60, err[1][0]  # stays turned
        assert err[orbit][0].max() < 2.0 and err[orbit][1].max() < 0.3, err[orbit]  # the basin of the truth


def test_half_band_score_equals_the_score_over_the_whole_disc():
    """The search scores one Hermitian half of the band (weight 2, DC 1): equal, to float32
    rounding, to ‖Y‖² − ‖Y − CTF·T·S‖² summed over the whole disc |k| < radius in float64."""
    from eqcryo.physics.lattice import fft2_centered, plane_coords
    from eqcryo.physics.projection import shift_phase_at, slice_fourier_volume
    from eqcryo.reconstruction.projection_matching import _score, _slices

    n, r = 10, 9.0
    R_gt, o_gt, reader, g = _data(n, 6, with_ctf=True)
    R = axis_angle_to_matrix(torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.2) @ R_gt
    o = o_gt + torch.randn(n, 2, generator=g, dtype=torch.float64)
    fv = prepare_fourier_volume(VOL, 2)
    band = BandData.read(reader, np.arange(n), L, r)
    half = _score(band.weighted(slice(None), o), band.ctf2(slice(None)),
                  _slices(FourierVolume(fv.data.to(torch.complex64), fv.L, fv.pad), band.pts, R)).double()
    k = plane_coords(L, torch.float64).reshape(-1, 3)
    disc = k.norm(dim=-1) < r
    assert len(band.pts) < 0.55 * int(disc.sum())  # about half the points
    images, ctf = reader(np.arange(n))
    Y = fft2_centered(images).reshape(n, -1)[:, disc]
    c = ctf.reshape(n, -1)[:, disc]
    S = slice_fourier_volume(fv.data, (k[disc] @ R) * 2)
    model = c * shift_phase_at(k[disc, 0], k[disc, 1], L, o) * S
    full = (Y.abs() ** 2).sum(-1) - ((Y - model).abs() ** 2).sum(-1)
    assert torch.allclose(half, full, rtol=1e-4, atol=1e-5 * (Y.abs() ** 2).sum(-1).max().item()), (half, full)


def test_band_block_reads_the_same_slices_as_the_whole_volume():
    """The search slices a central block of the padded DFT (cache-sized); within the band its
    trilinear values are the full array's."""
    from eqcryo.physics.projection import slice_fourier_volume
    from eqcryo.reconstruction.projection_matching import band_block

    fv = prepare_fourier_volume(VOL, 2)
    r = 6.0
    block = band_block(fv, r)
    assert block.data.shape[-1] < fv.data.shape[-1]
    g = torch.Generator().manual_seed(1)
    pts = torch.randn(500, 3, generator=g, dtype=torch.float64)
    pts = pts / pts.norm(dim=-1, keepdim=True) * torch.rand(500, 1, generator=g, dtype=torch.float64) * r
    a = slice_fourier_volume(fv.data, pts[None] * 2)
    b = slice_fourier_volume(block.data, pts[None] * 2)
    assert torch.allclose(a, b, rtol=0, atol=1e-12 * a.abs().max().item())


def test_a_match_band_beyond_nyquist_is_refused():
    _, _, reader, _ = _data(2, 0, with_ctf=False)
    with pytest.raises(ValueError, match="beyond Nyquist"):
        BandData.read(reader, np.arange(2), L, L / 2 + 1)


def test_float32_backprojection_matches_float64():
    """The search reconstructs in float32 (~3× faster): within 1e-5 of the float64 map."""
    from eqcryo.reconstruction.backprojection import Backprojector

    R_gt, o_gt, reader, _ = _data(40, 7, with_ctf=True)
    images, ctf = reader(np.arange(40))
    maps = []
    for dt in (torch.float64, torch.float32):
        bp = Backprojector(L, dtype=dt)
        bp.add(images, R_gt, o_gt, ctf)
        maps.append(bp.reconstruct(0.01).double())
    assert maps[1].dtype == torch.float64 and maps[1].abs().max() > 0
    assert (maps[0] - maps[1]).abs().max() < 1e-5 * maps[0].abs().max()
