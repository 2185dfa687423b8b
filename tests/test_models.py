"""Models: exact C4/D4 equivariance layer by layer and end to end (float64, eval mode,
randomised batch-norm statistics), Hermitian FourierNet, losses, one training step."""

import pytest
import torch

from eqcryo.models.autoencoder import CryoModel, transform_ctf
from eqcryo.models.decoders import FourierNet, VoxelDecoder
from eqcryo.models.encoders import EquivariantEncoder, GaussianPyramid, StandardEncoder
from eqcryo.models.gconv import (
    FieldBatchNorm,
    Group,
    GroupConv2d,
    LiftingConv2d,
    RegularLinear,
    RegularToRep,
    act_on_regular,
    field_max_pool,
)
from eqcryo.models.presets import PRESETS, build_model
from eqcryo.physics.ctf import ctf_2d
from eqcryo.physics.group import image_action, phi_r, phi_t
from eqcryo.physics.lattice import nyquist_mask_2d

TOL = 1e-10


def randomise_bn(module):
    g = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return module.eval()


@pytest.mark.parametrize("group", ["C4", "D4"])
def test_each_layer_is_exactly_equivariant(group):
    torch.manual_seed(1)
    G = Group(group)
    x0 = torch.randn(2, 3, 16, 16, dtype=torch.float64)  # trivial fields
    x = torch.randn(2, 3 * G.order, 16, 16, dtype=torch.float64)  # regular fields
    lift = LiftingConv2d(G, 3, 4, 3, padding=1).double()
    conv = GroupConv2d(G, 3, 4, 3, padding=1).double()
    conv2 = GroupConv2d(G, 3, 4, 2).double()
    bn = randomise_bn(FieldBatchNorm(G, 3).double())
    lin = RegularLinear(G, 3, 5).double()
    to_t, to_r = RegularToRep(G, 3, "t").double(), RegularToRep(G, 3, "r", copies=2).double()
    pyr = GaussianPyramid().double()
    v = torch.randn(2, 3 * G.order, dtype=torch.float64)
    for i, e in enumerate(G.elements):
        gx = act_on_regular(x, G, i)
        assert (lift(image_action(x0, e)) - act_on_regular(lift(x0), G, i)).abs().max() < TOL
        assert (conv(gx) - act_on_regular(conv(x), G, i)).abs().max() < TOL
        assert (conv2(gx) - act_on_regular(conv2(x), G, i)).abs().max() < TOL
        assert (bn(gx) - act_on_regular(bn(x), G, i)).abs().max() < TOL
        assert (field_max_pool(gx) - act_on_regular(field_max_pool(x), G, i)).abs().max() < TOL
        gv = act_on_regular(v[..., None, None], G, i)[..., 0, 0]
        assert (lin(gv) - act_on_regular(lin(v)[..., None, None], G, i)[..., 0, 0]).abs().max() < TOL
        assert (to_t(gv) - to_t(v) @ phi_t(e).T).abs().max() < TOL
        r = to_r(v).reshape(2, 2, 3)
        assert (to_r(gv).reshape(2, 2, 3) - r @ phi_r(e).T).abs().max() < TOL
        img = torch.randn(2, 20, 20, dtype=torch.float64)
        assert (pyr(image_action(img, e)) - image_action(pyr(img), e)).abs().max() < 1e-8


def test_gaussian_pyramid_is_the_stated_gaussians_without_subnormal_weights():
    """The narrow Gaussians' float32 tails are subnormal; a convolution with them ran ~20x slower on
    one CPU (docs/benchmarks.md), so they are zeroed: no weight is subnormal, and every filter
    still equals exp(-r²/(2·0.01·10^i)) / sum to float32 rounding (zeroing moves a weight by less
    than the smallest normal float32)."""
    k = GaussianPyramid().kernel
    tiny = torch.finfo(torch.float32).tiny
    assert k.dtype == torch.float32 and not ((k != 0) & (k.abs() < tiny)).any()
    r = torch.arange(11, dtype=torch.float64) - 5
    r2 = r[:, None] ** 2 + r[None, :] ** 2
    for i in range(5):
        g = torch.exp(-r2 / (2 * 0.01 * 10 ** i))
        torch.testing.assert_close(k[i, 0].double(), g / g.sum(), rtol=1e-6, atol=tiny)
    # a checkpoint written before the zeroing still holds them: loading it drops them too
    old = k.clone()
    old[0, 0, 5, 7] = old[1, 0, 0, 3] = 4e-44
    pyr = GaussianPyramid()
    pyr.load_state_dict({"kernel": old})
    assert torch.equal(pyr.kernel, k)


