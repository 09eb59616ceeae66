"""Checks for the exercises of chapter 03, "Norms and partial RoPE"."""

from __future__ import annotations

import math

import torch

from ..config import Qwen3NextConfig
from ..norms import RMSNorm
from ..rope import RotaryEmbedding, apply_rotary, default_inv_freq
from . import check_close, check_equal, check_function, check_tensor_close

# The YaRN setting the exercises use: the one that stretches the release from 262,144 to ~1M positions.
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 262144}


def rotary_cases() -> list[tuple[tuple, torch.Tensor]]:
    """Inputs for a reader's ``apply_rotary(x, cos, sin)``: partial and full rotation, one and many heads,
    positions far apart, with the package's answers."""
    gen = torch.Generator().manual_seed(3)
    cases = []
    for (B, H, T, D), R, theta in [((1, 16, 5, 256), 64, 1e7), ((2, 2, 3, 16), 8, 1e4), ((1, 1, 4, 8), 8, 1e4),
                                   ((1, 3, 6, 32), 16, 1e7)]:
        x = torch.randn(B, H, T, D, generator=gen)
        positions = torch.randint(0, 300_000, (B, T), generator=gen).float()
        angles = positions[..., None] * default_inv_freq(theta, R)  # (B, T, R/2)
        cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
        cases.append(((x, cos, sin), apply_rotary(x, cos, sin)))
    return cases


def check_apply_rotary(fn) -> bool:
    """A function ``fn(x (B, H, T, D), cos, sin (B, T, R)) -> (B, H, T, D)``: partial rotate-half RoPE."""
    return check_function(fn, rotary_cases(), "rotate only the first R = cos.shape[-1] dims: split them into "
                          "halves x1, x2, rotate_half gives (-x2, x1), then x * cos + rotate_half(x) * sin "
                          "(cos, sin need a head axis: unsqueeze(1)); the other D - R dims pass through.",
                          atol=1e-4)


def exercise_norm() -> RMSNorm:
    """The zero-centred norm of the plain-gain exercise (width 8, a seeded weight near 0, like a
    checkpoint's)."""
    gen = torch.Generator().manual_seed(3)
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.copy_(0.05 * torch.randn(8, generator=gen))
    return norm


def check_slowest_wavelength(answer: float) -> bool:
    """Wavelength, in tokens, of the slowest rotating pair of the released model (default RoPE)."""
    inv_freq = RotaryEmbedding(Qwen3NextConfig.full()).inv_freq
    expected = 2 * math.pi / inv_freq[-1].item()
    return check_close(answer, expected, "a pair with frequency f turns once every 2*pi/f tokens; the slowest "
                       "pair is the last entry of inv_freq (theta 1e7, 64 rotated dims).", rel=1e-3)


def check_yarn_unchanged_pairs(answer: int) -> bool:
    """How many of the 32 rotated pairs YaRN (factor 4) leaves with exactly their default frequency."""
    cfg = Qwen3NextConfig.full()
    yarn = RotaryEmbedding(cfg.replace(rope_scaling=dict(YARN))).inv_freq
    expected = int((yarn == default_inv_freq(cfg.rope_theta, cfg.rotary_dim)).sum())
    return check_equal(answer, expected, "the ramp is 0 for every pair up to `low`; count pairs 0..low, or "
                       "compare the YaRN inv_freq with the default one element by element.")


def check_plain_gain(answer) -> bool:
    """The weight a plain ``x_hat * g`` RMSNorm needs to equal :func:`exercise_norm`."""
    expected = 1.0 + exercise_norm().weight.detach()
    return check_tensor_close(answer, expected, "the zero-centred norm multiplies by (1 + weight).", atol=1e-7)
