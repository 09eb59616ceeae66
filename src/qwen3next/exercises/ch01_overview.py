"""Checks for the exercises of chapter 01, "Qwen3-Next at a glance"."""

from __future__ import annotations

from ..accounting import cache_bytes, deltanet_mixer_params, parameter_counts
from ..config import Qwen3NextConfig
from . import check_close, check_equal, check_function


def deltanet_configs() -> list[Qwen3NextConfig]:
    """The configs a reader's DeltaNet parameter count is tried on: the release, the tiny preset, and
    variants that change one size at a time (so a formula with a constant typed in fails)."""
    full = Qwen3NextConfig.full()
    return [full, Qwen3NextConfig.tiny(), full.replace(linear_num_value_heads=16),
            full.replace(linear_key_head_dim=64, linear_value_head_dim=96),
            full.replace(hidden_size=1024, linear_conv_kernel_dim=3)]


def check_deltanet_params(fn) -> bool:
    """A function ``fn(cfg) -> int`` that counts the parameters of one Gated DeltaNet mixer."""
    cases = [((cfg,), deltanet_mixer_params(cfg)) for cfg in deltanet_configs()]
    return check_function(fn, cases, "add up in_proj_qkvz, in_proj_ba, the conv weights, A_log and dt_bias, "
                          "the norm's gain and out_proj; read every size from cfg (linear_num_key_heads, "
                          "linear_key_head_dim, ...), no number typed in.")


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
