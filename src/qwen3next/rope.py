"""Partial rotary position embedding (RoPE), with the default and the YaRN frequencies.

RoPE: Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding" (2021/2024).
YaRN: Peng et al., "YaRN: Efficient Context Window Extension of Large Language Models" (ICLR 2024).
Mirrors ``Qwen3NextRotaryEmbedding`` and ``apply_rotary_pos_emb`` in ``transformers/models/qwen3_next``
and the ``"yarn"`` entry of ``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS``.

Qwen3-Next rotates only the first ``rotary_dim = head_dim * partial_rotary_factor`` dimensions of each
query and key head (64 of 256 in the release); the other 192 carry no position at all. Rotation is the
"NeoX" rotate-half layout: dimension ``i`` pairs with ``i + rotary_dim / 2`` (not with ``i + 1``), and pair
``i`` turns by the angle ``position * inv_freq[i]`` with ``inv_freq[i] = theta ** (-2 i / rotary_dim)``.

* :func:`default_inv_freq`: the plain frequencies (theta 1e7 in the release).
* :func:`yarn_inv_freq`: YaRN's "NTK-by-parts" remapping: fast pairs (many turns over the training
  length) keep their frequency, slow pairs are divided by ``factor``, a linear ramp in between; plus the
  attention temperature ``0.1 ln(factor) + 1`` folded into ``cos`` and ``sin``.
* :class:`RotaryEmbedding`: ``position_ids (B, T) -> cos, sin (B, T, rotary_dim)`` in float32.
* :func:`apply_rotary`: rotate ``x (B, H, T, head_dim)``; the last ``head_dim - rotary_dim`` dims pass through.

Leaves out: the other rope types of transformers (linear, dynamic NTK, llama3, longrope), which
Qwen3-Next does not use; ``dynamic_rope_update`` (a no-op for default and YaRN).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

SUPPORTED_ROPE_TYPES = ("default", "yarn")


def default_inv_freq(theta: float, rotary_dim: int) -> torch.Tensor:
    """``theta ** (-(0, 2, ..., rotary_dim - 2) / rotary_dim)``: one frequency per rotated pair.

    Computed on the CPU in float32 whatever the current default device (so a model built on the
    ``meta`` device still has real frequencies: they are not in the checkpoint).
    """
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(f"rotary_dim: expected a positive even number, found {rotary_dim}")
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float32, device="cpu") / rotary_dim  # (R/2,)
    return 1.0 / (theta**exponents)


def yarn_correction_dim(num_rotations: float, rotary_dim: int, theta: float, original_max: int) -> float:
    """The (fractional) pair index whose wavelength fits ``num_rotations`` times into ``original_max``.

    Pair ``i`` has wavelength ``2 pi theta^(2i/R)``; solving ``original_max / wavelength = num_rotations``
    for ``i`` gives ``R ln(original_max / (2 pi num_rotations)) / (2 ln theta)``.
    """
    return rotary_dim * math.log(original_max / (num_rotations * 2 * math.pi)) / (2 * math.log(theta))


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature ``0.1 * mscale * ln(factor) + 1`` (1 when not stretching)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_inv_freq(theta: float, rotary_dim: int, params: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """YaRN frequencies and attention scaling from a ``rope_scaling`` dict.

    ``params`` keys: ``factor`` (required), ``original_max_position_embeddings`` (required),
    optional ``beta_fast`` (32), ``beta_slow`` (1), ``attention_factor``, ``mscale``, ``mscale_all_dim``,
    ``truncate`` (True). Returns ``(inv_freq (R/2,), attention_scaling)``.
    """
    _check_yarn_params(params)
    factor = float(params["factor"])
    original_max = params["original_max_position_embeddings"]
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    # attention temperature: sharpen softmax a little to compensate for the flatter, stretched angles
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_mscale(factor)

    # pairs below `low` turn more than beta_fast times over the training length: keep them (extrapolate);
    # pairs above `high` turn less than beta_slow times: stretch them by `factor` (interpolate)
    low = yarn_correction_dim(beta_fast, rotary_dim, theta, original_max)
    high = yarn_correction_dim(beta_slow, rotary_dim, theta, original_max)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero in the ramp

    wavelength_scale = 1.0 / default_inv_freq(theta, rotary_dim)  # (R/2,) theta^(2i/R)
    pair = torch.arange(rotary_dim // 2, dtype=torch.float32, device="cpu")  # (R/2,)
    ramp = ((pair - low) / (high - low)).clamp(0, 1)  # 0 = keep, 1 = stretch
    keep = 1 - ramp
    inv_freq = 1.0 / (factor * wavelength_scale) * (1 - keep) + 1.0 / wavelength_scale * keep
    return inv_freq, float(attention_factor)


def _check_yarn_params(params: dict[str, Any]) -> None:
    for key in ("factor", "original_max_position_embeddings"):
        if params.get(key) is None:
            raise ValueError(f"rope_scaling: yarn needs {key!r}, found keys {sorted(params)}")


def rope_frequencies(config) -> tuple[torch.Tensor, float]:
    """``(inv_freq (rotary_dim/2,), attention_scaling)`` for a :class:`~qwen3next.config.Qwen3NextConfig`."""
    params = dict(config.rope_parameters)
    rope_type = config.rope_type  # also understands the legacy key "type"
    theta, rotary_dim = float(params["rope_theta"]), config.rotary_dim
    if rope_type == "default":
        return default_inv_freq(theta, rotary_dim), 1.0
    if rope_type == "yarn":
        params.setdefault("original_max_position_embeddings", config.max_position_embeddings)
        return yarn_inv_freq(theta, rotary_dim, params)
    raise ValueError(f"rope_type: {rope_type!r} is not supported; expected one of {SUPPORTED_ROPE_TYPES}")


class RotaryEmbedding(nn.Module):
    """Turns position ids into the ``cos`` and ``sin`` tables every attention layer shares.

    ``inv_freq`` is a non-persistent buffer (it is recomputed from the config, never loaded);
    ``attention_scaling`` is YaRN's temperature (1.0 for the default type), already multiplied into
    the returned ``cos`` and ``sin`` so that ``q . k`` picks up its square.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.rotary_dim = config.rotary_dim
        self.rope_type = config.rope_type
        inv_freq, self.attention_scaling = rope_frequencies(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (R/2,)

    @torch.no_grad()
    def reset_inv_freq(self) -> None:
        """Recompute ``inv_freq`` in place (after ``to_empty``, which leaves buffers uninitialised)."""
        inv_freq, self.attention_scaling = rope_frequencies(self.config)
        self.inv_freq = inv_freq.to(self.inv_freq.device)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_forward_inputs(position_ids)
        inv_freq = self.inv_freq.to(device=position_ids.device, dtype=torch.float32)
        angles = position_ids[..., None].float() * inv_freq  # (B, T, R/2)
        # NeoX layout: the same angle for dim i and dim i + R/2, so the table is the angles twice
        angles = torch.cat((angles, angles), dim=-1)  # (B, T, R)
        return angles.cos() * self.attention_scaling, angles.sin() * self.attention_scaling

    @staticmethod
    def _check_forward_inputs(position_ids: torch.Tensor) -> None:
        if position_ids.dim() != 2 or position_ids.is_floating_point():
            raise ValueError(
                f"position_ids: expected an integer tensor of shape (B, T), found "
                f"{position_ids.dtype} of shape {tuple(position_ids.shape)}"
            )

    def extra_repr(self) -> str:
        scaling = f"{self.attention_scaling:.4f}"
        return f"rope_type={self.rope_type!r}, rotary_dim={self.rotary_dim}, attention_scaling={scaling}"


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x1, x2) -> (-x2, x1)`` over the last dim: a 90-degree turn of each pair ``(x_i, x_{i+R/2})``."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``rotary_dim = cos.shape[-1]`` dims of ``x (B, H, T, D)``; the rest pass through.

    ``cos``, ``sin``: ``(B, T, R)`` (or ``(1, T, R)``), cast to ``x.dtype`` first, so a bf16 model
    rotates in bf16 exactly like the reference.
    """
    _check_rotary_inputs(x, cos, sin)
    rotary_dim = cos.shape[-1]
    cos = cos.unsqueeze(1).to(x.dtype)  # (B, 1, T, R): the same angles for every head
    sin = sin.unsqueeze(1).to(x.dtype)
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]  # (B, H, T, R), (B, H, T, D - R)
    x_rot = x_rot * cos + rotate_half(x_rot) * sin
    return torch.cat((x_rot, x_pass), dim=-1)  # (B, H, T, D)


def _check_rotary_inputs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"x: expected shape (B, H, T, head_dim), found {tuple(x.shape)}")
    if cos.shape != sin.shape or cos.dim() != 3:
        raise ValueError(
            f"cos, sin: expected two (B, T, rotary_dim) tensors, found {tuple(cos.shape)} and {tuple(sin.shape)}"
        )
    rotary_dim = cos.shape[-1]
    if rotary_dim > x.shape[-1] or rotary_dim % 2:
        raise ValueError(f"cos: rotary_dim {rotary_dim} must be even and at most head_dim {x.shape[-1]}")
    if cos.shape[1] != x.shape[2]:
        raise ValueError(f"cos: covers {cos.shape[1]} positions but x has {x.shape[2]} (shape {tuple(x.shape)})")
