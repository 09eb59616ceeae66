"""Bridges to the reference implementation (``transformers.models.qwen3_next``) for checks.

Tests and chapters use these to build a reference module from one of our configs and to copy our
weights into it, so both compute with the same numbers. ``transformers`` is only needed here: the
rest of the package never imports it.
"""

from __future__ import annotations

from .config import Qwen3NextConfig


def reference_config(cfg: Qwen3NextConfig, attn_implementation: str = "eager"):
    """The ``transformers.Qwen3NextConfig`` describing the same model as ``cfg``."""
    from transformers import Qwen3NextConfig as RefConfig

    ref = RefConfig(**cfg.to_dict())
    ref._attn_implementation = attn_implementation
    return ref


def max_abs_diff(a, b) -> float:
    """Largest elementwise difference of two tensors, compared in float32."""
    return (a.float() - b.float()).abs().max().item()