@pytest.mark.parametrize("group,box,bin", [("C4", 64, 1), ("D4", 64, 1), ("D4", 48, 1), ("D4", 64, 2), ("C4", 48, 2)])
def test_encoder_is_exactly_equivariant(group, box, bin):
    """Also with bin×bin block averaging in front (the block grid is symmetric about the centre)."""
    torch.manual_seed(2)
    enc = randomise_bn(EquivariantEncoder(box, group, fields=(3, 4, 6, 6), final_fields=12, head_fields=12,
                                          bin=bin).double())
    x = torch.randn(3, box, box, dtype=torch.float64)
    assert (enc.features(x).abs().sum(1) > 0).all()  # non-degenerate
    R, d = enc(x)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(3, 3, 3), atol=1e-10)
    for e in enc.G.elements:
        R2, d2 = enc(image_action(x, e))
        assert (R2 - phi_r(e) @ R).abs().max() < TOL
        assert (d2 - d @ phi_t(e).T).abs().max() < TOL


def test_encoder_bin_must_divide_the_box():
    with pytest.raises(ValueError, match="must divide the box"):
        EquivariantEncoder(50, "D4", bin=3)


def _isotropic_ctf(L, n):
    return ctf_2d(L, 5.0, {"defocus_u_angstrom": torch.linspace(1.5e4, 2e4, n), "defocus_v_angstrom": torch.linspace(1.5e4, 2e4, n),
                           "defocus_angle_degrees": torch.zeros(n), "voltage_kv": torch.full((n,), 300.0),
                           "cs_mm": torch.full((n,), 2.7), "amplitude_contrast": torch.full((n,), 0.1)}, torch.float64)


@pytest.mark.parametrize("decoder", ["fouriernet", "voxel"])
@pytest.mark.parametrize("preset", ["d4-l2", "c4-mirror", "standard"])
def test_band_loss_is_the_mse_of_lowpass_filtered_images(decoder, preset):
    """Band mode (loss on |k| < r only, decoder read on those points, partial DFT) gives, for
    each branch, the MSE of the rendered images after an ideal low-pass — the independent
    reference is the full render → FFT → disc weight; with a loss that keeps the better of two
    branches, the band loss is the minimum over the two branches' references."""
    from eqcryo.models.autoencoder import LOSSES
    from eqcryo.physics.lattice import fft2_centered, radius_2d
    torch.manual_seed(6)
    L, r = 32, 6.5
    m = randomise_bn(build_model(preset, "cpu", L, decoder=decoder).double())
    if decoder == "voxel":
        m.decoder.vol.data.copy_(torch.randn(L, L, L))
    x = torch.randn(3, L, L, dtype=torch.float64)
    ctf = _isotropic_ctf(L, 3)
    w = (radius_2d(L) < r).double()

    def reference(y, c):
        R, d = m.encoder(y)
        E = fft2_centered(m.render(R, d, c) - y)
        return ((E.real ** 2 + E.imag ** 2) * w).sum((-2, -1)) / L ** 4

    ref = reference(x, ctf)
    e = LOSSES[m.loss_name]
    if e is not None:
        ref = torch.minimum(ref, reference(image_action(x, e), transform_ctf(ctf, e)))
    out = m(x, ctf, band_radius=r)
    assert out.pred is None
    torch.testing.assert_close(out.loss, ref, rtol=1e-9, atol=0)


