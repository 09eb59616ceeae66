"""The multi-token-prediction (MTP) head of Qwen3-Next: one more layer that guesses the token after next.

The released checkpoint carries, besides the 48-layer trunk, a small module under ``mtp.*`` that the
serving engines use for speculative decoding (vLLM's ``qwen3_next_mtp.py`` and SGLang wire it the same
way; ``transformers`` has no implementation and skips the keys). For the trunk's hidden state ``h_t``
at position ``t`` (after its final norm, the vector ``lm_head`` reads) and the next token ``x_{t+1}``::

    e = pre_fc_norm_embedding(embed_tokens(x_{t+1}))        # the trunk's own embedding table
    h = pre_fc_norm_hidden(h_t)
    y = fc(cat([e, h], -1))                                  # 2H -> H, no bias; the embedding comes first
    y = layers[0](y)                                         # one gated-attention + sparse-MoE decoder layer
    logits_{t+2} = lm_head(norm(y))                          # the trunk's own lm_head

All three norms are zero-centred RMSNorms (gain ``1 + w``). The layer attends over the earlier MTP
positions, so it keeps a KV cache of its own. The pair ``(x_{t+1}, h_t)`` sits at position ``t``: the
tokens are shifted by one, the positions are not. To draft ``k > 1`` tokens the engines feed the head its
own post-norm output back as the next ``h``. DeepSeek-V3 (DeepSeek-AI, 2024, section 2.2) trains such a
module with an extra cross-entropy on ``x_{t+2}``; :mod:`qwen3next.train` does that for the book's model.

What is here: :class:`MultiTokenPredictor` (the ``mtp.*`` parameters, with the Hub key names) and
:func:`mtp_forward`, which runs it for one or several positions on top of a model, with or without a
cache (an :class:`~qwen3next.attention.KVCache`; ``cache.crop(n)`` rolls rejected drafts back), and
returns its logits and post-norm hidden state. :func:`attach_mtp` loads the head from a checkpoint
(``Qwen3NextForCausalLM.from_pretrained(path, mtp=True)`` calls it), FP8 releases included.

Leaves out: the engines' batching of drafts across requests and their fused kernels; speculative decoding
itself (accepting or rejecting drafts) is :mod:`qwen3next.speculative`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import KVCache
from .config import Qwen3NextConfig
from .decoder_layer import DecoderLayer
from .hub_layout import mtp_layout
from .linear import Linear
from .norms import RMSNorm
from .safetensors_file import CheckpointError

PREFIX = "mtp."


def mtp_layer_config(config: Qwen3NextConfig) -> Qwen3NextConfig:
    """The config of the head's single decoder layer: full attention with a sparse MoE, like vLLM's."""
    if config.num_experts < 1:
        raise ValueError("num_experts: the MTP layer of Qwen3-Next has a sparse MoE block, found 0 experts")
    return config.replace(num_hidden_layers=1, layer_types=["full_attention"], mlp_only_layers=[],
                          decoder_sparse_step=1)


class MultiTokenPredictor(nn.Module):
    """``mtp.*``: two input norms, the 2H -> H fusion, one decoder layer and a final norm.

    ``forward(embeds, hidden, cos, sin)`` takes the embeddings of the *next* tokens and the trunk's
    post-norm hidden states (both ``(B, T, H)``) and returns the head's post-norm hidden state ``(B, T, H)``
    and its router logits ``(B*T, E)``. It owns no embedding and no ``lm_head``; :func:`mtp_forward`
    borrows the model's.
    """

    def __init__(self, config: Qwen3NextConfig):
        super().__init__()
        H, eps = config.hidden_size, config.rms_norm_eps
        self.pre_fc_norm_embedding = RMSNorm(H, eps=eps)
        self.pre_fc_norm_hidden = RMSNorm(H, eps=eps)
        self.fc = Linear(2 * H, H, bias=False)  # (H, 2H): [embedding | hidden] -> H
        self.layers = nn.ModuleList([DecoderLayer(mtp_layer_config(config), 0)])
        self.norm = RMSNorm(H, eps=eps)

    def forward(
        self,
        embeds: torch.Tensor,  # (B, T, H) embeddings of x_{t+1}
        hidden: torch.Tensor,  # (B, T, H) the trunk's h_t after its final norm
        cos: torch.Tensor,  # (B, T, rotary_dim) for the positions t
        sin: torch.Tensor,
        attention_mask: torch.Tensor | None = None,  # (B, past + T), or None
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if embeds.shape != hidden.shape:
            raise ValueError(f"embeds, hidden: expected one (B, T, H) shape, found "
                             f"{tuple(embeds.shape)} and {tuple(hidden.shape)}")
        e = self.pre_fc_norm_embedding(embeds)  # (B, T, H)
        h = self.pre_fc_norm_hidden(hidden)  # (B, T, H)
        x = self.fc(torch.cat([e, h], dim=-1))  # (B, T, 2H) -> (B, T, H): e first
        layer = self.layers[0]
        x, router_logits = layer(x, cos, sin, attention_mask, cache)
        return self.norm(x), router_logits


@dataclass
class MTPOutput:
    """What :func:`mtp_forward` returns."""

    logits: torch.Tensor  # (B, T, V): row t predicts x_{t+2}
    hidden: torch.Tensor  # (B, T, H): the head's post-norm state, fed back as the next h when drafting
    router_logits: torch.Tensor | None = None  # (B*T, E) of the head's MoE layer


def new_mtp_cache() -> KVCache:
    """An empty cache for the head's attention layer; ``crop(n)`` keeps its first ``n`` positions."""
    return KVCache()


