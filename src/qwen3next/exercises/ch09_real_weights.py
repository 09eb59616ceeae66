"""Checks for the exercises of chapter 09, "The real checkpoint"."""

from __future__ import annotations

import math

import torch

from ..config import Qwen3NextConfig
from ..fp8 import dequantize_fp8, quantize_fp8
from ..hub_layout import component_of, hub_layout
from . import check_close, check_equal, report


def _expert_bytes_bf16(cfg: Qwen3NextConfig) -> int:
    layout = hub_layout(cfg.replace(num_hidden_layers=1, num_experts=1, num_experts_per_tok=1))
    return 2 * sum(math.prod(e.shape) for k, e in layout.items() if component_of(k) == "routed experts")


def check_bytes_per_token(answer: int) -> bool:
    """Bytes read from disk for one token when every chosen expert misses the cache (bf16 release)."""
    cfg = Qwen3NextConfig.full()
    moe_layers = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
    expected = cfg.num_experts_per_tok * moe_layers * _expert_bytes_bf16(cfg)
    return check_equal(answer, expected, "each MoE layer picks num_experts_per_tok experts; one expert is three "
                       "matrices of hidden_size x moe_intermediate_size numbers, 2 bytes each in bf16.")


def check_dequantize(fn) -> bool:
    """A function ``fn(w_fp8, scale_inv, block)`` that dequantises blocks of any size, returning float32."""
    if fn is Ellipsis:
        return check_equal(fn, None, "repeat each scale over its block of rows and columns (cut the edge "
                           "blocks to the matrix), then multiply with the weight in float32.")
    gen = torch.Generator().manual_seed(9)
    for shape, block in (((100, 70), (64, 32)), ((256, 128), (128, 128)), ((33, 5), (8, 4))):
        w = torch.randn(shape, generator=gen)
        q, s = quantize_fp8(w, block)
        expected = dequantize_fp8(q, s, block, torch.float32)
        try:
            got = fn(q, s, block)
        except Exception as err:  # a student's function may fail in any way: say how
            return report(False, f"your function raised {type(err).__name__}: {err}")
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != shape:
            return report(False, f"expected a tensor of shape {shape} for block {block}.")
        if not torch.allclose(got.float(), expected, rtol=1e-6, atol=1e-7):
            return report(False, f"wrong values for shape {shape}, block {block}: repeat each scale over its "
                          "block of rows and columns, cut the edge blocks, multiply in float32.")
    return report(True, "")


def check_offload_gib(answer: float) -> bool:
    """Resident weights (GiB) of the bf16 release with experts offloaded and a cache of 960 experts."""
    cfg = Qwen3NextConfig.full()
    layout = hub_layout(cfg)
    non_expert = sum(math.prod(e.shape) for k, e in layout.items() if component_of(k) != "routed experts")
    expected = (2 * non_expert + 960 * _expert_bytes_bf16(cfg)) / 2**30
    return check_close(answer, expected, "non-expert parameters x 2 bytes, plus 960 experts of 3 x 2048 x 512 "
                       "numbers x 2 bytes; divide by 2**30.", rel=1e-3)