def test_band_loss_gradients_match_and_band_mode_commutes_with_d4():
    from eqcryo.physics.lattice import fft2_centered, radius_2d
    torch.manual_seed(7)
    L, r = 32, 9.0
    m = randomise_bn(build_model("d4-l2", "cpu", L).double())
    m.decoder.vol.data.copy_(torch.randn(L, L, L))
    x, ctf = torch.randn(2, L, L, dtype=torch.float64), _isotropic_ctf(L, 2)
    R, d = m.encoder(x)
    E = fft2_centered(m.render(R, d, ctf) - x)
    ref = (((E.real ** 2 + E.imag ** 2) * (radius_2d(L) < r).double()).sum((-2, -1)) / L ** 4).sum()
    g_ref = torch.autograd.grad(ref, [m.decoder.vol, *m.encoder.parameters()])
    loss = m(x, ctf, band_radius=r).loss
    g = torch.autograd.grad(loss.sum(), [m.decoder.vol, *m.encoder.parameters()])
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)
    for e in range(8):
        torch.testing.assert_close(m(image_action(x, e), ctf, band_radius=r).loss, loss, rtol=1e-10, atol=0)


def test_standard_encoder_is_not_equivariant():
    torch.manual_seed(3)
    enc = randomise_bn(StandardEncoder(32, channels=(4, 4, 4, 4, 4), hidden=(8, 8)).double())
    x = torch.randn(2, 32, 32, dtype=torch.float64)
    R, _ = enc(x)
    R2, _ = enc(image_action(x, 1))
    assert (R2 - phi_r(1) @ R).abs().max() > 1e-3


@pytest.mark.parametrize("decoder", ["fouriernet", "voxel"])
@pytest.mark.parametrize("group", ["C4", "D4"])
def test_autoencoder_commutes_with_the_group(decoder, group):
    """Γ(L_g I) = L_g Γ(I) for g in H, with an (isotropic) CTF and the half-pixel centre."""
    torch.manual_seed(4)
    L = 32
    enc = EquivariantEncoder(L, group, fields=(4, 6, 8), final_fields=12, head_fields=12)
    dec = FourierNet(L, width=16) if decoder == "fouriernet" else VoxelDecoder(L, init=torch.randn(L, L, L))
    m = randomise_bn(CryoModel(enc, dec, "l2").double())
    x = torch.randn(2, L, L, dtype=torch.float64)
    # non-degenerate: the 6-vector of every image has rank 2 (else the closest rotation is not unique)
    f = enc.features(x)
    assert (f.abs().sum(1) > 0).all()
    ctf = ctf_2d(L, 5.0, {"defocus_u_angstrom": torch.tensor([1.5e4, 2e4]), "defocus_v_angstrom": torch.tensor([1.5e4, 2e4]),
                          "defocus_angle_degrees": torch.zeros(2), "voltage_kv": torch.full((2,), 300.0),
                          "cs_mm": torch.full((2,), 2.7), "amplitude_contrast": torch.full((2,), 0.1)}, torch.float64)
    out = m(x, ctf, return_images=True).pred
    for e in enc.G.elements:
        out2 = m(image_action(x, e), ctf, return_images=True).pred
        assert (out2 - image_action(out, e)).abs().max() < TOL * out.abs().max()


def test_fouriernet_is_exactly_hermitian_and_its_map_real():
    torch.manual_seed(5)
    fn = FourierNet(16, width=32).double()
    k = torch.randn(500, 3, dtype=torch.float64)
    k[:50, 0] = 0  # the tie-break planes
    k[:10, 1] = 0
    v, vm = fn.evaluate(k), fn.evaluate(-k)
    assert torch.equal(v, vm.conj())
    assert fn.evaluate(torch.zeros(1, 3, dtype=torch.float64)).imag.item() == 0
    vol = fn.volume()
    assert vol.shape == (16, 16, 16) and vol.dtype == torch.float64
    # the exported real map's DFT gives back V̂ on the lattice (Nyquist planes excluded)
    from eqcryo.physics.lattice import fft3_centered, freq_index
    k = freq_index(16) / 8
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    lattice = fn.evaluate(torch.stack([kx, ky, kz], -1))
    Fv = fft3_centered(vol)
    inside = (kx ** 2 + ky ** 2 + kz ** 2) < 1  # |k| < L/2: what the loss trains; zero beyond
    torch.testing.assert_close(Fv[inside], lattice[inside], atol=1e-10, rtol=1e-10)
    assert Fv[~inside].abs().max() < 1e-10


