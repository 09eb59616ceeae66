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


def _gate_cases():
    """Layers of the tiny config with their own A_log and dt_bias, and inputs b, a (B, T, Hv): random ones
    in float32, a layer and inputs in bfloat16, and large a (where log(1 + exp(x)) overflows in float32)."""
    cfg = Qwen3NextConfig.tiny()
    gen = torch.Generator().manual_seed(63)
    for dtype, scale in ((torch.float32, 3.0), (torch.bfloat16, 3.0), (torch.float32, 100.0)):
        layer = GatedDeltaNet(cfg, 0)
        with torch.no_grad():
            layer.A_log.copy_(torch.empty(cfg.linear_num_value_heads).uniform_(0.01, 16, generator=gen).log())
            layer.dt_bias.copy_(torch.randn(cfg.linear_num_value_heads, generator=gen))
        layer = layer.to(dtype)
        b = torch.randn(2, 5, cfg.linear_num_value_heads, generator=gen).to(dtype)
        a = (scale * torch.randn(2, 5, cfg.linear_num_value_heads, generator=gen)).to(dtype)
        yield layer, b, a


def check_gates(fn) -> bool:
    """``fn(b, a, A_log, dt_bias)`` -> ``(beta, g)``, the write strength and the log decay per value head."""
    hint = ("beta = sigmoid(b); g = -exp(A_log) * softplus(a + dt_bias), computed in float32 (cast a, A_log "
            "and dt_bias first), with F.softplus: log(1 + exp(x)) overflows for large x.")
    if fn is Ellipsis:
        return report(False, f"{UNANSWERED} {hint}")
    for layer, b, a in _gate_cases():
        with torch.no_grad():
            expected = layer.gates(b, a)
            try:
                answer = fn(b.clone(), a.clone(), layer.A_log.detach().clone(), layer.dt_bias.detach().clone())
            except Exception as err:  # a reader's function may fail in any way: report it as a hint
                return report(False, f"your function raised {type(err).__name__}: {err}. {hint}")
        if not (isinstance(answer, tuple) and len(answer) == 2
                and all(isinstance(t, torch.Tensor) and t.shape == b.shape for t in answer)):
            return report(False, f"return (beta, g), two tensors of the shape of b {tuple(b.shape)}. {hint}")
        for name, ours, theirs in zip(("beta", "g"), answer, expected, strict=True):
            # beta may stay in b's dtype (the package's does) or be computed in float32: allow its rounding
            rel = 1e-2 if name == "beta" and b.dtype != torch.float32 else 1e-5
            tol = rel * (1 + theirs.float().abs().max().item())
            if not (ours.float() - theirs.float()).abs().max() <= tol:
                return report(False, f"{name} is off for {b.dtype} inputs of scale up to "
                              f"{a.float().abs().max().item():.0f}. {hint}")
    return report(True, hint)


# Exercise 6.6: what the book's trained model keeps of a write, over the chapter's 8 held-out stories
KEPT_SPAN = 100


def _kept_after(g: torch.Tensor, span: int = KEPT_SPAN) -> torch.Tensor:
    """``(H,)``: per head, the median over writes t of ``exp(g[t+1] + ... + g[t+span])`` (``g``: ``(T, H)``)."""
    c = torch.cat([g.new_zeros(1, g.shape[1]), g.double().cumsum(0)])  # c[t] = g[0] + ... + g[t-1]
    return (c[span + 1:] - c[1:-span]).exp().median(0).values


def check_longest_keeper(answer) -> bool:
    """``(layer, head)`` of the trained model's DeltaNet head that keeps the most of a write ``KEPT_SPAN`` tokens
    later (median over the writes) on ``generate_stories(8, seed=10_000)``."""
    from ..lens import deltanet_gates, story_ids
    from .trained import held_out_stories, trained_model_and_tokenizer

    hint = (f"per head, exp(g[t+1] + ... + g[t+{KEPT_SPAN}]) for every token t with t + {KEPT_SPAN} inside the "
            "text (a cumulative sum of g gives each window's sum as a difference), the median over t, then the "
            "largest over all (layer, head); answer with the model's layer index, e.g. (4, 0).")
    if answer is Ellipsis:
        return report(False, f"{UNANSWERED} {hint}")
    model, tokenizer = trained_model_and_tokenizer()
    gates = deltanet_gates(model, story_ids(tokenizer, held_out_stories(8)))
    kept = {(layer, head): value.item() for layer, (_, g) in gates.items()
            for head, value in enumerate(_kept_after(g[0]))}
    try:
        answer = tuple(int(v) for v in answer) if not isinstance(answer, str) else None
    except (TypeError, ValueError):
        answer = None
    if answer is None:
        return report(False, f"answer with a pair of ints (layer, head). {hint}")
    if answer not in kept:
        return report(False, f"{answer} is not a DeltaNet head: the layers are {sorted(gates)}, the heads "
                      f"0 to {model.config.linear_num_value_heads - 1}. {hint}")
    return check_equal(answer, max(kept, key=kept.get), hint)
