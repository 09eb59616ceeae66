"""The Hub key layout of Qwen3-Next: every tensor name of a checkpoint, its shape, and the config behind it.

What it implements
    * :func:`hub_layout` and :func:`mtp_layout`: for a config, every key of the released checkpoint (the
      book's reference page, section ``ref-layout``) with its expected shape, each dimension named by the
      config field (or product of fields) it comes from, so that a mismatch can say which field disagrees.
    * :func:`component_of`: the part of the model a key belongs to (embedding, experts, norms, ...).
    * :func:`module_counts`: how many decoder layers and routed experts a list of key names holds,
      counted from the names alone (a check that needs no layout, so it is cheap whatever the config says).

Mirrors the parameter names of ``transformers``' ``Qwen3NextForCausalLM`` before its loader fuses the
experts (the per-expert layout of the Hub files). Leaves out reading anything (:mod:`qwen3next.checkpoint`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .config import Qwen3NextConfig

SCALE_SUFFIX = "_scale_inv"  # "<module>.weight" -> "<module>.weight_scale_inv"


@dataclass(frozen=True)
class Expected:
    """The shape a checkpoint tensor must have, and the config field (or formula) behind each dim."""

    shape: tuple[int, ...]
    dims: tuple[str, ...]

    def describe(self) -> str:
        parts = [d if d.isdigit() else f"{d}={s}" for d, s in zip(self.dims, self.shape, strict=True)]
        return "[" + ", ".join(parts) + "]"


_DIM_FIELDS = (
    "vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
    "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
    "linear_conv_kernel_dim", "num_experts", "moe_intermediate_size", "shared_expert_intermediate_size",
    "intermediate_size",
)


def _dim_values(cfg: Qwen3NextConfig) -> dict[str, int]:
    """Every dimension name used in the layout: config fields, and the few products of them."""
    v = {name: getattr(cfg, name) for name in _DIM_FIELDS}
    v.update({
        "1": 1,
        "2*hidden_size": 2 * cfg.hidden_size,
        "2*num_attention_heads*head_dim": 2 * cfg.num_attention_heads * cfg.head_dim,
        "num_attention_heads*head_dim": cfg.num_attention_heads * cfg.head_dim,
        "num_key_value_heads*head_dim": cfg.num_key_value_heads * cfg.head_dim,
        "2*linear_key_dim+2*linear_value_dim": 2 * cfg.linear_key_dim + 2 * cfg.linear_value_dim,
        "2*linear_num_value_heads": 2 * cfg.linear_num_value_heads,
        "linear_conv_dim": cfg.linear_conv_dim,
        "linear_value_dim": cfg.linear_value_dim,
    })
    return v


def _E(v: dict[str, int], *dims: str) -> Expected:
    """An Expected shape from dimension names, ``v`` being ``_dim_values(cfg)``."""
    return Expected(tuple(v[d] for d in dims), dims)


def _attention_layout(v: dict[str, int], p: str) -> dict[str, Expected]:
    return {
        f"{p}.q_proj.weight": _E(v, "2*num_attention_heads*head_dim", "hidden_size"),  # query + gate
        f"{p}.k_proj.weight": _E(v, "num_key_value_heads*head_dim", "hidden_size"),
        f"{p}.v_proj.weight": _E(v, "num_key_value_heads*head_dim", "hidden_size"),
        f"{p}.o_proj.weight": _E(v, "hidden_size", "num_attention_heads*head_dim"),
        f"{p}.q_norm.weight": _E(v, "head_dim"),
        f"{p}.k_norm.weight": _E(v, "head_dim"),
    }


def _deltanet_layout(v: dict[str, int], p: str) -> dict[str, Expected]:
    return {
        f"{p}.in_proj_qkvz.weight": _E(v, "2*linear_key_dim+2*linear_value_dim", "hidden_size"),
        f"{p}.in_proj_ba.weight": _E(v, "2*linear_num_value_heads", "hidden_size"),
        f"{p}.conv1d.weight": _E(v, "linear_conv_dim", "1", "linear_conv_kernel_dim"),
        f"{p}.dt_bias": _E(v, "linear_num_value_heads"),
        f"{p}.A_log": _E(v, "linear_num_value_heads"),
        f"{p}.norm.weight": _E(v, "linear_value_head_dim"),
        f"{p}.out_proj.weight": _E(v, "hidden_size", "linear_value_dim"),
    }


def _mlp_layout(v: dict[str, int], p: str, width: str) -> dict[str, Expected]:
    return {
        f"{p}.gate_proj.weight": _E(v, width, "hidden_size"),
        f"{p}.up_proj.weight": _E(v, width, "hidden_size"),
        f"{p}.down_proj.weight": _E(v, "hidden_size", width),
    }


def _moe_layout(v: dict[str, int], p: str, num_experts: int) -> dict[str, Expected]:
    out = {f"{p}.gate.weight": _E(v, "num_experts", "hidden_size")}
    for e in range(num_experts):
        out.update(_mlp_layout(v, f"{p}.experts.{e}", "moe_intermediate_size"))
    out.update(_mlp_layout(v, f"{p}.shared_expert", "shared_expert_intermediate_size"))
    out[f"{p}.shared_expert_gate.weight"] = _E(v, "1", "hidden_size")
    return out


def _layer_layout(v: dict[str, int], p: str, kind: str, moe: bool) -> dict[str, Expected]:
    out = {f"{p}.input_layernorm.weight": _E(v, "hidden_size"),
           f"{p}.post_attention_layernorm.weight": _E(v, "hidden_size")}
    if kind == "full_attention":
        out.update(_attention_layout(v, f"{p}.self_attn"))
    else:
        out.update(_deltanet_layout(v, f"{p}.linear_attn"))
    if moe:
        out.update(_moe_layout(v, f"{p}.mlp", v["num_experts"]))
    else:
        out.update(_mlp_layout(v, f"{p}.mlp", "intermediate_size"))
    return out


def hub_layout(cfg: Qwen3NextConfig) -> dict[str, Expected]:
    """Every tensor of the model in the Hub checkpoint (the book's reference page, ``ref-layout``), with its shape.

    This is the checkpoint's contract; ``weights.load_weights`` also checks that the model's own
    ``state_dict`` has exactly these keys and shapes.
    """
    v = _dim_values(cfg)
    out = {"model.embed_tokens.weight": _E(v, "vocab_size", "hidden_size")}
    for i, kind in enumerate(cfg.layer_types):
        out.update(_layer_layout(v, f"model.layers.{i}", kind, cfg.is_moe_layer(i)))
    out["model.norm.weight"] = _E(v, "hidden_size")
    out["lm_head.weight"] = _E(v, "vocab_size", "hidden_size")
    return out


def mtp_layout(cfg: Qwen3NextConfig) -> dict[str, Expected]:
    """The multi-token-prediction module of the release (reference page, ``ref-mtp``), as vLLM and SGLang name it.

    ``fc`` joins the normalised embedding of the next token with the normalised hidden state; then one
    gated-attention + MoE layer and a final norm; the head is the model's ``lm_head``.
    """
    v = _dim_values(cfg)
    out = {
        "mtp.fc.weight": _E(v, "hidden_size", "2*hidden_size"),
        "mtp.pre_fc_norm_embedding.weight": _E(v, "hidden_size"),
        "mtp.pre_fc_norm_hidden.weight": _E(v, "hidden_size"),
    }
    out.update(_layer_layout(v, "mtp.layers.0", "full_attention", True))
    out["mtp.norm.weight"] = _E(v, "hidden_size")
    return out


# --------------------------------------------------------------------------------- components
COMPONENTS = ("embedding", "lm_head", "deltanet", "attention", "router", "routed experts", "shared expert",
              "norms", "mtp", "fp8 scales")


def component_of(name: str) -> str:
    """Which part of the model a checkpoint key belongs to."""
    if name.endswith(SCALE_SUFFIX):
        return "fp8 scales"
    if name.startswith("mtp."):
        return "mtp"
    if "embed_tokens" in name:
        return "embedding"
    if name.startswith("lm_head"):
        return "lm_head"
    if ".mlp.experts." in name:
        return "routed experts"
    if ".shared_expert" in name:
        return "shared expert"
    if ".mlp.gate." in name:
        return "router"
    if ".linear_attn." in name:
        return "deltanet"
    if ".self_attn." in name:
        return "attention"
    if "norm" in name:
        return "norms"
    return "other"


_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.")
_EXPERT_KEY = re.compile(r"model\.layers\.\d+\.mlp\.experts\.(\d+)\.")


def module_counts(names: Iterable[str]) -> tuple[int, int]:
    """``(decoder layers, routed experts per layer)`` that the key names show (highest index + 1; 0 if none)."""
    layers = experts = 0
    for n in names:
        if m := _LAYER_KEY.match(n):
            layers = max(layers, int(m.group(1)) + 1)
            if e := _EXPERT_KEY.match(n):
                experts = max(experts, int(e.group(1)) + 1)
    return layers, experts
