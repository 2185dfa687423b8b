"""Exact group convolutions for the pixel-grid groups C4 and D4, in plain PyTorch.

Feature maps carry *regular fields*: a tensor (B, C·|G|, H, W) whose channel ``c·|G| + h`` is
field c's copy for group element h. Under ``g`` they transform as

    [g.f]_{c,h}(x) = f_{c, g⁻¹h}(g⁻¹ x),

i.e. the image action :func:`eqcryo.physics.group.image_action` on the spatial axes plus a
permutation of each field's |G| channels. Because PyTorch's conv2d is a cross-correlation,
filters for element h are the base filter transformed by ``L_h`` (rot90/flip about the kernel
centre), so every layer is *exactly* equivariant: no interpolation, one ``conv2d`` per layer with
a filter bank expanded from one filter per field through precomputed indices.

Group theory (element indices, products, representations) lives in
:mod:`eqcryo.physics.group`; this module only builds layers on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..physics.group import compose, group_elements, image_action, inverse, phi_r, phi_t

__all__ = ["Group", "LiftingConv2d", "GroupConv2d", "FieldBatchNorm", "RegularLinear", "RegularToRep",
           "field_max_pool", "act_on_regular"]


class Group:
    """A subgroup of D4 given by name ("C4" or "D4"), with the tables the layers need."""

    def __init__(self, name: str):
        self.name = name
        self.elements = group_elements(name)  # D4 element indices
        self.order = len(self.elements)
        pos = {e: i for i, e in enumerate(self.elements)}
        # perm[h][h'] = position of h⁻¹ h' (for filter expansion), act[g][h] = position of g⁻¹ h.
        self.filter_perm = torch.tensor([[pos[compose(inverse(h), hp)] for hp in self.elements]
                                         for h in self.elements])
        self.act_perm = torch.tensor([[pos[compose(inverse(g), h)] for h in self.elements]
                                      for g in self.elements])

    def rep(self, kind: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Matrices (|G|, d, d) of ``phi_t`` ("t", d = 2) or ``phi_r`` ("r", d = 3) for every element."""
        f = {"t": phi_t, "r": phi_r}[kind]
        return torch.stack([f(e) for e in self.elements]).to(dtype)


