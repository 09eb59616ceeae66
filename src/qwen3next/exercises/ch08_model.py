"""Checks for the exercises of chapter 08, "The model, the cache and generation"."""

from __future__ import annotations

import torch

from ..accounting import cache_bytes
from ..config import Qwen3NextConfig
from ..generate import filter_logits
from . import check_equal, report

# Exercise 8.4: a tiny model with one deliberately broken layer, and its intact twin.
BROKEN_SEED = 8


def check_cache_bytes_at_256k(answer: int) -> bool:
    """Bytes of the full model's hybrid cache for one 262,144-token sequence (bf16 K/V and conv, fp32 state)."""
    expected = cache_bytes(Qwen3NextConfig.full(), 262_144, batch_size=1, activation_bytes=2, state_bytes=4).total
    return check_equal(answer, expected, "12 attention layers keep K and V (2 x Hkv x head_dim numbers per "
                       "token each, 2 bytes); 36 DeltaNet layers keep a (conv_dim, K) window in 2 bytes and a "
                       "(Hv, Dk, Dv) state in 4 bytes, whatever the length.")


def check_deltanet_layer_params(answer: int) -> bool:
    """Parameters of one full-size decoder layer of the DeltaNet kind (mixer + MoE + two norms)."""
    from ..decoder_layer import DecoderLayer

    with torch.device("meta"):
        layer = DecoderLayer(Qwen3NextConfig.full(), 0)
    expected = sum(p.numel() for p in layer.parameters())
    return check_equal(answer, expected, "build DecoderLayer(Qwen3NextConfig.full(), 0) under "
                       "torch.device('meta') and add up p.numel() over its parameters.")


def check_top_p(fn) -> bool:
    """``fn(logits (B, V), p) -> logits`` with the tokens outside the top-p set at ``-inf``."""
    gen = torch.Generator().manual_seed(8)
    logits = 2.5 * torch.randn(5, 200, generator=gen)
    for p in (0.3, 0.8, 0.95):
        try:
            got = fn(logits.clone(), p)
        except Exception as err:  # a student's function may fail in any way; say how
            return report(False, f"your function raised {type(err).__name__}: {err}")
        if not isinstance(got, torch.Tensor) or got.shape != logits.shape:
            return report(False, "return a tensor shaped like the logits, with -inf where a token is removed.")
        want = torch.isfinite(filter_logits(logits, top_p=p))
        if not torch.equal(torch.isfinite(got), want):
            return report(False, f"with p = {p} you keep a different set of tokens: sort by probability, keep "
                          "each token whose more likely predecessors hold less than p in total.")
    return report(True, "")


def broken_pair():
    """A tiny model and the reference with the same weights, except that one layer of ours was changed."""
    import transformers

    from ..model import Qwen3NextForCausalLM
    from ..reference import moe_state_dict_to_reference, reference_config

    cfg = Qwen3NextConfig.tiny()
    torch.manual_seed(BROKEN_SEED)
    ours = Qwen3NextForCausalLM(cfg).eval()
    ref = transformers.Qwen3NextForCausalLM(reference_config(cfg)).eval()
    ref.load_state_dict(moe_state_dict_to_reference(ours.state_dict()))
    with torch.no_grad():  # a small slip, the kind a refactoring makes: one gain off by 5%
        ours.model.layers[_broken_layer()].post_attention_layernorm.weight.add_(0.05)
    return ours, ref


def _broken_layer() -> int:
    gen = torch.Generator().manual_seed(BROKEN_SEED)
    return int(torch.randint(1, Qwen3NextConfig.tiny().num_hidden_layers, (1,), generator=gen))


def check_broken_layer(answer: int) -> bool:
    """The index of the layer that :func:`broken_pair` changed."""
    return check_equal(answer, _broken_layer(), "run layer_differences(ours, ref, ids): the residual "
                       "stream agrees to ~1e-7 up to some layer, and the first layer whose difference jumps "
                       "by orders of magnitude is the broken one.")
