"""Checks for the exercises of chapter 01, "Qwen3-Next at a glance"."""

from __future__ import annotations

from ..accounting import cache_bytes, parameter_counts
from ..config import Qwen3NextConfig
from . import check_close, check_equal


def check_active_top20(answer: int) -> bool:
    """Non-embedding parameters a token uses if the router picked 20 experts instead of 10."""
    expected = parameter_counts(Qwen3NextConfig.full().replace(num_experts_per_tok=20)).active_non_embedding
    return check_equal(answer, expected, "only the routed part of each MoE block changes: 10 more experts of "
                       "3 x 2048 x 512 parameters in each of the 48 layers, on top of 3,252,599,552.")


def check_kv_cache_gib(answer: float) -> bool:
    """KV cache of a batch of 4 sequences of 131,072 tokens in bfloat16, in GiB (2**30 bytes)."""
    expected = cache_bytes(Qwen3NextConfig.full(), 131_072, batch_size=4).attention_kv / 2**30
    return check_close(answer, expected, "per token and layer: K and V, 2 KV heads of 256 numbers, 2 bytes "
                       "each; only the 12 attention layers keep a KV cache.")


def check_interval2_cache_gib(answer: float) -> bool:
    """Whole cache (KV + DeltaNet state) at 262,144 tokens, one sequence, if every 2nd layer were attention."""
    cfg = Qwen3NextConfig.full().replace(full_attention_interval=2)
    expected = cache_bytes(cfg, 262_144).total / 2**30
    return check_close(answer, expected, "with full_attention_interval=2 there are 24 attention layers and 24 "
                       "DeltaNet layers; use qwen3next.accounting.cache_bytes on cfg.replace(...).")


def check_routed_fraction(answer: float) -> bool:
    """Share of all parameters (embedding and head included) that sit in routed experts."""
    p = parameter_counts(Qwen3NextConfig.full())
    return check_close(answer, p.routed_experts / p.total, "divide the routed-expert count by the total.", rel=1e-3)
