"""Loading a real Qwen3-Next checkpoint into a model: a key-by-key copy with every check first.

What it implements
    * :func:`load_weights`: given a model built on the meta device (nothing allocated) and an opened
      :class:`~qwen3next.checkpoint.Checkpoint`, check every key, shape and dtype against the model, then
      copy shard by shard through ``safetensors.safe_open`` (memory-mapped), converting dtype and
      dequantising FP8 blocks (:mod:`qwen3next.fp8`) on the way. ``Qwen3NextForCausalLM.from_pretrained``
      builds the model and calls it; this module never imports the model. ``mtp.*`` tensors (the
      multi-token-prediction module, not part of the trunk) are set aside; :func:`load_mtp` reads them.
      With ``offload_experts`` the routed experts stay on disk (:mod:`qwen3next.offload`).

Mirrors ``transformers``' ``PreTrainedModel.from_pretrained`` for this model (``modeling_utils.py`` and
``integrations/finegrained_fp8.py``), which converts the per-expert Hub keys into its fused in-memory
layout; this package keeps the Hub layout, so loading is a key-by-key copy. Inspecting a checkpoint
without loading it is :mod:`qwen3next.inspection`; measuring what loading costs is :mod:`qwen3next.measure`.

Leaves out: ``pytorch_model.bin`` (refused), other quantisation formats (GPTQ, AWQ, bitsandbytes),
tensor parallelism, and keeping FP8 weights quantised in memory.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from .checkpoint import (
    CONFIG_FILE,
    DTYPES,
    FLOAT_CODES,
    FP8_CODES,
    SCALE_SUFFIX,
    Checkpoint,
    CheckpointError,
    Plan,
    TensorInfo,
    check_checkpoint,
    open_checkpoint,
    read_tensor,
)
from .fp8 import dequantize_fp8
from .moe import SparseMoeBlock
from .offload import ExpertStore, OffloadedExperts

__all__ = ["load_weights", "load_mtp", "target_dtype"]


# ------------------------------------------------------------------------------------- loading
def target_dtype(ckpt: Checkpoint, dtype: torch.dtype | str | None) -> torch.dtype:
    """``dtype`` if given, else the checkpoint's own float dtype (FP8 files: their ``torch_dtype``)."""
    if dtype == "auto":
        dtype = None
    if dtype is not None:
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise CheckpointError(f"dtype: expected a torch float dtype such as torch.bfloat16, found {dtype!r}")
        return dtype
    codes = {i.dtype for n, i in ckpt.tensors.items() if i.dtype in FLOAT_CODES and not n.endswith(SCALE_SUFFIX)}
    if len(codes) == 1:
        return DTYPES[codes.pop()][0]
    return getattr(torch, ckpt.config.torch_dtype, torch.bfloat16)


