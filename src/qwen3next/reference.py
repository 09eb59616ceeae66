"""Bridges to the reference implementation (``transformers.models.qwen3_next``) for checks.

Tests and chapters use these to build a reference module from one of our configs and to copy our
weights into it, so both compute with the same numbers. ``transformers`` is only needed here: the
rest of the package never imports it.
"""

from __future__ import annotations

import math

from .config import Qwen3NextConfig


def reference_config(cfg: Qwen3NextConfig, attn_implementation: str = "eager"):
    """The ``transformers.Qwen3NextConfig`` describing the same model as ``cfg``."""
    from transformers import Qwen3NextConfig as RefConfig

    ref = RefConfig(**cfg.to_dict())
    ref._attn_implementation = attn_implementation
    return ref


def max_abs_diff(a, b) -> float:
    """Largest elementwise difference of two tensors, compared in float32."""
    return (a.float() - b.float()).abs().max().item()


def diff_bound(d: float) -> str:
    """``d`` as the smallest power of ten at or above it (``"<= 1e-06"``), or ``"= 0"``.

    Rounded up like this, a difference of float noise prints the same on any CPU (unless it happens to
    sit at a power of ten), which is what a committed notebook output needs.
    """
    if d == 0:
        return "= 0"
    return f"<= 1e{math.ceil(math.log10(d)):+03d}"


def check_close(what: str, ours, ref, tol: float) -> float:
    """Assert ``max |ours - ref| <= tol`` and print the check: ``what: max |diff| <= 1e-06 (tolerance 1e-05)``.

    The way chapters show a reference check: the assert fails the cell on a wrong number, the printed
    line tells the reader how close it is. Returns the difference.
    """
    d = max_abs_diff(ours, ref)
    if not d <= tol:  # also catches NaN
        raise AssertionError(f"{what}: max |diff| = {d:.3g} exceeds the tolerance {tol:.0e}")
    print(f"{what}: max |diff| {diff_bound(d)} (tolerance {tol:.0e})")
    return d


# ---------------------------------------------------------------------------------------- moe (issue 6)
def tie_moe_weights(ours, ref, source: str = "ours") -> None:
    """Make our ``moe.SparseMoeBlock`` and a reference ``Qwen3NextSparseMoeBlock`` share one copy of weights.

    The reference fuses its experts: ``experts.gate_up_proj`` (E, 2I, H) holds expert e's gate rows
    then its up rows (it splits them with ``.chunk(2)``), ``experts.down_proj`` is (E, H, I). Ours keeps
    one ``MLP`` per expert (the Hub keys). After this call our expert weights are views into the
    reference's fused tensors, and the router and shared-expert parameters are the same objects, so a
    real-width pair costs one block of memory. ``source="ours"`` copies our values into the reference
    (expert by expert, so the peak is one block plus one expert; the reference may be on ``meta``);
    ``source="reference"`` keeps the reference's values (ours may be on ``meta``).
    """
    import torch
    from torch import nn

    if source not in ("ours", "reference"):
        raise ValueError(f"source: expected 'ours' or 'reference', found {source!r}")
    E, (I, H) = len(ours.experts), ours.experts[0].gate_proj.weight.shape
    found = tuple(ref.experts.gate_up_proj.shape)
    if found != (E, 2 * I, H):
        raise ValueError(f"ref.experts.gate_up_proj: expected shape {(E, 2 * I, H)}, found {found}")
    src, dst = (ours, ref) if source == "ours" else (ref, ours)
    shared = ("gate", "shared_expert.gate_proj", "shared_expert.up_proj", "shared_expert.down_proj",
              "shared_expert_gate")
    for name in shared:
        src_mod, dst_mod = src.get_submodule(name), dst.get_submodule(name)
        dst_mod.weight = src_mod.weight  # the very same Parameter in both blocks
    if source == "ours":
        w = ours.gate.weight
        ref.experts.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, H, dtype=w.dtype, device=w.device))
        ref.experts.down_proj = nn.Parameter(torch.empty(E, H, I, dtype=w.dtype, device=w.device))
    gate_up, down = ref.experts.gate_up_proj.data, ref.experts.down_proj.data
    with torch.no_grad():
        for e in range(E):
            expert = ours.experts[e]
            if source == "ours":
                gate_up[e, :I].copy_(expert.gate_proj.weight)
                gate_up[e, I:].copy_(expert.up_proj.weight)
                down[e].copy_(expert.down_proj.weight)
            # rebinding frees our old copy of expert e before the next one is copied
            expert.gate_proj.weight = nn.Parameter(gate_up[e, :I])
            expert.up_proj.weight = nn.Parameter(gate_up[e, I:])
            expert.down_proj.weight = nn.Parameter(down[e])


