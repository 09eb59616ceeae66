"""Parameter and cache accounting: the released figures, and agreement with the reference model."""

import torch
import transformers

from qwen3next import Qwen3NextConfig
from qwen3next.accounting import (
    all_attention_cache_bytes,
    attention_mixer_params,
    cache_bytes,
    deltanet_mixer_params,
    moe_params,
    parameter_counts,
)
from qwen3next.reference import reference_config


def test_released_parameter_counts():
    cfg = Qwen3NextConfig.full()
    p = parameter_counts(cfg)
    assert deltanet_mixer_params(cfg) == 33_718_464
    assert attention_mixer_params(cfg) == 27_263_488
    moe = moe_params(cfg)
    assert (moe.total, moe.routed, moe.router, moe.shared, moe.shared_gate) == (
        1_614_809_088, 1_610_612_736, 1_048_576, 3_145_728, 2_048)
    assert p.embedding == p.lm_head == 311_164_928
    assert p.total == 79_674_391_296
    assert p.non_embedding == 79_052_061_440
    assert p.routed_experts == 77_309_411_328
    assert p.active_non_embedding == 3_252_599_552
    assert p.active_with_lm_head == 3_563_764_480
    assert p.active_with_embedding == 3_874_929_408
    assert sum(p.by_component().values()) == p.total


def _reference_counts(cfg):
    with torch.device("meta"):
        ref = transformers.Qwen3NextForCausalLM(reference_config(cfg))
    total = sum(t.numel() for t in ref.parameters())
    routed = sum(t.numel() for n, t in ref.named_parameters() if ".mlp.experts." in n)
    return total, routed


def test_counts_match_the_reference_model_on_meta():
    for cfg in [Qwen3NextConfig.full(), Qwen3NextConfig.tiny(), Qwen3NextConfig.tiny(mlp_only_layers=[1, 5]),
                Qwen3NextConfig.tiny(tie_word_embeddings=True, linear_value_head_dim=8)]:
        total, routed = _reference_counts(cfg)
        p = parameter_counts(cfg)
        assert p.total == total
        assert p.routed_experts == routed


def test_cache_bytes_released():
    cfg = Qwen3NextConfig.full()
    assert cache_bytes(cfg, 1).attention_kv == 24 * 1024  # 24 KiB per token over 12 layers in bf16
    c = cache_bytes(cfg, 262_144)
    assert c.attention_kv == 6 * 2**30
    assert c.deltanet_recurrent == 36 * 32 * 128 * 128 * 4
    assert c.deltanet == 74.25 * 2**20  # constant in the context length
    assert cache_bytes(cfg, 1_000).deltanet == c.deltanet
    assert all_attention_cache_bytes(cfg, 262_144) == 24 * 2**30
    assert cache_bytes(cfg, 100, batch_size=3).total == 3 * cache_bytes(cfg, 100).total
