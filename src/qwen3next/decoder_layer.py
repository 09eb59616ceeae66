"""One decoder layer of Qwen3-Next: a token mixer (Gated DeltaNet or gated attention), then a channel
mixer (the sparse MoE), each pre-normed and added to the residual stream.

Mirrors ``Qwen3NextDecoderLayer`` of ``transformers``. Its own module because two stacks use it: the
48-layer trunk (:mod:`qwen3next.model`) and the multi-token-prediction head (:mod:`qwen3next.mtp`), whose
one layer is of the full-attention kind.
"""

from __future__ import annotations

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