def test_transform_ctf_matches_ctf_of_transformed_parameters():
    L, apix = 32, 4.0
    p = {"defocus_u_angstrom": torch.tensor([2.2e4]), "defocus_v_angstrom": torch.tensor([1.6e4]),
         "defocus_angle_degrees": torch.tensor([25.0]), "voltage_kv": torch.tensor([300.0]),
         "cs_mm": torch.tensor([2.7]), "amplitude_contrast": torch.tensor([0.1])}
    c = ctf_2d(L, apix, p, torch.float64)
    flipped = dict(p, defocus_angle_degrees=-p["defocus_angle_degrees"])  # row flip: ky -> -ky
    # equal except on the unpaired Nyquist row/column (ky = -L/2 has no +L/2 partner), which
    # the image model masks out
    m = nyquist_mask_2d(L)
    torch.testing.assert_close(transform_ctf(c, 4) * m, ctf_2d(L, apix, flipped, torch.float64) * m, atol=1e-12, rtol=0)
    for e in (1, 3, 5):  # rotations by ±90° turn the astigmatism angle by ∓90° (about DC)
        ang = {1: -90.0, 3: 90.0, 5: None}[e]
        if ang is not None:
            rot = dict(p, defocus_angle_degrees=p["defocus_angle_degrees"] + ang)
            torch.testing.assert_close(transform_ctf(c, e) * m, ctf_2d(L, apix, rot, torch.float64) * m,
                                       atol=1e-12, rtol=0)
    torch.testing.assert_close(transform_ctf(c, 2), c)


def test_symmetric_loss_of_a_pi_symmetric_image_equals_l2():
    torch.manual_seed(6)
    L = 32
    enc = StandardEncoder(L, channels=(4, 4, 4, 4, 4), hidden=(8, 8))
    dec = VoxelDecoder(L, init=torch.randn(L, L, L))
    x = torch.randn(3, L, L)
    x = x + image_action(x, 2)  # L_π x = x
    sym = randomise_bn(CryoModel(enc, dec, "symmetric"))
    l2 = randomise_bn(CryoModel(enc, dec, "l2"))
    torch.testing.assert_close(sym(x).loss, l2(x).loss)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_one_training_step_lowers_the_loss(preset):
    torch.manual_seed(7)
    L = 32
    m = build_model(preset, "cpu", L)
    x = torch.randn(8, L, L) * 0.1 + torch.exp(-((torch.arange(L) - 14.0) ** 2)[:, None] / 20
                                               - ((torch.arange(L) - 17.0) ** 2)[None] / 40)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m.train()
    before = m(x).loss.mean()
    opt.zero_grad()
    before.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    opt.step()
    with torch.no_grad():
        after = m(x).loss.mean()
    assert after < before


def test_symmetric_branch_pose_is_mapped_back_to_the_original_image():
    """If the π-rotated copy wins, the returned pose must explain the *original* image."""
    torch.manual_seed(8)
    L = 32
    enc = StandardEncoder(L, channels=(4, 4, 4, 4, 4), hidden=(8, 8))
    dec = VoxelDecoder(L, init=torch.randn(L, L, L))
    m = randomise_bn(CryoModel(enc, dec, "symmetric").double())
    x = torch.randn(4, L, L, dtype=torch.float64)
    out = m(x, return_images=True)
    torch.testing.assert_close(m.render(out.R, out.d), out.pred)


