"""The gold-standard finish and the resolution it reports: phase randomisation against analytic
cases (a mask's own correlation removed, pure noise reads no resolution), the automatic mask,
and the finish itself: each half's poses depend on that half's images alone."""

import math

import numpy as np
import pytest
import torch
from helpers import gaussian_blobs

import eqcryo.reconstruction.gold_standard as gs_module
from eqcryo.physics.fsc import fsc
from eqcryo.physics.lattice import fft3_centered, fourier_crop_2d, radius_3d
from eqcryo.physics.projection import project
from eqcryo.physics.rotations import axis_angle_to_matrix, geodesic_angle_degrees, random_rotations
from eqcryo.reconstruction.gold_standard import (
    FinishConfig,
    box_for_band,
    final_box,
    gold_standard_finish,
    largest_final_box,
    split_halves,
)
from eqcryo.reconstruction.resolution import auto_mask, fsc_weighted, gold_standard_fsc, randomise_phases_beyond

L = 32
VOL = gaussian_blobs(L, [(3, 1, -2), (-4, 2, 1), (1, -4, 3), (0, 3, 4)], [2.5, 3.0, 2.0, 2.0], [1.0, 0.8, 1.2, 0.6])


def test_phase_randomisation_keeps_amplitudes_and_the_low_shells_and_stays_real():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(L, L, L, generator=g, dtype=torch.float64)
    r = randomise_phases_beyond(v, 6, g)
    F, Fr = fft3_centered(v), fft3_centered(r)
    inside = radius_3d(L) <= 6
    assert r.dtype == torch.float64  # real: the inverse transform of an Hermitian spectrum
    assert torch.allclose(F.abs(), Fr.abs(), atol=1e-9)
    assert torch.allclose(F[inside], Fr[inside], atol=1e-9)
    # beyond the shell the phases are new: the two maps no longer correlate there
    c = fsc(v, r).fsc
    assert abs(c[10:].mean()) < 0.05 and c[:6].min() > 0.999


def _hard_mask() -> torch.Tensor:
    return (VOL > 0.05 * VOL.max()).double()  # a binary mask hugging the density: a sharp edge