def _materialise(info: TensorInfo, raw: torch.Tensor, plan: Plan, dtype: torch.dtype,
                 scale: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """The model's copy of one checkpoint tensor, in ``dtype`` on ``device``.

    ``safe_open(...).get_tensor`` returns a view of the memory-mapped file, not a copy: its pages are
    read only when touched, and the weight would change (or the process crash) if the file were
    rewritten. ``copy=True`` gives the model memory of its own, so "load everything" means resident.
    """
    if info.dtype in FP8_CODES:
        return dequantize_fp8(raw, scale, plan.checkpoint.fp8_block, dtype).to(device)
    return raw.to(device=device, dtype=dtype, copy=True)


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Put ``value`` in place of the (meta) parameter or buffer called ``name``."""
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(value, requires_grad=module._parameters[leaf].requires_grad)
    elif leaf in module._buffers:
        module._buffers[leaf] = value
    else:
        raise RuntimeError(f"{name}: the model has no parameter or buffer of that name")


def _restore_buffers(model: nn.Module, device: torch.device) -> None:
    """Recompute the non-persistent buffers (RoPE ``inv_freq``) that stayed on the meta device."""
    for name, module in model.named_modules():
        meta = [b for b, t in module._buffers.items() if t is not None and t.is_meta]
        if not meta:
            continue
        if hasattr(module, "reset_inv_freq"):
            module._buffers["inv_freq"] = torch.empty(module.inv_freq.shape, device=device)
            with torch.device(device):
                module.reset_inv_freq()
        else:
            raise RuntimeError(f"{name}: buffers {meta} are not in the checkpoint and cannot be recomputed")


def _moe_blocks(model: nn.Module) -> list[tuple[int, nn.Module]]:
    blocks = []
    for name, module in model.named_modules():
        m = re.fullmatch(r"model\.layers\.(\d+)\.mlp", name)
        if m and isinstance(module, SparseMoeBlock):
            blocks.append((int(m.group(1)), module))
    return blocks


def load_weights(model: nn.Module, ckpt: Checkpoint, dtype: torch.dtype | str | None = None,
                 device: str | torch.device = "cpu", offload_experts: bool = False,
                 expert_cache_size: int | None = None) -> nn.Module:
    """Fill ``model``, built on the meta device from ``ckpt.config``, with the checkpoint's weights.

    What ``Qwen3NextForCausalLM.from_pretrained`` calls after building the model. Steps: check every key,
    shape and dtype of the checkpoint against the model; then read shard by shard through
    ``safetensors.safe_open`` (memory-mapped), dequantising FP8 blocks and converting to ``dtype``
    (default: the checkpoint's), and put each tensor in place. With ``offload_experts`` the routed experts
    are not read: each MoE block gets an :class:`OffloadedExperts` that reads an expert when the router
    picks it, through one LRU cache of ``expert_cache_size`` experts shared by all layers (default: one
    token's worth, ``num_experts_per_tok`` x the number of MoE layers).
    """
    from safetensors import safe_open

    device = torch.device(device)
    target = target_dtype(ckpt, dtype)
    plan = check_checkpoint(ckpt, {k: tuple(v.shape) for k, v in model.state_dict().items()})

    skip: set[str] = set()
    if offload_experts:
        blocks = _moe_blocks(model)
        if not blocks:
            raise CheckpointError(f"offload_experts: {CONFIG_FILE} describes no MoE layer, nothing to offload")
        n_moe = len(blocks)
        capacity = expert_cache_size if expert_cache_size is not None else ckpt.config.num_experts_per_tok * n_moe
        store = ExpertStore(plan, target, device, capacity)
        for i, block in blocks:
            block.experts = OffloadedExperts(store, i, ckpt.config.num_experts)
        skip = {n for n in plan.layout if ".mlp.experts." in n}
        model.expert_store = store  # reachable for statistics (hits, misses, bytes read)

    by_file: dict[Path, list[str]] = {}
    for name in plan.layout:
        if name not in skip:
            by_file.setdefault(ckpt.tensors[name].file, []).append(name)
    for file in ckpt.files:  # one shard mapped at a time: peak is the model plus one shard's pages
        names = by_file.get(file, [])
        if not names:
            continue
        with safe_open(file, framework="pt", device="cpu") as sf:
            for name in names:
                info = ckpt.tensors[name]
                scale = None
                if info.dtype in FP8_CODES:
                    scale = read_tensor(plan.scales[name])
                _set_tensor(model, name, _materialise(info, sf.get_tensor(name), plan, target, scale, device))
    _restore_buffers(model, device)
    leftover = [n for n, t in model.state_dict().items() if t.is_meta]
    if leftover:
        raise RuntimeError(f"weights left unloaded: {leftover[:5]}")
    return model.eval()


def load_mtp(path: str | Path, dtype: torch.dtype | str | None = None) -> dict[str, torch.Tensor]:
    """The ``mtp.*`` tensors the loader sets aside, read on their own (FP8 ones dequantised)."""
    ckpt = open_checkpoint(path)
    target = target_dtype(ckpt, dtype)
    out = {}
    for name in ckpt.mtp_names():
        if name.endswith(SCALE_SUFFIX):
            continue
        info = ckpt.tensors[name]
        raw = read_tensor(info)
        if info.dtype in FP8_CODES:
            scale_info = ckpt.tensors.get(name + SCALE_SUFFIX)
            if scale_info is None:
                raise CheckpointError(f"{name!r} in {info.file.name} is FP8 but {name + SCALE_SUFFIX!r} is missing")
            out[name] = dequantize_fp8(raw, read_tensor(scale_info), ckpt.fp8_block, target)
        else:
            out[name] = raw.to(target)
    return out