def test_group_conv_agrees_with_escnn_when_installed():
    """Optional cross-check (escnn is not a dependency; skipped when absent). Verified here with
    escnn 1.0.11: (a) escnn's transformation of C4 regular fields equals our ``act_on_regular``
    (measured 4e-16), and (b) an escnn R2Conv filter bank commutes with our action to float32
    precision (escnn builds its filter basis in float32; measured 4e-7)."""
    pytest.importorskip("escnn")
    from escnn import gspaces
    from escnn import nn as enn

    torch.manual_seed(9)
    gs = gspaces.rot2dOnR2(N=4)
    ft_in = enn.FieldType(gs, 2 * [gs.regular_repr])
    ft_out = enn.FieldType(gs, 3 * [gs.regular_repr])
    conv = enn.R2Conv(ft_in, ft_out, kernel_size=3, padding=1).double().eval()
    w, b = conv.expand_parameters()
    G = Group("C4")
    x = torch.randn(2, 8, 12, 12, dtype=torch.float64)
    gx = enn.GeometricTensor(x, ft_in)

    def f(z):
        return torch.nn.functional.conv2d(z, w.double(), None if b is None else b.double(), padding=1)

    scale = f(x).abs().max()
    for i, el in enumerate(gs.testing_elements):
        assert (gx.transform(el).tensor - act_on_regular(x, G, i)).abs().max() < 1e-12
        assert (f(act_on_regular(x, G, i)) - act_on_regular(f(x), G, i)).abs().max() < 1e-5 * scale


@pytest.mark.parametrize("decoder", ["voxel", "fouriernet"])
@pytest.mark.parametrize("preset", ["d4-l2", "c4-mirror"])
def test_half_plane_fourier_loss_equals_rendering_whole_images(preset, decoder):
    """The fast path (the loss on one Hermitian half of the disc, no images rendered) against the
    slow one (render whole images, pixel MSE): equal up to the data's energy outside the disc, a
    constant, so the gradients are equal (float64; the voxel decoder's padded Fourier volume is
    Hermitian only to rounding, hence the tolerance)."""
    from eqcryo.physics.lattice import disc_mask_2d, fft2_centered
    torch.manual_seed(9)
    L = 32
    m = randomise_bn(build_model(preset, "cpu", L, decoder=decoder).double())
    if decoder == "voxel":
        m.decoder.vol.data.copy_(torch.randn(L, L, L))
    x, ctf = torch.randn(3, L, L, dtype=torch.float64), _isotropic_ctf(L, 3)
    fast, slow = m(x, ctf), m(x, ctf, return_images=True)
    assert fast.pred is None and slow.pred is not None
    outside = ((fft2_centered(x).abs() ** 2) * (1 - disc_mask_2d(L))).sum((-2, -1)) / L ** 4
    if m.loss_name == "l2":  # (with a second branch, "outside" depends on which branch won)
        torch.testing.assert_close(fast.loss + outside, slow.loss, rtol=1e-9, atol=0)
    params = [p for p in m.parameters() if p.requires_grad]
    g_fast = torch.autograd.grad(fast.loss.sum(), params, allow_unused=True)
    g_slow = torch.autograd.grad(slow.loss.sum(), params, allow_unused=True)
    for a, b in zip(g_fast, g_slow):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-7, atol=max(1e-10 * float(b.abs().max()), 1e-12))


# ----------------------------------------------------------------------------- K pose hypotheses
@pytest.mark.parametrize("group,K", [("C4", 4), ("D4", 2), ("D4", 8)])
def test_every_pose_hypothesis_is_exactly_equivariant(group, K):
    """Each of the K rotations transforms by φ_r(g) (float64, every group element), so the set
    does as a whole; the shared shift by φ_t(g); hypotheses differ from each other."""
    torch.manual_seed(5)
    enc = randomise_bn(EquivariantEncoder(32, group, fields=(3, 4, 6), final_fields=12, head_fields=12,
                                          hypotheses=K).double())
    x = torch.randn(3, 32, 32, dtype=torch.float64)
    R, d = enc.pose_hypotheses(x)
    assert R.shape == (3, K, 3, 3) and d.shape == (3, 2)
    I3 = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(R @ R.transpose(-1, -2), I3.expand_as(R), atol=1e-10)
    assert torch.allclose(torch.linalg.det(R), torch.ones(3, K, dtype=torch.float64), atol=1e-10)
    assert (R[:, :, None] - R[:, None]).abs().amax((-1, -2)).triu(1).sum() > 0  # not K copies of one pose
    for e in enc.G.elements:
        R2, d2 = enc.pose_hypotheses(image_action(x, e))
        assert (R2 - phi_r(e) @ R).abs().max() < TOL
        assert (d2 - d @ phi_t(e).T).abs().max() < TOL


