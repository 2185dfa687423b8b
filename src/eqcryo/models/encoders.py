"""Pose encoders: images (B, L, L) -> rotation R (B, 3, 3) and displacement d (B, 2) px.

``d`` is the particle's displacement from the grid centre (L-1)/2 in pixels (see
:mod:`eqcryo.physics.group`); the image model turns it into a RELION origin.

- :class:`StandardEncoder`: the cryoAI CNN (not equivariant), 6-D -> SO(3) by Gram-Schmidt
  (cryoAI) or SVD; its translation head is trained (the cryoAI release forgot it).
- :class:`EquivariantEncoder`: a steerable CNN for C4 or D4 with regular fields
  (:mod:`eqcryo.models.gconv`), exactly ``E_r(L_g I) = φ_r(g) E_r(I)`` and
  ``E_t(L_g I) = φ_t(g) E_t(I)`` for g in the group.

Box sizes that are not a power of two are zero-padded symmetrically to the next one (exactly
equivariant: padding commutes with rot90/flip about the centre), never resampled silently.
``bin`` > 1 first averages ``bin``×``bin`` pixel blocks (the encoder then sees an L/bin image):
the block grid is symmetric about the image centre when bin divides L, so binning commutes
with the D4 action exactly, and it cuts the encoder's cost by about bin².
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..physics.rotations import sixd_to_matrix_gram_schmidt, sixd_to_matrix_svd
from .gconv import FieldBatchNorm, Group, GroupConv2d, LiftingConv2d, RegularLinear, RegularToRep, field_max_pool

__all__ = ["GaussianPyramid", "StandardEncoder", "EquivariantEncoder", "padded_size"]


def _without_subnormals(k: torch.Tensor) -> torch.Tensor:
    """``k`` with its subnormal values (0 < |x| < the dtype's smallest normal) set to 0."""
    return torch.where(k.abs() < torch.finfo(k.dtype).tiny, torch.zeros_like(k), k)


class GaussianPyramid(nn.Module):
    kernel: torch.Tensor

    """Frozen 1 -> 5 channel filter bank (cryoAI): 11×11 Gaussians of variance 0.01·10^i px²
    (i = 0..4), each summing to 1, reflect padding, then per-image per-channel standardisation.
    Gaussians are D4-symmetric, so the layer is exactly equivariant. (B, L, L) -> (B, 5, L, L)."""

    def __init__(self, n: int = 5, size: int = 11):
        super().__init__()
        r = torch.arange(size, dtype=torch.float64) - size // 2
        r2 = r[:, None] ** 2 + r[None, :] ** 2
        ks = []
        for i in range(n):
            k = torch.exp(-r2 / (2 * 0.01 * 10 ** i))
            ks.append(k / k.sum())
        kernel = torch.stack(ks)[:, None].float()
        # The narrow Gaussians' tails (e.g. exp(-100) ≈ 4e-44 for variance 0.01 px²) are subnormal
        # in float32. They change no output (each is summed with terms ~1e37 times larger), but on
        # some x86 CPUs every multiply with a subnormal takes a microcode assist: this one 1 -> 5
        # channel convolution then took ~55 ms of a ~170 ms training step instead of ~2.5 ms
        # (docs/benchmarks.md). Zeroing them keeps the kernels symmetric, hence the layer exactly
        # equivariant.
        self.register_buffer("kernel", _without_subnormals(kernel))
        # checkpoints written before the zeroing carry the subnormal weights: drop them on load too
        self.register_load_state_dict_post_hook(GaussianPyramid._drop_subnormals)  # type: ignore[no-untyped-call]
        self.pad = size // 2

    @staticmethod
    def _drop_subnormals(module: GaussianPyramid, incompatible_keys: object) -> None:
        module.kernel.copy_(_without_subnormals(module.kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x[:, None], (self.pad,) * 4, mode="reflect")
        y = F.conv2d(x, self.kernel.to(x.dtype))
        mu = y.mean(dim=(-2, -1), keepdim=True)
        sd = y.std(dim=(-2, -1), keepdim=True)
        return (y - mu) / (sd + 1e-6)


def _trunk_precision(bf16: bool, x: torch.Tensor) -> torch.autocast:
    """The convolutional trunk in bfloat16 (autocast: weights stay float32, convolutions run in
    bf16; the heads and the 6-D -> SO(3) map stay float32) when ``bf16``; a no-op otherwise.
    Equivariance then holds to bf16 rounding, not exactly (the float64 tests run without it)."""
    return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16)


def padded_size(L: int) -> int:
    """Next power of two >= L (the size the encoders pool down exactly)."""
    return 1 << (L - 1).bit_length()


def _binned_size(box: int, bin: int) -> int:
    if bin < 1 or box % bin:
        raise ValueError(f"encoder input bin {bin} (model.encoder_input_bin) must divide the box {box}")
    return box // bin


def _bin(x: torch.Tensor, bin: int) -> torch.Tensor:
    return F.avg_pool2d(x[:, None], bin)[:, 0] if bin > 1 else x


def _pad_to(x: torch.Tensor, n: int) -> torch.Tensor:
    p = (n - x.shape[-1]) // 2
    return F.pad(x, (p, p, p, p)) if p else x


class PoseEncoder(nn.Module, abc.ABC):
    """What the image model needs of an encoder: ``encoder(images (B, L, L)) -> (R (B, 3, 3),
    d (B, 2) px)``, and :meth:`pose_hypotheses` for K poses per image."""

    box: int
    bin: int
    n: int  # the side the trunk sees (binned, padded)
    bf16: bool  # the trunk in bfloat16 (ModelConfig.encoder_bf16)
    n_hypotheses: int = 1

    @abc.abstractmethod
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, L, L) -> (R (B, 3, 3), d (B, 2) px)."""

    def pose_hypotheses(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, L, L) -> (R (B, K, 3, 3), d (B, 2) px); K = 1 unless overridden."""
        R, d = self(images)
        return R[:, None], d


