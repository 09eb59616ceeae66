"""Parameter and cache-memory accounting, computed from a config alone.

Every number here follows from the shapes of the checkpoint (the book's reference page, "Checkpoint
layout"): no model is built. Chapter 01 checks these counts against the reference model
(``transformers.Qwen3NextForCausalLM``) built on the meta device, and the tests check them against the
released figures (79,674,391,296 parameters; 3,252,599,552 active per token outside the embedding and
the head; the book's reference page, "Parameter counts").

"Active" parameters are those a token actually multiplies with: in every MoE block only the router, the
shared expert, its gate and the ``num_experts_per_tok`` chosen experts. Three conventions are in use:
without embedding and head (the usual "A3B" figure), with the head, and with the embedding table too.

Leaves out: the MTP module of the checkpoint (it is not part of the transformers model).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Qwen3NextConfig


def mlp_params(hidden: int, intermediate: int) -> int:
    """A SwiGLU MLP: gate_proj and up_proj (hidden -> intermediate), down_proj back."""
    return 3 * hidden * intermediate


def deltanet_mixer_params(cfg: Qwen3NextConfig) -> int:
    """in_proj_qkvz, in_proj_ba, the depthwise conv, A_log, dt_bias, the gated norm and out_proj."""
    h = cfg.hidden_size
    qkvz = h * (2 * cfg.linear_key_dim + 2 * cfg.linear_value_dim)
    ba = h * 2 * cfg.linear_num_value_heads
    conv = cfg.linear_conv_dim * cfg.linear_conv_kernel_dim
    per_head = 2 * cfg.linear_num_value_heads  # A_log and dt_bias
    norm = cfg.linear_value_head_dim
    out = cfg.linear_value_dim * h
    return qkvz + ba + conv + per_head + norm + out


def attention_mixer_params(cfg: Qwen3NextConfig) -> int:
    """q_proj (query and gate, hence 2x), k_proj, v_proj, o_proj, q_norm and k_norm."""
    h, d = cfg.hidden_size, cfg.head_dim
    q = h * 2 * cfg.num_attention_heads * d
    kv = 2 * h * cfg.num_key_value_heads * d
    o = cfg.num_attention_heads * d * h
    return q + kv + o + 2 * d


@dataclass(frozen=True)
class MoeParams:
    routed: int  # all experts
    router: int
    shared: int
    shared_gate: int
    active_routed: int  # the experts one token uses

    @property
    def total(self) -> int:
        return self.routed + self.router + self.shared + self.shared_gate

    @property
    def active(self) -> int:
        return self.active_routed + self.router + self.shared + self.shared_gate


def moe_params(cfg: Qwen3NextConfig) -> MoeParams:
    h = cfg.hidden_size
    expert = mlp_params(h, cfg.moe_intermediate_size)
    return MoeParams(
        routed=cfg.num_experts * expert,
        router=h * cfg.num_experts,
        shared=mlp_params(h, cfg.shared_expert_intermediate_size),
        shared_gate=h,
        active_routed=cfg.num_experts_per_tok * expert,
    )


@dataclass(frozen=True)
class ParameterCounts:
    """Totals by component; every field is a count of parameters."""

    embedding: int
    lm_head: int
    deltanet_mixers: int
    attention_mixers: int
    routed_experts: int
    routers: int
    shared_experts: int  # shared experts with their sigmoid gates
    dense_mlps: int
    norms: int
    active_non_embedding: int

    @property
    def total(self) -> int:
        return self.non_embedding + self.embedding + self.lm_head

    @property
    def non_embedding(self) -> int:
        return (self.deltanet_mixers + self.attention_mixers + self.routed_experts + self.routers
                + self.shared_experts + self.dense_mlps + self.norms)

    @property
    def active_with_lm_head(self) -> int:
        return self.active_non_embedding + self.lm_head

    @property
    def active_with_embedding(self) -> int:
        """Also counting the whole embedding table, as the published 3.87B figure does.

        A token reads only one row of it (``hidden_size`` numbers), so this convention overstates the
        compute; it is the one that matches "active parameters including embeddings" in the literature.
        """
        return self.active_with_lm_head + self.embedding

    def by_component(self) -> dict[str, int]:
        return {
            "embedding": self.embedding,
            "lm_head": self.lm_head,
            "Gated DeltaNet mixers": self.deltanet_mixers,
            "gated attention mixers": self.attention_mixers,
            "routed experts": self.routed_experts,
            "routers": self.routers,
            "shared experts": self.shared_experts,
            "dense MLPs": self.dense_mlps,
            "norms": self.norms,
        }


def parameter_counts(cfg: Qwen3NextConfig) -> ParameterCounts:
    """Count every parameter of ``Qwen3NextForCausalLM(cfg)`` from the config."""
    h = cfg.hidden_size
    counts = dict(deltanet_mixers=0, attention_mixers=0, routed_experts=0, routers=0, shared_experts=0,
                  dense_mlps=0, norms=h)  # the final norm
    active = h  # final norm
    moe = moe_params(cfg)
    for i, kind in enumerate(cfg.layer_types):
        mixer = deltanet_mixer_params(cfg) if kind == "linear_attention" else attention_mixer_params(cfg)
        counts["deltanet_mixers" if kind == "linear_attention" else "attention_mixers"] += mixer
        counts["norms"] += 2 * h  # input_layernorm and post_attention_layernorm
        active += mixer + 2 * h
        if cfg.is_moe_layer(i):
            counts["routed_experts"] += moe.routed
            counts["routers"] += moe.router
            counts["shared_experts"] += moe.shared + moe.shared_gate
            active += moe.active
        else:
            dense = mlp_params(h, cfg.intermediate_size)
            counts["dense_mlps"] += dense
            active += dense
    return ParameterCounts(
        embedding=cfg.vocab_size * h,
        lm_head=0 if cfg.tie_word_embeddings else cfg.vocab_size * h,
        active_non_embedding=active,
        **counts,
    )


@dataclass(frozen=True)
class CacheBytes:
    """Memory of the hybrid cache for one batch at one context length, in bytes."""

    attention_kv: int  # grows with the context
    deltanet_conv: int  # constant
    deltanet_recurrent: int  # constant

    @property
    def deltanet(self) -> int:
        return self.deltanet_conv + self.deltanet_recurrent

    @property
    def total(self) -> int:
        return self.attention_kv + self.deltanet


def cache_bytes(cfg: Qwen3NextConfig, context_length: int, batch_size: int = 1,
                activation_bytes: int = 2, state_bytes: int = 4) -> CacheBytes:
    """The hybrid cache's size: K and V per attention layer; conv and recurrent state per DeltaNet layer.

    K, V and the conv window are kept in the activation dtype (bf16: 2 bytes); the recurrent state
    is kept in float32 whatever the activations are, because it accumulates over the whole sequence.
    """
    n_attn = cfg.layer_types.count("full_attention")
    n_lin = cfg.layer_types.count("linear_attention")
    kv = n_attn * 2 * cfg.num_key_value_heads * cfg.head_dim * context_length * activation_bytes
    conv = n_lin * cfg.linear_conv_dim * cfg.linear_conv_kernel_dim * activation_bytes
    rec = n_lin * cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim * state_bytes
    return CacheBytes(batch_size * kv, batch_size * conv, batch_size * rec)


def all_attention_cache_bytes(cfg: Qwen3NextConfig, context_length: int, batch_size: int = 1,
                              activation_bytes: int = 2) -> int:
    """The KV cache if every layer were a gated-attention layer (the comparison the hybrid wins)."""
    per_layer = 2 * cfg.num_key_value_heads * cfg.head_dim * context_length * activation_bytes
    return batch_size * cfg.num_hidden_layers * per_layer
