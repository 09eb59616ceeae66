"""One decoder layer of Qwen3-Next: a token mixer (Gated DeltaNet or gated attention), then a channel
mixer (the sparse MoE), each pre-normed and added to the residual stream.

Mirrors ``Qwen3NextDecoderLayer`` of ``transformers``. Its own module because two stacks use it: the
48-layer trunk (:mod:`qwen3next.model`) and the multi-token-prediction head (:mod:`qwen3next.mtp`), whose
one layer is of the full-attention kind.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .attention import GatedAttention
from .config import Qwen3NextConfig
from .deltanet import GatedDeltaNet
from .moe import MLP, SparseMoeBlock
from .norms import RMSNorm


class DecoderLayer(nn.Module):
    """Pre-norm residual block: a token mixer (DeltaNet or attention), then a channel mixer (MoE)."""

    def __init__(self, config: Qwen3NextConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.layer_type = config.layer_types[layer_idx]
        if self.layer_type == "linear_attention":
            self.linear_attn = GatedDeltaNet(config, layer_idx)
        else:
            self.self_attn = GatedAttention(config, layer_idx)
        if config.is_moe_layer(layer_idx):
            self.mlp = SparseMoeBlock(config)
        else:  # a layer listed in mlp_only_layers: a plain SwiGLU MLP
            self.mlp = MLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, H)
        cos: torch.Tensor | None,  # (B, T, rotary_dim), used by attention layers only
        sin: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,  # (B, past + T) padding mask, or None
        cache=None,  # this layer's KVCache / DeltaNetState, or None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.input_layernorm(x)
        if self.layer_type == "linear_attention":
            # a recurrent layer only needs to know which of the *new* tokens are padding
            new_mask = None if attention_mask is None else attention_mask[:, -x.shape[1]:]
            h = self.linear_attn(h, attention_mask=new_mask, cache=cache)
        else:
            h = self.self_attn(h, cos, sin, attention_mask=attention_mask, cache=cache)
        x = x + h
        h = self.mlp(self.post_attention_layernorm(x))
        router_logits = None
        if isinstance(h, tuple):  # the MoE block also returns its router logits (B*T, E)
            h, router_logits = h
        return x + h, router_logits

    def compile_decoding(self, enabled: bool = True) -> None:
        """Run this layer's one-token steps through ``torch.compile`` from now on (``False``: back to eager).

        Longer inputs, and steps with autograd on, stay eager. One compiled graph serves every layer of a
        kind (weights and states are its inputs); it is made on the first steps, which then take seconds,
        and again for each new batch size. An attention layer's graph takes the number of cached tokens as
        a symbol (after the first two steps), so the growing cache does not recompile it. It fuses the many
        small element-wise operations of a step (norms, gates, RoPE, the conv window, the state update, the
        router); the products stay the same BLAS calls. A token's routed experts are in the graph when they
        are gathered into one batched product (small experts, ``moe.GATHER_LIMIT``), whichever experts they
        are; otherwise they run eagerly. Same numbers to float32 rounding (``tests/test_fast_paths.py``).
        """
        if enabled:
            # an instance attribute shadows the method: nn.Module.__call__ then runs it, nothing else changes
            self.__dict__["forward"] = functools.partial(_compiled_if_one_token, self)
        else:
            self.__dict__.pop("forward", None)


def _compiled_if_one_token(layer: DecoderLayer, x: torch.Tensor, *args, **kwargs):
    """The compiled forward for a decoding step (one token, no autograd), the eager one for anything else."""
    step = x.shape[1] == 1 and not torch.is_grad_enabled()
    return (_compiled_forward(layer.layer_type) if step else DecoderLayer.forward)(layer, x, *args, **kwargs)


@functools.cache
def _compiled_forward(layer_type: str):
    """``DecoderLayer.forward`` compiled, made once per process. ``cpp_wrapper``: the compiled graph is called
    from C++ rather than from generated Python, which matters when a step is a few hundred microseconds."""
    return torch.compile(DecoderLayer.forward, dynamic=None if layer_type == "full_attention" else False,
                         options={"cpp_wrapper": True})