def test_a_sharp_mask_inflates_the_fsc_and_the_correction_removes_it():
    # halves = the same smooth (low-frequency only) density + independent noise: beyond the
    # density's band the true FSC is 0, but a sharp mask spreads the shared density there
    g = torch.Generator().manual_seed(1)
    smooth = VOL * 50
    h1 = smooth + torch.randn(L, L, L, generator=g, dtype=torch.float64)
    h2 = smooth + torch.randn(L, L, L, generator=g, dtype=torch.float64)
    gs = gold_standard_fsc(h1, h2, 1.0, _hard_mask(), seed=0)
    hi = slice(gs.randomise_from_shell + 3, L // 2)
    assert gs.masked.fsc[hi].mean() > 0.3  # the mask's own correlation
    assert abs(gs.corrected.fsc[hi].mean()) < 0.1
    assert gs.randomised.fsc[hi].mean() > 0.3  # what the randomised maps measured: the mask alone
    np.testing.assert_allclose(gs.corrected.fsc[:gs.randomise_from_shell + 3], gs.masked.fsc[:gs.randomise_from_shell + 3])


def test_independent_noise_reads_no_resolution():
    g = torch.Generator().manual_seed(2)
    h1, h2 = (torch.randn(L, L, L, generator=g, dtype=torch.float64) for _ in range(2))
    gs = gold_standard_fsc(h1, h2, 2.0, _hard_mask(), seed=0)
    assert gs.resolution is None or gs.resolution > 20.0  # no shell beyond the first few


def test_the_automatic_mask_covers_the_density_and_leaves_the_box_edge_empty():
    m = auto_mask(VOL, apix=2.0, lowpass_angstrom=8.0, dilate_angstrom=2.0, soft_angstrom=4.0)
    assert m.shape == VOL.shape and float(m.min()) >= 0 and float(m.max()) <= 1
    assert float(m[VOL > 0.2 * VOL.max()].min()) == 1.0
    assert float(m[radius_3d(L) > L / 2 - 1].max()) == 0.0
    assert 0.02 < float(m.mean()) < 0.6


def test_fsc_weighting_passes_correlated_shells_and_stops_uncorrelated_ones():
    g = torch.Generator().manual_seed(3)
    v = torch.randn(L, L, L, generator=g, dtype=torch.float64)
    curve = fsc(v, v)
    curve.fsc[8:] = 0.0
    w = fsc_weighted(v, curve)
    F, Fw = fft3_centered(v), fft3_centered(w)
    r = torch.round(radius_3d(L))
    assert torch.allclose(F[r < 8], Fw[r < 8], atol=1e-9)
    assert float(Fw[r >= 8].abs().max()) < 1e-9


def test_the_box_for_a_band_is_the_smallest_even_one_whose_nyquist_covers_it():
    assert box_for_band(10.0, 128, 24) == 24
    assert box_for_band(20.0, 128, 24) == 42
    assert box_for_band(36.0, 128, 64) == 74
    assert box_for_band(80.0, 128, 64) == 128


def test_the_final_box_follows_the_resolution_and_the_memory():
    assert final_box(256, 1.0, 8.0, 4.0, None) == 256 and final_box(256, 1.0, 8.0, 4.0, 256) == 256  # fits: L
    # capped: 256 px at 1 Å/px, half-maps at 8 Å are 32 shells; 1.5× + 4 margin = 52 shells -> 106 px
    assert final_box(256, 1.0, 8.0, 4.0, 200) == 106
    assert final_box(256, 1.0, 2.0, 4.0, 200) == 200 and final_box(256, 1.0, 2.0, 4.0, 201) == 200
    assert final_box(64, 6.6, 13.2, 4.0, 60) == 60
    # the measured peak (11.2 GiB at 256 px) scales with the box's volume
    assert largest_final_box(11.2 * 2 ** 30) in (254, 256)
    assert largest_final_box(24 * 2 ** 30) < 340 and largest_final_box(8 * 11.2 * 2 ** 30) >= 500


def _particles(n: int, seed: int):
    """Projections of sharp blobs (σ 1.3 px: signal out to ~12 shells, so poses are defined to
    about a degree) at SNR ~10."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(10, 3, generator=g) * 14 - 7).tolist()
    vol = gaussian_blobs(L, centres, [1.3] * 10, (torch.rand(10, generator=g) + 0.5).tolist())
    R = random_rotations(n, g)
    origin = torch.randn(n, 2, generator=g, dtype=torch.float64)
    clean = project(vol, R, origin)
    images = clean + 0.3 * clean.std() * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    return R, origin, images, g


def _read_at(images):
    def read_at(box):
        def reader(ids):
            x = images[torch.as_tensor(ids)]
            return (x if box == L else fourier_crop_2d(x, box)).float(), None
        return reader
    return read_at


@pytest.mark.slow
def test_the_finish_refines_each_half_from_its_own_images_alone(monkeypatch):
    n = 160
    R_gt, o_gt, images, g = _particles(n, 0)
    ax = torch.randn(n, 3, generator=g, dtype=torch.float64)
    R0 = axis_angle_to_matrix(ax / ax.norm(dim=1, keepdim=True) * math.radians(4.0)) @ R_gt
    cfg = FinishConfig(max_iters=2, seed=5)
    out = gold_standard_finish(_read_at(images), n, L, 2.0, R0, o_gt * 2.0, 24, 8.0, cfg, log=lambda m: None)
    half = split_halves(n, 5)
    np.testing.assert_array_equal(out.half, half)
    assert abs(int((half == 0).sum()) - int((half == 1).sum())) <= 1
    assert out.full_map.shape == (L, L, L) and out.half_maps[0].shape == (L, L, L)
    assert geodesic_angle_degrees(out.R, R_gt).median() < 0.5 * geodesic_angle_degrees(R0, R_gt).median()
    assert out.fsc.resolution is not None and out.fsc.resolution < 8.0
    # change half 2's images (a little: the shared band limit, whole shells, stays the same):
    # half 1's poses do not change by a bit, half 2's do
    other = images.clone()
    h1, h2 = torch.from_numpy(half == 0), torch.from_numpy(half == 1)
    other[h2] += 0.05 * images.std() * torch.randn(other[h2].shape, generator=g, dtype=torch.float64)
    calls = []

    def spy(real):
        def f(reader, ids, *a, **k):
            calls.append(np.asarray(ids).copy())
            return real(reader, ids, *a, **k)
        return f
    monkeypatch.setattr(gs_module, "reconstruct", spy(gs_module.reconstruct))
    monkeypatch.setattr(gs_module, "accumulate", spy(gs_module.accumulate))
    out2 = gold_standard_finish(_read_at(other), n, L, 2.0, R0, o_gt * 2.0, 24, 8.0, cfg, log=lambda m: None)
    assert [h.get("band_shells") for h in out.iterations] == [h.get("band_shells") for h in out2.iterations]
    assert torch.equal(out.R[h1], out2.R[h1]) and torch.equal(out.origin_angstrom[h1], out2.origin_angstrom[h1])
    assert not torch.equal(out.R[h2], out2.R[h2])
    # every map is one half's (the full map is the sum of the final two halves' accumulators)
    assert len(calls) > 2 and all(set(half[c]) in ({0}, {1}) for c in calls)


def test_a_capped_final_box_gives_the_same_map_up_to_its_nyquist_padded_to_the_stack():
    n = 96
    R_gt, o_gt, images, _ = _particles(n, 1)
    full = gold_standard_finish(_read_at(images), n, L, 2.0, R_gt, o_gt * 2.0, 24, 8.0,
                                FinishConfig(max_iters=0, seed=1), log=lambda m: None)
    lines: list[str] = []
    capped = gold_standard_finish(_read_at(images), n, L, 2.0, R_gt, o_gt * 2.0, 24, 8.0,
                                  FinishConfig(max_iters=0, max_final_box=20, seed=1), log=lines.append)
    assert full.iterations[-1]["box"] == L and capped.iterations[-1]["box"] == 20
    assert capped.iterations[-1]["output_box"] == L and any("padded to the stack's 32 px" in m for m in lines)
    for a, b in zip(capped.half_maps + (capped.full_map,), full.half_maps + (full.full_map,)):
        assert a.shape == b.shape == (L, L, L)
    r = radius_3d(L, torch.float64)
    Fc, Ff = fft3_centered(capped.half_maps[0]), fft3_centered(full.half_maps[0])
    k = (torch.arange(L) - L // 2).abs()
    outside = (k[:, None, None] > 10) | (k[None, :, None] > 10) | (k[None, None, :] > 10)
    assert Fc[outside].abs().max() < 1e-8 * Fc.abs().max()  # nothing beyond the capped box's lattice
    inner = r < 8
    rel = (Fc[inner] - Ff[inner]).abs().norm() / Ff[inner].abs().norm()
    assert rel < 0.1, rel  # the same coefficients within it (gridded at another box)
    assert capped.fsc.resolution >= 2 * 2.0 * L / 20 - 1e-6  # it cannot claim beyond the box it measured

