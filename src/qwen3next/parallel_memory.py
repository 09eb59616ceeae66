"""Memory per rank when the model is split over ``tp`` ranks (heads, vocabulary) and ``ep`` ranks (experts).

Computed from the config with the split of :mod:`qwen3next.parallel`: query heads, DeltaNet heads,
the vocabulary and the shared expert are divided by ``tp``; KV heads by ``tp`` up to the number of
KV heads (2 in the release) and replicated beyond; routed experts by ``ep``; the router and every
norm are replicated. For the released model the routed experts are 97% of the weights, so expert
parallelism decides whether it fits; the KV cache per token stops shrinking past TP = 2.

Leaves out activations, the CUDA context and allocator slack (engines reserve a fraction of memory
for them, e.g. vLLM's ``gpu_memory_utilization``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RankMemory:
    """What one rank holds: weights, and the cache it keeps per token / per sequence."""

    tp: int
    ep: int
    parameters: dict[str, int]  # per component, on this rank
    weight_bytes: int
    kv_bytes_per_token: int  # every attention layer, this rank's KV heads
    state_bytes_per_sequence: int  # every DeltaNet layer, this rank's heads

    @property
    def total_parameters(self) -> int:
        return sum(self.parameters.values())

    def cache_bytes(self, context: int, sequences: int = 1) -> int:
        return sequences * (context * self.kv_bytes_per_token + self.state_bytes_per_sequence)


def kv_heads_per_rank(config, tp: int) -> int:
    """``Hkv / tp``, but never below one head: past ``tp = Hkv`` the KV heads are replicated."""
    return max(1, config.num_key_value_heads // tp)


def parameters_per_rank(config, tp: int, ep: int) -> dict[str, int]:
    """Parameters one rank holds, by component (every rank holds the same amount)."""
    hidden, D, H = config.hidden_size, config.head_dim, config.num_attention_heads
    Hk, Hv = config.linear_num_key_heads, config.linear_num_value_heads
    Dk, Dv, K = config.linear_key_head_dim, config.linear_value_head_dim, config.linear_conv_kernel_dim
    n_attn = config.layer_types.count("full_attention")
    n_lin = config.layer_types.count("linear_attention")
    kv = kv_heads_per_rank(config, tp)
    attention = (H // tp) * 2 * D * hidden + 2 * kv * D * hidden + hidden * (H // tp) * D + 2 * D
    conv_dim = (2 * Hk * Dk + Hv * Dv) // tp
    deltanet = ((Hk // tp) * (2 * Dk + 2 * (Hv // Hk) * Dv) * hidden + (Hv // tp) * 2 * hidden + conv_dim * K
                + 2 * (Hv // tp) + Dv + hidden * (Hv // tp) * Dv)
    n_moe = sum(config.is_moe_layer(i) for i in range(config.num_hidden_layers))
    experts = config.num_experts // ep * 3 * hidden * config.moe_intermediate_size
    shared = 3 * hidden * config.shared_expert_intermediate_size // tp + hidden  # + its 1-wide gate
    vocab = config.vocab_size // tp * hidden
    return {
        "attention": n_attn * attention,
        "deltanet": n_lin * deltanet,
        "routed experts": n_moe * experts,
        "router": n_moe * config.num_experts * hidden,
        "shared expert": n_moe * shared,
        "norms": config.num_hidden_layers * 2 * hidden + hidden,
        "embedding": vocab,
        "lm_head": 0 if config.tie_word_embeddings else vocab,
    }


def memory_per_rank(config, tp: int = 1, ep: int | None = None, weight_bytes: int = 2, kv_bytes: int = 2,
                    conv_bytes: int = 2, state_bytes: int = 4) -> RankMemory:
    """Weights (bf16 by default) and cache sizes on one rank; ``ep`` defaults to ``tp``."""
    ep = tp if ep is None else ep
    params = parameters_per_rank(config, tp, ep)
    n_attn = config.layer_types.count("full_attention")
    n_lin = config.layer_types.count("linear_attention")
    kv = n_attn * 2 * kv_heads_per_rank(config, tp) * config.head_dim * kv_bytes
    conv = config.linear_conv_dim // tp * config.linear_conv_kernel_dim * conv_bytes
    recurrent = config.linear_num_value_heads // tp * config.linear_key_head_dim * config.linear_value_head_dim
    state = n_lin * (conv + recurrent * state_bytes)
    return RankMemory(tp, ep, params, sum(params.values()) * weight_bytes, kv, state)


def layer_split(config, rank: int, world: int) -> str:
    """In words: which share of each kind of head, of the experts and of the vocabulary a rank holds."""
    kv = kv_heads_per_rank(config, world)
    return (f"{config.num_attention_heads // world} of {config.num_attention_heads} query heads, "
            f"{kv} of {config.num_key_value_heads} KV heads, "
            f"{config.linear_num_key_heads // world} of {config.linear_num_key_heads} DeltaNet key heads, "
            f"{config.num_experts // world} of {config.num_experts} experts, "
            f"{config.vocab_size // world} of {config.vocab_size} vocabulary rows")
