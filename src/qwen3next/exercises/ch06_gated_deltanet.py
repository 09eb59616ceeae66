"""Checks for the exercises of chapter 06, "The Gated DeltaNet layer"."""

from __future__ import annotations

import torch

from ..config import Qwen3NextConfig
from ..deltanet import DeltaNetState, GatedDeltaNet
from . import UNANSWERED, check_close, check_equal, report


def check_deltanet_params(answer: int) -> bool:
    """Parameters of one Gated DeltaNet mixer of the released model."""
    with torch.device("meta"):
        layer = GatedDeltaNet(Qwen3NextConfig.full(), 0)
    expected = sum(p.numel() for p in layer.parameters())
    return check_equal(answer, expected, "add up in_proj_qkvz, in_proj_ba, the depthwise conv (one kernel per "
                       "channel of q, k and v), A_log, dt_bias, the norm weight (shared by all heads) and out_proj.")


def check_state_mib(answer: float) -> bool:
    """MiB of DeltaNet state per sequence over all DeltaNet layers (bf16 conv state, fp32 recurrent state)."""
    cfg = Qwen3NextConfig.full()
    with torch.device("meta"):
        layer = GatedDeltaNet(cfg, 0)
        state = DeltaNetState(
            torch.empty(1, layer.conv_dim, layer.conv_kernel_size, dtype=torch.bfloat16),
            torch.empty(1, layer.num_v_heads, layer.head_k_dim, layer.head_v_dim, dtype=torch.float32),
        )
    expected = state.nbytes() * cfg.layer_types.count("linear_attention") / 2**20
    return check_close(answer, expected, "per layer: conv_dim x K values of 2 bytes plus Hv x Dk x Dv values of "
                       "4 bytes; count the DeltaNet layers in cfg.layer_types; 1 MiB = 2**20 bytes.", rel=1e-4)


def check_deinterleave(fn) -> bool:
    """``fn(weight, config)`` reorders ``in_proj_qkvz.weight`` rows into [q heads | k heads | v heads | z heads]."""
    cfg = Qwen3NextConfig.tiny()
    torch.manual_seed(6)
    layer = GatedDeltaNet(cfg, 0)
    x = torch.randn(1, 3, cfg.hidden_size)
    hint = ("view the rows as (Hk, 2Dk + 2rDv), split each group into q, k, v, z, then concatenate all the q "
            "pieces, all the k pieces, and so on (the value heads of a key head stay in order).")
    if fn is Ellipsis:
        return report(False, f"{UNANSWERED} {hint}")
    with torch.no_grad():
        q, k, v, z, _, _ = layer.split_projections(layer.in_proj_qkvz(x), layer.in_proj_ba(x))
        expected = torch.cat([t.reshape(1, 3, -1) for t in (q, k, v, z)], -1)
        try:
            W = fn(layer.in_proj_qkvz.weight.detach().clone(), cfg)
        except Exception as err:
            return report(False, f"your function raised {type(err).__name__}: {err}. {hint}")
        if not isinstance(W, torch.Tensor) or W.shape != layer.in_proj_qkvz.weight.shape:
            return report(False, f"return a tensor of shape {tuple(layer.in_proj_qkvz.weight.shape)}. {hint}")
        return report(bool((x @ W.T - expected).abs().max() <= 1e-5), hint)
