"""RMS normalisation as Qwen3-Next uses it: the zero-centred RMSNorm and the gated RMSNorm.

RMSNorm: Zhang & Sennrich, "Root Mean Square Layer Normalization" (2019). Mirrors
``Qwen3NextRMSNorm`` and ``Qwen3NextRMSNormGated`` in ``transformers/models/qwen3_next``.

* ``RMSNorm``: ``y = x / rms(x) * (1 + w)`` with ``w`` starting at 0 ("zero-centred gain"), computed in
  float32 and cast back. Used before every mixer and MoE block, at the end of the stack, and per head
  on attention queries and keys.
* ``RMSNormGated``: ``y = (x / rms(x)) * w * silu(z)`` with a plain gain ``w`` starting at 1, applied to
  each DeltaNet value head's output with the gate ``z``.

Leaves out: fused kernels (the reference may load one from the Hub; we stay in plain PyTorch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps)`` over the last dimension, in float32."""
    # F.rms_norm without a weight is exactly this formula, fused into one kernel (one pass, no temporaries)
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps)


def _check_norm_inputs(x: torch.Tensor, dim: int, gate: torch.Tensor | None = None) -> None:
    if x.dim() == 0 or x.shape[-1] != dim:
        raise ValueError(f"x: expected last dimension {dim} (the norm's width), found shape {tuple(x.shape)}")
    if gate is not None and gate.shape != x.shape:
        raise ValueError(f"gate: expected the shape of x {tuple(x.shape)}, found {tuple(gate.shape)}")


class _RMSNormBase(nn.Module):
    """What both norms share: a per-channel gain ``weight`` (D,) and ``eps``."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))  # (D,)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


class RMSNorm(_RMSNormBase):
    """Zero-centred RMSNorm: the gain is ``1 + weight`` so weight decay pulls it towards 1, not 0."""

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The gain ``1 + weight`` starts at 1."""
        self.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        _check_norm_inputs(x, self.weight.shape[0])
        # scale in float32, then cast: rounding once at the end, as the reference does
        return (rms_normalize(x, self.eps) * (1.0 + self.weight.float())).type_as(x)


class RMSNormGated(_RMSNormBase):
    """RMSNorm with a plain gain followed by a SiLU gate (the DeltaNet output norm)."""

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The plain gain starts at 1."""
        self.weight.fill_(1.0)

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:  # (..., D), (..., D)
        _check_norm_inputs(x, self.weight.shape[0], gate)
        dtype = x.dtype
        # the normalised value is rounded to the input dtype before the gain,
        # like the reference
        y = self.weight * rms_normalize(x, self.eps).to(dtype)
        y = y * F.silu(gate.float())
        return y.to(dtype)