def moe_state_dict_to_reference(state_dict: dict) -> dict:
    """Our (Hub-format) state dict with every MoE layer's experts fused the way transformers 5 keeps them.

    ``{p}experts.{e}.gate_proj.weight`` and ``{p}experts.{e}.up_proj.weight`` (I, H) become
    ``{p}experts.gate_up_proj`` (E, 2I, H), gate rows first; ``{p}experts.{e}.down_proj.weight`` (H, I)
    becomes ``{p}experts.down_proj`` (E, H, I). Every other key passes through. The result loads into a
    reference module with ``load_state_dict`` (it copies; use ``tie_moe_weights`` to share memory).
    """
    import re

    import torch

    pattern = re.compile(r"^(.*experts\.)(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
    out, experts = {}, {}  # experts[prefix][e][proj] = tensor
    for key, value in state_dict.items():
        m = pattern.match(key)
        if m is None:
            out[key] = value
        else:
            experts.setdefault(m[1], {}).setdefault(int(m[2]), {})[m[3]] = value
    for prefix, per_expert in experts.items():
        ids = sorted(per_expert)
        if ids != list(range(len(ids))):
            raise ValueError(f"{prefix}: expected experts 0..{len(ids) - 1}, found ids {ids[:5]}...")
        for e in ids:
            missing = {"gate_proj", "up_proj", "down_proj"} - set(per_expert[e])
            if missing:
                raise ValueError(f"{prefix}{e}: missing {sorted(missing)} weights")
        out[prefix + "gate_up_proj"] = torch.stack(
            [torch.cat([per_expert[e]["gate_proj"], per_expert[e]["up_proj"]]) for e in ids]
        )
        out[prefix + "down_proj"] = torch.stack([per_expert[e]["down_proj"] for e in ids])
    return out


# -------------------------------------------------------------------------------------- model (issue 7)
def layer_differences(ours, ref, input_ids, **kwargs) -> list[float]:
    """Where two whole models part ways: max |diff| of the residual stream after each layer.

    ``ours`` is a ``qwen3next.model.Qwen3NextForCausalLM``, ``ref`` a ``transformers`` one (or any
    model with ``model.embed_tokens`` and ``model.layers``). Returns ``L + 2`` numbers: the embeddings,
    the output of each of the ``L`` decoder layers, then the logits. The first layer whose number
    jumps is the first place the two computations differ. ``kwargs`` go to both forward calls.
    """
    import torch

    captured = []

    def keep(_module, _inputs, out):
        captured.append(out[0] if isinstance(out, tuple) else out)

    hooks = [layer.register_forward_hook(keep) for layer in ref.model.layers]
    try:
        with torch.no_grad():
            ref_logits = ref(input_ids, **kwargs).logits
            out = ours(input_ids, output_hidden_states=True, **kwargs)
            ref_states = [ref.model.embed_tokens(input_ids), *captured]
    finally:
        for hook in hooks:
            hook.remove()
    if len(ref_states) != len(out.hidden_states):
        raise ValueError(f"ref: has {len(ref_states) - 1} layers, ours has {len(out.hidden_states) - 1}")
    diffs = [max_abs_diff(a, b) for a, b in zip(out.hidden_states, ref_states, strict=True)]
    return diffs + [max_abs_diff(out.logits, ref_logits)]
