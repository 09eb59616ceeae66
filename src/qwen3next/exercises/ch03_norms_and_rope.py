"""Checks for the exercises of chapter 03, "Norms and partial RoPE"."""

from __future__ import annotations

import math

import torch

from ..config import Qwen3NextConfig
from ..norms import RMSNorm
from ..rope import RotaryEmbedding, default_inv_freq
from . import check_close, check_equal, check_tensor_close

# The YaRN setting the exercises use: the one that stretches the release from 262,144 to ~1M positions.
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 262144}


def exercise_norm() -> RMSNorm:
    """The zero-centred norm of exercise 3.3 (width 8, a seeded weight near 0, like a checkpoint's)."""
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
    return check_equal(answer, expected, "compare RotaryEmbedding(cfg.replace(rope_scaling=...)).inv_freq with "
                       "the default inv_freq element by element and count the exact matches.")


def check_qk_temperature(answer: float) -> bool:
    """The factor YaRN multiplies every rotated-part q.k product by (factor 4)."""
    scaling = RotaryEmbedding(Qwen3NextConfig.full().replace(rope_scaling=dict(YARN))).attention_scaling
    return check_close(answer, scaling**2, "cos and sin are each multiplied by attention_scaling, and both q and "
                       "k are rotated with them.", rel=1e-6)


def check_plain_gain(answer) -> bool:
    """The weight a plain ``x_hat * g`` RMSNorm needs to equal :func:`exercise_norm`."""
    expected = 1.0 + exercise_norm().weight.detach()
    return check_tensor_close(answer, expected, "the zero-centred norm multiplies by (1 + weight).", atol=1e-7)
