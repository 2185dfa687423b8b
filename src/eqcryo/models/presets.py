"""The paper's four models (SPEC §3) at two scales: ``build_model(preset, profile, box)``.

========== ============================ ==========
preset      encoder                      loss
========== ============================ ==========
standard    cryoAI CNN (not equivariant) symmetric
c4-l2       C4 steerable CNN             l2
c4-mirror   C4 steerable CNN             mirror
d4-l2       D4 steerable CNN             l2
========== ============================ ==========

Profiles: ``paper`` = cryoAI's sizes (channels 64-128-256-256-256; equivariant fields chosen so
the channel counts match: D4 8-16-32-32-32 fields × 8, C4 16-32-64-64-64 × 4) and FourierNet
(width 256); ``cpu`` = a quarter of the widths and the voxel decoder, for 64 px on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .autoencoder import CryoModel
from .decoders import Decoder, FourierNet, VoxelDecoder
from .encoders import EquivariantEncoder, PoseEncoder, StandardEncoder

__all__ = ["PRESETS", "PROFILES", "build_model", "build_encoder", "build_decoder"]

PRESETS = {"standard": (None, "symmetric"), "c4-l2": ("C4", "l2"), "c4-mirror": ("C4", "mirror"),
           "d4-l2": ("D4", "l2")}
@dataclass(frozen=True)
class Profile:
    """The widths of one scale of the models."""

    std_channels: tuple[int, ...]  # standard encoder: channels per block
    std_hidden: tuple[int, int]  # standard encoder: hidden widths of the heads
    fields: dict[str, tuple[int, ...]]  # equivariant encoders: regular fields per block, by group
    final: dict[str, int]  # fields of the last group conv, by group
    head: dict[str, int]  # fields of the heads, by group
    decoder: str  # voxel or fouriernet
    fn_width: int  # FourierNet width


PROFILES: dict[str, Profile] = {
    "paper": Profile(std_channels=(64, 128, 256, 256, 256), std_hidden=(512, 256),
                     fields={"C4": (16, 32, 64, 64, 64), "D4": (8, 16, 32, 32, 32)},
                     final={"C4": 128, "D4": 64}, head={"C4": 64, "D4": 32}, decoder="fouriernet", fn_width=256),
    "cpu": Profile(std_channels=(16, 32, 64, 64, 64), std_hidden=(128, 64),
                   fields={"C4": (4, 8, 16, 16, 16), "D4": (2, 4, 8, 8, 8)},
                   final={"C4": 32, "D4": 16}, head={"C4": 16, "D4": 8}, decoder="voxel", fn_width=64),
}
# The cpu profile gives D4 half the fields of C4 (equal channels, as the paper's widths), so the
# cpu D4 encoder has half C4's parameters (24.6k). "cpu-wide" gives D4 as many fields as C4
# (twice the channels) to separate capacity from symmetry in comparisons (docs/results.md).
PROFILES["cpu-wide"] = replace(PROFILES["cpu"], fields={"C4": (4, 8, 16, 16, 16), "D4": (4, 8, 16, 16, 16)},
                               final={"C4": 32, "D4": 32}, head={"C4": 16, "D4": 16})


def build_encoder(preset: str, profile: str, box: int, so3: str = "gram_schmidt", bin: int | None = None,
                  hypotheses: int = 1) -> PoseEncoder:
    """The preset's encoder at the profile's widths; ``bin`` (None: the profile's) averages
    bin×bin pixel blocks before the encoder (exactly equivariant, see encoders); ``hypotheses``
    K pose hypotheses per image (equivariant encoders only)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model {preset!r}; expected one of {', '.join(PRESETS)}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    group, _ = PRESETS[preset]
    p = PROFILES[profile]
    bin = 1 if bin is None else bin
    if group is None:
        if hypotheses != 1:
            raise ValueError(f"{hypotheses} pose hypotheses need an equivariant encoder (c4-l2, c4-mirror, d4-l2), "
                             f"not {preset!r}")
        return StandardEncoder(box, channels=p.std_channels, hidden=p.std_hidden, so3=so3, bin=bin)
    return EquivariantEncoder(box, group, fields=p.fields[group], final_fields=p.final[group],
                              head_fields=p.head[group], bin=bin, hypotheses=hypotheses)


def build_decoder(kind: str, box: int, profile: str = "cpu") -> Decoder:
    if kind == "voxel":
        return VoxelDecoder(box)
    if kind == "fouriernet":
        return FourierNet(box, width=PROFILES[profile].fn_width)
    raise ValueError(f"unknown decoder {kind!r}; expected voxel or fouriernet")


def build_model(preset: str, profile: str = "cpu", box: int = 64, decoder: str | None = None,
                so3: str = "gram_schmidt", encoder_bin: int | None = None, hypotheses: int = 1) -> CryoModel:
    """One of the four models of the paper's Table 1 (see module docstring); ``hypotheses`` > 1
    gives the equivariant encoders K pose hypotheses, trained winner-take-all (beyond the paper)."""
    enc = build_encoder(preset, profile, box, so3, encoder_bin, hypotheses)
    dec = build_decoder(decoder or PROFILES[profile].decoder, box, profile)
    return CryoModel(enc, dec, PRESETS[preset][1], name=preset)