def mtp_forward(
    model: nn.Module,
    next_ids: torch.Tensor,
    hidden: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    cache: KVCache | None = None,
    attention_mask: torch.Tensor | None = None,
) -> MTPOutput:
    """Run ``model.mtp`` on the pairs ``(next_ids[:, i], hidden[:, i])``: one or several positions.

    ``next_ids (B, T)``: the tokens ``x_{t+1}``; ``hidden (B, T, H)``: the trunk's post-norm ``h_t`` for the
    same rows (or, when drafting further, the head's own ``MTPOutput.hidden``). Positions default to
    ``cache.length + 0 .. T-1`` (0 .. T-1 without a cache), i.e. the positions ``t`` of the trunk's tokens.
    ``cache`` is appended to; ``attention_mask`` is the padding mask over cached and new positions.
    """
    head = getattr(model, "mtp", None)
    if not isinstance(head, MultiTokenPredictor):
        raise ValueError("model: has no MTP head; build it with Qwen3NextForCausalLM(config, mtp=True) or "
                         "load it with Qwen3NextForCausalLM.from_pretrained(path, mtp=True)")
    if next_ids.dim() != 2 or hidden.shape[:2] != next_ids.shape:
        raise ValueError(f"next_ids, hidden: expected (B, T) and (B, T, H) for the same B, T, found "
                         f"{tuple(next_ids.shape)} and {tuple(hidden.shape)}")
    B, T = next_ids.shape
    if position_ids is None:
        past = 0 if cache is None else cache.length
        position_ids = torch.arange(past, past + T, device=next_ids.device).expand(B, T)
    cos, sin = model.model.rotary_emb(position_ids)  # (B, T, rotary_dim) each
    embeds = model.model.embed_tokens(next_ids)  # (B, T, H)
    out, router_logits = head(embeds, hidden.to(embeds.dtype), cos, sin, attention_mask=attention_mask, cache=cache)
    return MTPOutput(model.lm_head(out), out, router_logits)


# ------------------------------------------------------------------------------------- loading
def attach_mtp(model: nn.Module, ckpt, dtype: torch.dtype | str | None = None, device="cpu") -> nn.Module:
    """Read the ``mtp.*`` tensors of an opened checkpoint, check them against the Hub layout and put the
    head on ``model`` as ``model.mtp`` (in ``dtype``, default the checkpoint's; FP8 blocks dequantised)."""
    from .weights import load_mtp

    expected = mtp_layout(ckpt.config)
    if not ckpt.mtp_names():
        raise CheckpointError(f"{ckpt.directory}: mtp=True, but the checkpoint has no mtp.* tensors "
                              f"(expected {len(expected)}, e.g. mtp.fc.weight)")
    tensors = load_mtp(ckpt.directory, dtype)
    problems = [f"missing tensor {k!r} {e.describe()}" for k, e in expected.items() if k not in tensors]
    problems += [f"unexpected tensor {k!r}" for k in tensors if k not in expected]
    problems += [f"{k!r}: expected shape {e.describe()}, found {list(tensors[k].shape)}"
                 for k, e in expected.items() if k in tensors and tuple(tensors[k].shape) != e.shape]
    if problems:
        raise CheckpointError(f"{ckpt.directory}: the mtp.* tensors do not match config.json "
                              f"({len(problems)} problems): " + "; ".join(problems[:6]))
    with torch.device("meta"):
        head = MultiTokenPredictor(ckpt.config)
    head.load_state_dict({k[len(PREFIX):]: v.to(device) for k, v in tensors.items()}, strict=True, assign=True)
    model.mtp = head.eval()
    return model