def act_on_regular(x: torch.Tensor, G: Group, g_pos: int) -> torch.Tensor:
    """Transform regular feature maps (B, C·|G|, H, W) by the element at position ``g_pos``."""
    B, CG, H, W = x.shape
    x = x.reshape(B, CG // G.order, G.order, H, W)[:, :, G.act_perm[g_pos]]
    return image_action(x, G.elements[g_pos]).reshape(B, CG, H, W)


def _expansion_index(expand: Callable[[torch.Tensor], torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """Precompute the gather index of a filter-bank expansion: rot90/flip of a kernel and the
    channel permutations only move entries, so expanding ``arange`` once tells, for every entry
    of the bank, which base weight it is."""
    n = math.prod(shape)
    return expand(torch.arange(n, dtype=torch.float64).reshape(shape)).round().long()


class LiftingConv2d(nn.Module):
    index: torch.Tensor

    """Trivial fields (B, C_in, H, W) -> regular fields (B, C_out·|G|, H', W').

    Weight: one (C_out, C_in, k, k) filter per output field; bias per field (invariant).
    """

    def __init__(self, G: Group, c_in: int, c_out: int, kernel_size: int, padding: int = 0, bias: bool = True):
        super().__init__()
        self.G, self.c_in, self.c_out, self.k, self.padding = G, c_in, c_out, kernel_size, padding
        self.weight = nn.Parameter(torch.empty(c_out, c_in, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.register_buffer("index", _expansion_index(self._expand, self.weight.shape), persistent=False)

    def _expand(self, w: torch.Tensor) -> torch.Tensor:
        w = torch.stack([image_action(w, h) for h in self.G.elements], 1)  # (C_out, G, C_in, k, k)
        return w.reshape(self.c_out * self.G.order, self.c_in, self.k, self.k)

    def expanded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = self.weight.reshape(-1)[self.index]
        b = None if self.bias is None else self.bias.repeat_interleave(self.G.order)
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.expanded()
        return F.conv2d(x, w, b, padding=self.padding)


class GroupConv2d(nn.Module):
    index: torch.Tensor

    """Regular fields (B, C_in·|G|, H, W) -> regular fields (B, C_out·|G|, H', W').

    Weight (C_out, C_in, |G|, k, k): one filter per (output field, input field, input group
    channel). Output channel h uses ``L_h`` of the base filter with input channels permuted by
    ``h⁻¹ h'``. ``kernel_size`` 2 (the encoder's last layer) is exact too: rot90/flip act about
    the kernel centre (0.5, 0.5), matching an even-sized feature map's centre.
    """

    def __init__(self, G: Group, c_in: int, c_out: int, kernel_size: int, padding: int = 0, bias: bool = True):
        super().__init__()
        self.G, self.c_in, self.c_out, self.k, self.padding = G, c_in, c_out, kernel_size, padding
        n = G.order
        self.weight = nn.Parameter(torch.empty(c_out, c_in, n, kernel_size, kernel_size))
        fan_in = c_in * n * kernel_size * kernel_size
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / fan_in))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.register_buffer("index", _expansion_index(self._expand, self.weight.shape), persistent=False)

    def _expand(self, weight: torch.Tensor) -> torch.Tensor:
        G, n = self.G, self.G.order
        banks = []
        for i, h in enumerate(G.elements):
            w = weight[:, :, G.filter_perm[i]]  # (C_out, C_in, G, k, k), input channels permuted
            banks.append(image_action(w, h))
        return torch.stack(banks, 1).reshape(self.c_out * n, self.c_in * n, self.k, self.k)

    def expanded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = self.weight.reshape(-1)[self.index]  # one gather: the whole bank from one filter per field
        b = None if self.bias is None else self.bias.repeat_interleave(self.G.order)
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.expanded()
        return F.conv2d(x, w, b, padding=self.padding)


class FieldBatchNorm(nn.Module):
    """Batch norm whose statistics and affine parameters are shared by each field's |G| channels
    (escnn's InnerBatchNorm), so it commutes with the group action. Input (B, C·|G|, H, W)."""

    def __init__(self, G: Group, c: int):
        super().__init__()
        self.G, self.c = G, c
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, |G|·H, W): statistics per field over batch, group channels and space
        B, CG, H, W = x.shape
        return self.bn(x.reshape(B, self.c, self.G.order * H, W)).reshape(B, CG, H, W)


def field_max_pool(x: torch.Tensor) -> torch.Tensor:
    """2×2 max pool, stride 2 (pointwise over channels, so equivariant when H, W are even)."""
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"field_max_pool needs even spatial size, got {tuple(x.shape[-2:])}")
    return F.max_pool2d(x, 2)


class RegularLinear(nn.Module):
    """Equivariant linear map between regular-field vectors (B, C_in·|G|) -> (B, C_out·|G|)."""

    def __init__(self, G: Group, c_in: int, c_out: int):
        super().__init__()
        self.conv = GroupConv2d(G, c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x[..., None, None])[..., 0, 0]


class RegularToRep(nn.Module):
    rep: torch.Tensor
    inv_proj: torch.Tensor

    """Equivariant linear map from C regular fields (B, C·|G|) to ``m`` copies of a representation
    ρ ∈ {φ_t, φ_r} (B, m·d): ``y = Σ_{c,h} ρ(h) w_c x_{c,h}`` (+ a bias in ρ's invariant subspace).

    Any w gives ``y(P_g x) = ρ(g) y(x)``; that is the whole space of such maps.
    """

    def __init__(self, G: Group, c_in: int, kind: str, copies: int = 1):
        super().__init__()
        self.G, self.c_in, self.copies = G, c_in, copies
        rep = G.rep(kind)
        self.register_buffer("rep", rep)  # (G, d, d)
        d = rep.shape[-1]
        self.d = d
        self.weight = nn.Parameter(torch.randn(copies, c_in, d) / math.sqrt(c_in * G.order))
        inv = rep.mean(0)  # projector onto the invariant subspace
        self.register_buffer("inv_proj", inv)
        self.bias = nn.Parameter(torch.zeros(copies, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        x = x.reshape(B, self.c_in, self.G.order)
        # basis[m, c, h, :] = ρ(h) w[m, c]
        basis = torch.einsum("hij,mcj->mchi", self.rep.to(x.dtype), self.weight.to(x.dtype))
        y = torch.einsum("bch,mchi->bmi", x, basis)
        y = y + self.bias.to(x.dtype) @ self.inv_proj.to(x.dtype).T
        return y.reshape(B, self.copies * self.d)
