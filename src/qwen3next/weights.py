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
layout; this package keeps the Hub's keys, so loading is a key-by-key copy (a routed expert's weights
straight into its rows of the block's stacked experts, :mod:`qwen3next.experts`). Inspecting a checkpoint
without loading it is :mod:`qwen3next.inspection`; measuring what loading costs is :mod:`qwen3next.measure`.

Leaves out: ``pytorch_model.bin`` (refused), other quantisation formats (GPTQ, AWQ, bitsandbytes),
tensor parallelism, and keeping FP8 weights quantised in memory.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CONFIG_FILE, Checkpoint, check_checkpoint, open_checkpoint
from .experts import StackedExperts
from .fp8 import dequantize_fp8
from .hub_layout import SCALE_SUFFIX
from .moe import SparseMoeBlock
from .offload import ExpertStore, OffloadedExperts
from .safetensors_file import DTYPES, FLOAT_CODES, FP8_CODES, CheckpointError, TensorInfo, read_tensor

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


_CHECK_CHUNK = 1 << 20  # elements copied and checked at a time: the piece is still in cache when it is summed


def _materialise(info: TensorInfo, raw: torch.Tensor, block: tuple[int, int], dtype: torch.dtype,
                 scale: torch.Tensor | None, device: torch.device, check_finite: bool,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """The model's copy of one checkpoint tensor, in ``dtype`` on ``device``, checked finite on the way;
    written into ``out`` (the model's own storage, e.g. one expert's rows of a stack) if given.

    ``safe_open(...).get_tensor`` returns a view of the memory-mapped file, not a copy: its pages are
    read only when touched, and the weight would change (or the process crash) if the file were
    rewritten. Copying gives the model memory of its own, so "load everything" means resident.
    """
    if info.dtype in FP8_CODES or device.type != "cpu":  # dequantised, or one transfer; then one check
        fp8 = info.dtype in FP8_CODES
        value = (dequantize_fp8(raw, scale, block, dtype).to(device) if fp8
                 else raw.to(device=device, dtype=dtype, copy=True))
        if check_finite and not _sum_is_finite(value):
            _raise_non_finite(info, value, None if fp8 else raw, dtype)
        return value if out is None else out.copy_(value)
    out = torch.empty(raw.shape, dtype=dtype) if out is None else out
    flat_out, flat_raw = out.view(-1), raw.reshape(-1)
    for a in range(0, flat_out.numel(), _CHECK_CHUNK):
        piece = flat_out[a:a + _CHECK_CHUNK]
        piece.copy_(flat_raw[a:a + _CHECK_CHUNK])
        if check_finite and not _sum_is_finite(piece):
            _raise_non_finite(info, out, raw, dtype)
    return out


def _sum_is_finite(t: torch.Tensor) -> bool:
    """One pass, no temporary: a NaN or an Inf anywhere makes the sum NaN or Inf. (A sum that overflows
    although every element is finite is re-checked element by element.) float16 sums in float32, whose
    range is wider; bfloat16 already has it, and summing in its own dtype is 3x faster on CPU."""
    total = t.sum(dtype=torch.float32) if t.dtype == torch.float16 else t.sum()
    return bool(total.isfinite()) or bool(torch.isfinite(t).all())


def _raise_non_finite(info: TensorInfo, out: torch.Tensor, raw: torch.Tensor | None, dtype: torch.dtype) -> None:
    """Name the tensor, count its non-finite values and say whether the file or the conversion made them."""
    bad = ~torch.isfinite(out)
    first = [int(i) for i in bad.nonzero()[0]] if bad.dim() else []
    overflow = raw is not None and bool(torch.isfinite(raw.reshape(out.shape)[bad.cpu()]).all())
    why = (f"finite in the file ({info.dtype}) but beyond the range of {str(dtype).removeprefix('torch.')}"
           if overflow else "NaN or Inf")
    raise CheckpointError(f"{info.name!r} in {info.file.name}: {int(bad.sum())} non-finite value"
                          f"{'s' * (int(bad.sum()) > 1)} ({why}), the first at index {first}; "
                          f"load with check_finite=False to keep them")


def _stack_slot(model: nn.Module, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """The view of a stack of experts (:class:`StackedExperts`) that the expert weight ``name`` fills,
    or None if ``name`` is not one (the stack gets its storage when its first weight comes)."""
    owner, sep, key = name.partition(".experts.")
    if not sep:
        return None
    experts = model.get_submodule(owner + ".experts")
    return experts.slot(key, dtype, device) if isinstance(experts, StackedExperts) else None


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
                 expert_cache_size: int | None = None, check_finite: bool = True) -> nn.Module:
    """Fill ``model``, built on the meta device from ``ckpt.config``, with the checkpoint's weights.

    What ``Qwen3NextForCausalLM.from_pretrained`` calls after building the model. Steps: check every key,
    shape and dtype of the checkpoint against the model; then read shard by shard through
    ``safetensors.safe_open`` (memory-mapped), dequantising FP8 blocks and converting to ``dtype``
    (default: the checkpoint's), and put each tensor in place. With ``offload_experts`` the routed experts
    are not read: each MoE block gets an :class:`OffloadedExperts` that reads an expert when the router
    picks it, through one LRU cache of ``expert_cache_size`` experts shared by all layers (default: one
    token's worth, ``num_experts_per_tok`` x the number of MoE layers). ``check_finite``: refuse a weight
    holding NaN or Inf (in the file, or made by converting to ``dtype``), checked piece by piece as it is
    copied.
    """
    from safetensors import SafetensorError, safe_open

    device, target = _checked_arguments(ckpt, dtype, device, offload_experts, expert_cache_size, check_finite)
    plan = check_checkpoint(ckpt, {k: tuple(v.shape) for k, v in model.state_dict().items()})

    skip: set[str] = set()
    if offload_experts:
        blocks = _moe_blocks(model)
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
        try:
            with safe_open(file, framework="pt", device="cpu") as sf:
                for name in names:
                    info = ckpt.tensors[name]
                    scale = read_tensor(plan.scales[name]) if name in plan.scales else None
                    slot = _stack_slot(model, name, target, device)
                    value = _materialise(info, sf.get_tensor(name), ckpt.fp8_block, target, scale, device,
                                         check_finite, out=slot)
                    if slot is None:
                        _set_tensor(model, name, value)
        except SafetensorError as err:  # the headers were checked: the file changed since it was opened
            raise CheckpointError(f"{file.name}: {err}") from err
    _restore_buffers(model, device)
    leftover = [n for n, t in model.state_dict().items() if t.is_meta]
    if leftover:
        raise RuntimeError(f"weights left unloaded: {leftover[:5]}")
    return model.eval()


def _checked_arguments(ckpt: Checkpoint, dtype, device, offload_experts, expert_cache_size,
                       check_finite) -> tuple[torch.device, torch.dtype]:
    """Every argument of :func:`load_weights` checked before anything is read: ``(device, dtype)``."""
    for name, value in (("offload_experts", offload_experts), ("check_finite", check_finite)):
        if not isinstance(value, bool):
            raise TypeError(f"{name}: expected True or False, found {value!r}")
    if expert_cache_size is not None and (isinstance(expert_cache_size, bool) or not isinstance(expert_cache_size, int)
                                          or expert_cache_size < 1):
        raise ValueError(f"expert_cache_size: expected a positive number of experts, found {expert_cache_size!r}")
    if offload_experts and not any(ckpt.config.is_moe_layer(i) for i in range(ckpt.config.num_hidden_layers)):
        raise CheckpointError(f"offload_experts: {CONFIG_FILE} describes no MoE layer, nothing to offload")
    return checked_device(device), target_dtype(ckpt, dtype)


def checked_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine, else a ValueError naming it."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: {device!r} is not a device (expected cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "meta":
        raise ValueError("device: weights cannot be loaded onto the meta device (it holds no data)")
    try:
        torch.empty(0, device=device)
    except Exception as err:  # no CUDA build, no such GPU index, no MPS: torch says it in many ways
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"device: {str(device)!r} is not available on this machine ({why})") from None
    return device


def load_mtp(path: str | Path, dtype: torch.dtype | str | None = None,
             check_finite: bool = True) -> dict[str, torch.Tensor]:
    """The ``mtp.*`` tensors the loader sets aside, read on their own (FP8 ones dequantised; every FP8
    weight's scale was checked when the checkpoint was opened)."""
    ckpt = open_checkpoint(path)
    target = target_dtype(ckpt, dtype)
    cpu = torch.device("cpu")
    out = {}
    for name in ckpt.mtp_names():
        if name.endswith(SCALE_SUFFIX):
            continue
        info = ckpt.tensors[name]
        scale = read_tensor(ckpt.tensors[name + SCALE_SUFFIX]) if info.dtype in FP8_CODES else None
        out[name] = _materialise(info, read_tensor(info), ckpt.fp8_block, target, scale, cpu, check_finite)
    return out