def test_one_hypothesis_is_the_paper_encoder():
    """K = 1 keeps the paper's parameters (same shapes, checkpoints load) and forward."""
    torch.manual_seed(6)
    a = EquivariantEncoder(32, "D4", fields=(3, 4, 6), final_fields=12, head_fields=12)
    b = EquivariantEncoder(32, "D4", fields=(3, 4, 6), final_fields=12, head_fields=12, hypotheses=1)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 32, 32)
    a.eval(), b.eval()
    assert torch.equal(a(x)[0], b(x)[0])


@pytest.mark.parametrize("return_images", [False, True])
def test_winner_take_all_loss_picks_and_trains_the_best_hypothesis(return_images):
    """The loss of each image is the smallest of its K hypotheses' losses (each computed as a
    one-hypothesis model would), its pose is that hypothesis, and gradients reach the winning
    hypothesis' head weights only; the whole model still commutes with D4."""
    torch.manual_seed(7)
    L, K = 32, 3
    enc = EquivariantEncoder(L, "D4", fields=(3, 4, 6), final_fields=12, head_fields=12, hypotheses=K)
    m = randomise_bn(CryoModel(enc, VoxelDecoder(L, init=torch.randn(L, L, L)), "l2").double())
    x = torch.randn(4, L, L, dtype=torch.float64)
    out = m(x, return_images=return_images, band_radius=None if return_images else 10.0)
    R, d = enc.pose_hypotheses(x)
    per = torch.stack([m.render(R[:, k], d) for k in range(K)], 1)
    ref = ((per - x[:, None]) ** 2).mean((-2, -1)) if return_images else \
        torch.stack([m.band_loss(x, R[:, k], d, None, 10.0) for k in range(K)], 1)
    assert torch.allclose(out.loss, ref.min(1).values, rtol=1e-12)
    assert torch.equal(out.hypothesis, ref.argmin(1))
    assert torch.equal(out.R, R[torch.arange(4), ref.argmin(1)])
    # gradients: only the winners' rows of the last rotation layer (copies 2k, 2k+1) move
    one = out.loss[:1].sum()
    w = enc.head_r[1].weight
    g, = torch.autograd.grad(one, w)
    k = int(out.hypothesis[0])
    moved = g.abs().sum((1, 2)).reshape(K, 2).sum(1) > 0
    assert moved.tolist() == [i == k for i in range(K)]
    for e in enc.G.elements:  # equivariance of the whole K-hypothesis model
        o2 = m(image_action(x, e), return_images=True)
        o1 = m(x, return_images=True)
        assert (o2.pred - image_action(o1.pred, e)).abs().max() < TOL * o1.pred.abs().max()
        assert torch.equal(o2.hypothesis, o1.hypothesis)


def test_hypotheses_need_an_equivariant_encoder():
    with pytest.raises(ValueError, match="equivariant"):
        build_model("standard", "cpu", 32, hypotheses=2)
    assert build_model("d4-l2", "cpu", 32, hypotheses=4).n_hypotheses == 4


@pytest.mark.parametrize("preset", ["d4-l2", "standard"])
def test_bf16_encoder_trunk_changes_a_short_run_by_little(preset):
    """encoder_bf16: the trunk runs in bfloat16 (the poses of an untrained encoder differ from
    float32, so it is active), and 15 Adam steps from the same initialisation on the same batch give losses within 5% of the
    float32 run at every step (stated tolerance; measured ~1%), still decreasing."""
    torch.manual_seed(0)
    x = torch.randn(16, 32, 32)
    losses, poses = {}, {}
    for bf16 in (False, True):
        torch.manual_seed(1)
        m = build_model(preset, "cpu", 32)
        m.encoder.bf16 = bf16
        with torch.no_grad():
            m.eval()
            poses[bf16] = m.encoder(x)[0]
            m.train()
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        out = []
        for _ in range(15):
            loss = m(x, band_radius=8.0).loss.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        losses[bf16] = torch.tensor(out)
    assert not torch.equal(poses[False], poses[True])  # bf16 is in effect
    rel = ((losses[True] - losses[False]).abs() / losses[False]).max().item()
    assert rel < 0.05, rel
    assert losses[True][-1] < losses[True][0]