class StandardEncoder(PoseEncoder):
    """The cryoAI encoder. ``channels`` per block (cryoAI: 64, 128, 256, 256, 256) and convs per
    block (2, 2, 3, 2, 2); the last two blocks average-pool, the others max-pool, then a final
    max pool. Heads: rotation Linear-ReLU-BN-Linear-ReLU-Linear to 6; translation the same
    without BN, to 2. ``hidden`` = (512, 256) at cryoAI's size."""

    def __init__(self, box: int, channels: Sequence[int] = (64, 128, 256, 256, 256),
                 convs: Sequence[int] = (2, 2, 3, 2, 2), hidden: tuple[int, int] = (512, 256),
                 so3: str = "gram_schmidt", bin: int = 1):
        super().__init__()
        self.box, self.bin, self.n = box, bin, padded_size(_binned_size(box, bin))
        self.pyramid = GaussianPyramid()
        # cryoAI's 5 blocks take 128 px to 2x2 (after the final pool); smaller boxes drop the
        # last blocks so that at least 1x1 remains (64 px: 5 blocks -> 1x1; 32 px: 4 blocks).
        n_blocks = min(len(channels), int(math.log2(self.n)) - 1)
        channels, convs = tuple(channels[:n_blocks]), tuple(convs[:n_blocks])
        layers, c_prev = [], 5
        for i, (c, m) in enumerate(zip(channels, convs)):
            for _ in range(m):
                layers += [nn.Conv2d(c_prev, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                c_prev = c
            layers.append(nn.AvgPool2d(2) if i >= 3 else nn.MaxPool2d(2))
        layers.append(nn.MaxPool2d(2))
        self.trunk = nn.Sequential(*layers)
        side = self.n >> (len(channels) + 1)
        if side < 1 or n_blocks < 1:
            raise ValueError(f"box {box} too small for the standard encoder")
        feat = c_prev * side * side
        h1, h2 = hidden
        self.rot_head = nn.Sequential(nn.Linear(feat, h1), nn.ReLU(), nn.BatchNorm1d(h1), nn.Linear(h1, h2), nn.ReLU(),
                                      nn.Linear(h2, 6))
        self.trans_head = nn.Sequential(nn.Linear(feat, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 2))
        self.so3 = so3
        self.bf16 = False

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, L, L) -> (R (B, 3, 3), d (B, 2) px)."""
        x = self.pyramid(_pad_to(_bin(images, self.bin), self.n))
        with _trunk_precision(self.bf16, x):
            f = self.trunk(x).flatten(1)
        f = f.to(images.dtype)
        six = self.rot_head(f)
        R = sixd_to_matrix_gram_schmidt(six) if self.so3 == "gram_schmidt" else sixd_to_matrix_svd(six)
        return R, self.trans_head(f) * self.bin


class EquivariantEncoder(PoseEncoder):
    """The paper's steerable encoder (App. E) for ``group`` "C4" or "D4".

    ``fields`` regular fields per block (one block = two 3×3 group convs, each + ReLU + field
    batch norm, then 2×2 max pool); the number of blocks is set by the box so that a final max
    pool leaves 2×2, closed by a 2×2 group conv to 1×1. Heads: ``head_fields`` regular fields
    (RegularLinear + ReLU) then equivariant linear maps to φ_t and to φ_r ⊕ φ_r, then the cross
    product + special orthogonalisation (exactly equivariant).

    ``hypotheses`` K > 1 (beyond the paper; :meth:`pose_hypotheses`): the rotation head ends in K
    pairs (V1, V2), each transforming by φ_r, so each of the K rotations is exactly equivariant
    and the set transforms as a whole by φ_r(g). The shift head is shared. ``forward`` returns
    the first hypothesis; :class:`~eqcryo.models.autoencoder.CryoModel` picks among all K by
    the image loss (winner-take-all).
    """

    def __init__(self, box: int, group: str = "D4", fields: Sequence[int] = (8, 16, 32, 32, 32), final_fields: int = 64,
                 head_fields: int = 32, bin: int = 1, hypotheses: int = 1):
        super().__init__()
        if hypotheses < 1:
            raise ValueError(f"hypotheses {hypotheses}: expected >= 1")
        self.n_hypotheses = hypotheses
        self.bf16 = False
        self.box, self.bin, self.n = box, bin, padded_size(_binned_size(box, bin))
        self.G = Group(group)
        self.pyramid = GaussianPyramid()
        n_blocks = int(math.log2(self.n)) - 2  # n -> 2 after the blocks and the final pool
        if n_blocks < 1:
            raise ValueError(f"box {box} too small for the equivariant encoder")
        fields = tuple(fields[:n_blocks]) + (fields[-1],) * max(0, n_blocks - len(fields))
        self.fields = fields
        blocks, c_prev, lift = [], 5, True
        for c in fields:
            conv1 = (LiftingConv2d(self.G, c_prev, c, 3, padding=1) if lift
                     else GroupConv2d(self.G, c_prev, c, 3, padding=1))
            blocks.append(nn.ModuleList([conv1, FieldBatchNorm(self.G, c), GroupConv2d(self.G, c, c, 3, padding=1),
                                         FieldBatchNorm(self.G, c)]))
            c_prev, lift = c, False
        self.blocks = nn.ModuleList(blocks)
        self.final = GroupConv2d(self.G, c_prev, final_fields, 2)
        self.head_t = nn.ModuleList([RegularLinear(self.G, final_fields, head_fields),
                                     RegularToRep(self.G, head_fields, "t")])
        self.head_r = nn.ModuleList([RegularLinear(self.G, final_fields, head_fields),
                                     RegularToRep(self.G, head_fields, "r", copies=2 * hypotheses)])

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Regular-field vector (B, final_fields·|G|) of images (B, L, L)."""
        x = self.pyramid(_pad_to(_bin(images, self.bin), self.n))
        with _trunk_precision(self.bf16, x):
            for block in self.blocks:
                conv1, bn1, conv2, bn2 = block  # type: ignore[misc]  # (a ModuleList of four)
                x = bn1(F.relu(conv1(x)))  # type: ignore[has-type]
                x = bn2(F.relu(conv2(x)))  # type: ignore[has-type]
                x = field_max_pool(x)
            x = field_max_pool(x)
            f = F.relu(self.final(x))[..., 0, 0]
        return f.to(images.dtype)

    def sixd(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The heads' raw outputs: (V1, V2) pairs (B, K, 6) and d (B, 2) px, before the SO(3) map."""
        f = self.features(images)
        t = self.head_t[1](F.relu(self.head_t[0](f)))
        six = self.head_r[1](F.relu(self.head_r[0](f)))
        return six.reshape(len(six), self.n_hypotheses, 6), t * self.bin  # d in full-size pixels

    def pose_hypotheses(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, L, L) -> (R (B, K, 3, 3), d (B, 2) px): K rotations, one shared shift."""
        six, d = self.sixd(images)
        return sixd_to_matrix_svd(six), d

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, L, L) -> (R (B, 3, 3), d (B, 2) px) (the first hypothesis when K > 1)."""
        R, d = self.pose_hypotheses(images)
        return R[:, 0], d
