"""Bridges to the reference implementation (``transformers.models.qwen3_next``) for checks.

Tests, chapters and benchmarks use these to build the reference module that matches one of ours and
holds the same weights, so both compute with the same numbers: :func:`reference_twin` for any of our
blocks or the whole model, :func:`real_width_moe_pair` for a sparse MoE block at the released width
without its 1.6 billion random numbers, :func:`random_reference_model` for a reference model that
stands in for a trained checkpoint. ``transformers`` is only needed here: the rest of the package never
imports it.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from .attention import GatedAttention
from .config import Qwen3NextConfig
from .deltanet import GatedDeltaNet
from .model import Qwen3NextForCausalLM
from .moe import SparseMoeBlock
from .norms import RMSNorm, RMSNormGated


def reference_config(cfg: Qwen3NextConfig, attn_implementation: str = "eager",
                     experts_implementation: str | None = None):
    """The ``transformers.Qwen3NextConfig`` describing the same model as ``cfg``.

    ``experts_implementation`` (``"eager"``, ``"batched_mm"``, ``"grouped_mm"``): how the reference's
    MoE blocks run their experts; None leaves transformers' default.
    """
    from transformers import Qwen3NextConfig as RefConfig

    ref = RefConfig(**cfg.to_dict())
    ref._attn_implementation = attn_implementation
    if experts_implementation is not None:
        ref._experts_implementation = experts_implementation
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


# the MoE block's modules that hold the same weight in our layout and the reference's
_SHARED_MOE_WEIGHTS = ("gate", "shared_expert.gate_proj", "shared_expert.up_proj", "shared_expert.down_proj",
                       "shared_expert_gate")


# ------------------------------------------------------------------------------------------ twins
def reference_twin(ours: nn.Module, cfg: Qwen3NextConfig | None = None,
                   experts_implementation: str = "eager") -> nn.Module:
    """The reference module matching ``ours``, holding a copy of its weights, in its dtype and mode.

    ``ours``: a :class:`~qwen3next.model.Qwen3NextForCausalLM`, ``GatedAttention``, ``GatedDeltaNet``,
    ``SparseMoeBlock`` (experts fused the reference's way), ``RMSNorm`` or ``RMSNormGated``; ``cfg``
    is its config (not needed for the norms). The reference's MoE blocks run their experts with
    ``experts_implementation`` (default: its plain loop). Our weights are copied, so the two can be
    changed or trained apart; :func:`tie_moe_weights` shares one copy of an MoE block's weights instead.
    """
    from transformers.models.qwen3_next import modeling_qwen3_next as hf

    if isinstance(ours, (RMSNorm, RMSNormGated)):
        cls = hf.Qwen3NextRMSNorm if isinstance(ours, RMSNorm) else hf.Qwen3NextRMSNormGated
        ref = cls(ours.weight.shape[0], eps=ours.eps)
    else:
        rc = reference_config(cfg, experts_implementation=experts_implementation)
        if isinstance(ours, Qwen3NextForCausalLM):
            ref = hf.Qwen3NextForCausalLM(rc)
        elif isinstance(ours, GatedAttention):
            ref = hf.Qwen3NextAttention(rc, layer_idx=ours.layer_idx)
        elif isinstance(ours, GatedDeltaNet):
            ref = hf.Qwen3NextGatedDeltaNet(rc, ours.layer_idx)
        elif isinstance(ours, SparseMoeBlock):
            ref = hf.Qwen3NextSparseMoeBlock(rc)
        else:
            raise TypeError(f"ours: no reference twin for {type(ours).__name__}")
    weights = ours.state_dict()
    if isinstance(ours, (Qwen3NextForCausalLM, SparseMoeBlock)):
        weights = moe_state_dict_to_reference(weights)
    ref.to(next(ours.parameters()).dtype).load_state_dict(weights, strict=True)
    return ref.train(ours.training)


def random_reference_model(cfg: Qwen3NextConfig, seed: int = 0) -> nn.Module:
    """A seeded reference ``Qwen3NextForCausalLM`` in eval mode that stands in for a trained checkpoint.

    Its norm gains, ``A_log`` and ``dt_bias`` are moved off their starting values, so that a loader
    that forgot one of them would give other logits.
    """
    import transformers

    torch.manual_seed(seed)
    ref = transformers.Qwen3NextForCausalLM(reference_config(cfg)).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name or "A_log" in name or "dt_bias" in name:
                p.add_(0.1 * torch.randn_like(p))
    return ref


def real_width_moe_pair(dtype: torch.dtype, seed: int = 0, cfg: Qwen3NextConfig | None = None,
                        own_memory: bool = False):
    """Our sparse MoE block and the reference's at the released width, sharing one copy of weights.

    Returns ``(cfg, ours, ref)``; our stacked experts are the reference's fused tensors
    (:func:`tie_moe_weights`). Drawing 1.6 billion random numbers would take longer than the checks
    that use them, so the weights are windows of one random pool of a few million numbers:

    * ``own_memory=False``: the fused expert tensors are strided views into the pool, expert e's
      matrix ``stride`` numbers after expert e-1's. Every expert is a different matrix (neighbours
      are shifted by a few rows and columns), yet the whole block takes a few MB. For checks.
    * ``own_memory=True``: every tensor gets its own memory (3.2 GB in bfloat16, as a checkpoint's
      would), filled with copies of pool windows at random offsets. For timings, where reading the
      weights from memory is the cost being measured.

    Routing, shapes and per-expert compute are those of the real block; only the values are synthetic.
    """
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextSparseMoeBlock

    cfg = cfg or Qwen3NextConfig.full()
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):  # nothing allocated yet
        ref = Qwen3NextSparseMoeBlock(reference_config(cfg, experts_implementation="eager")).to(dtype)
        ours = SparseMoeBlock(cfg).to(dtype)
    if own_memory:
        _fill_from_pool(ref.to_empty(device="cpu"), g)
    else:
        _fill_overlapping(ref, cfg, dtype, g)
    tie_moe_weights(ours, ref, source="reference")
    return cfg, ours, ref


def _fill_from_pool(module: nn.Module, g: torch.Generator, std: float = 0.02) -> None:
    """Fill every parameter with copies of windows of one N(0, std) pool, at random offsets."""
    dtype = next(module.parameters()).dtype
    pool = (std * torch.randn(1 << 24, generator=g)).to(dtype)
    window = 1 << 22
    with torch.no_grad():
        for p in module.parameters():
            flat = p.view(-1)
            for start in range(0, flat.numel(), window):
                n = min(window, flat.numel() - start)
                offset = int(torch.randint(0, pool.numel() - n, (1,), generator=g))
                flat[start:start + n].copy_(pool[offset:offset + n])


def _fill_overlapping(ref: nn.Module, cfg: Qwen3NextConfig, dtype: torch.dtype, g: torch.Generator) -> None:
    """Random router and shared expert; fused experts as strided views into one pool each."""
    E, H, I = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
    for name in _SHARED_MOE_WEIGHTS:
        module = ref.get_submodule(name)
        module.weight = nn.Parameter((torch.randn(module.weight.shape, generator=g) * 0.02).to(dtype))
    # a multiple of 16 numbers keeps every expert 64-byte aligned (misaligned weights send the CPU
    # matmul down a much slower path); 8208 = 4 rows + 16 columns of shift between neighbours
    stride = 8208
    for name, shape in (("gate_up_proj", (E, 2 * I, H)), ("down_proj", (E, H, I))):
        pool = (torch.randn((E - 1) * stride + shape[1] * shape[2], generator=g) * 0.02).to(dtype)
        fused = pool.as_strided(shape, (stride, shape[2], 1))
        setattr(ref.experts, name, nn.Parameter(fused, requires_grad=False))


# ------------------------------------------------------------------------------------------------ moe
def tie_moe_weights(ours, ref, source: str = "ours") -> None:
    """Make our ``moe.SparseMoeBlock`` and a reference ``Qwen3NextSparseMoeBlock`` share one copy of weights.

    Both keep the experts fused the same way: ``experts.gate_up_proj`` (E, 2I, H) holds expert e's gate
    rows then its up rows, ``experts.down_proj`` is (E, H, I) (ours: :class:`~qwen3next.experts.StackedExperts`).
    After this call every parameter of the two blocks is the same ``Parameter`` object, so a real-width
    pair costs one block of memory and our ``experts[e]`` weights are views into the reference's tensors.
    ``source="ours"`` keeps our values (the reference may be on ``meta``); ``source="reference"`` keeps
    the reference's (ours may be on ``meta``).
    """
    if source not in ("ours", "reference"):
        raise ValueError(f"source: expected 'ours' or 'reference', found {source!r}")
    for name in ("gate_up_proj", "down_proj"):
        want, found = tuple(getattr(ours.experts, name).shape), tuple(getattr(ref.experts, name).shape)
        if found != want:
            raise ValueError(f"ref.experts.{name}: expected shape {want}, found {found}")
    src, dst = (ours, ref) if source == "ours" else (ref, ours)
    for name in _SHARED_MOE_WEIGHTS:
        src_mod, dst_mod = src.get_submodule(name), dst.get_submodule(name)
        dst_mod.weight = src_mod.weight  # the very same Parameter in both blocks
    for name in ("gate_up_proj", "down_proj"):
        setattr(dst.experts, name, getattr(src.experts, name))


def moe_state_dict_to_reference(state_dict: dict) -> dict:
    """Our (Hub-format) state dict with every MoE layer's experts fused the way transformers 5 keeps them.

    ``{p}experts.{e}.gate_proj.weight`` and ``{p}experts.{e}.up_proj.weight`` (I, H) become
    ``{p}experts.gate_up_proj`` (E, 2I, H), gate rows first; ``{p}experts.{e}.down_proj.weight`` (H, I)
    becomes ``{p}experts.down_proj`` (E, H, I). Every other key passes through. The result loads into a
    reference module with ``load_state_dict`` (it copies; use ``tie_moe_weights`` to share memory).
    """
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


# ---------------------------------------------------------------------------------------------- model
def layer_differences(ours, ref, input_ids, **kwargs) -> list[float]:
    """Where two whole models part ways: max |diff| of the residual stream after each layer.

    ``ours`` is a ``qwen3next.model.Qwen3NextForCausalLM``, ``ref`` a ``transformers`` one (or any
    model with ``model.embed_tokens`` and ``model.layers``). Returns ``L + 2`` numbers: the embeddings,
    the output of each of the ``L`` decoder layers, then the logits. The first layer whose number
    jumps is the first place the two computations differ. ``kwargs`` go to both forward calls.
    """
    captured: dict[str, list] = {"ours": [], "ref": []}

    def keeper(side: str):
        def keep(_module, _inputs, out):
            captured[side].append(out[0] if isinstance(out, tuple) else out)
        return keep

    # each decoder layer's output, read the same way on both sides (hidden_states ends after the final norm)
    hooks = [layer.register_forward_hook(keeper("ref")) for layer in ref.model.layers]
    hooks += [layer.register_forward_hook(keeper("ours")) for layer in ours.model.layers]
    try:
        with torch.no_grad():
            ref_logits = ref(input_ids, **kwargs).logits
            out = ours(input_ids, **kwargs)
            ref_states = [ref.model.embed_tokens(input_ids), *captured["ref"]]
            our_states = [ours.model.embed_tokens(input_ids), *captured["ours"]]
    finally:
        for hook in hooks:
            hook.remove()
    if len(ref_states) != len(our_states):
        raise ValueError(f"ref: has {len(ref_states) - 1} layers, ours has {len(our_states) - 1}")
    diffs = [max_abs_diff(a, b) for a, b in zip(our_states, ref_states, strict=True)]
    return diffs + [max_abs_diff(out.logits, ref_logits)]
