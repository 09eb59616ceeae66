"""Loading real Qwen3-Next checkpoints into the model, and measuring what it costs.

What it implements
    * :func:`load_pretrained`: open and check the directory (:mod:`qwen3next.checkpoint`), build the model
      on the meta device (nothing is allocated), check every key, shape and dtype against the model, then
      copy shard by shard through ``safetensors.safe_open`` (memory-mapped), converting dtype and
      dequantising FP8 blocks (:mod:`qwen3next.fp8`) on the way. ``mtp.*`` tensors (the
      multi-token-prediction module, not part of the model) are set aside; :func:`load_mtp` reads them.
      With ``offload_experts`` the routed experts stay on disk (:mod:`qwen3next.offload`).
    * :func:`describe`: tensors, parameters and bytes by component, and the memory each loading mode needs,
      from the headers alone (``python -m qwen3next inspect DIR``).
    * Measurement: resident memory from ``/proc`` (:func:`memory_status`), and each loading mode timed
      and measured in a fresh process (:func:`measure_modes_in_subprocess`).

Mirrors ``transformers``' ``PreTrainedModel.from_pretrained`` for this model (``modeling_utils.py`` and
``integrations/finegrained_fp8.py``), which converts the per-expert Hub keys into its fused in-memory
layout; this package keeps the Hub layout, so loading is a key-by-key copy.

The names that moved to :mod:`qwen3next.checkpoint`, :mod:`qwen3next.fp8` and :mod:`qwen3next.offload`
are re-exported here, so ``from qwen3next.weights import ...`` keeps working.

Leaves out: ``pytorch_model.bin`` (refused), other quantisation formats (GPTQ, AWQ, bitsandbytes),
tensor parallelism, and keeping FP8 weights quantised in memory.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import (
    CODE_OF_DTYPE,
    COMPONENTS,
    CONFIG_FILE,
    DTYPES,
    FLOAT_CODES,
    FP8_CODES,
    INDEX_FILE,
    MAX_HEADER_BYTES,
    PICKLE_FILES,
    SCALE_SUFFIX,
    SINGLE_FILE,
    Checkpoint,
    CheckpointError,
    Expected,
    MissingFileError,
    Plan,
    TensorInfo,
    check_checkpoint,
    component_of,
    hub_layout,
    mtp_layout,
    open_checkpoint,
    read_header,
    read_tensor,
)
from .config import Qwen3NextConfig
from .fp8 import FP8_KEEP, FP8_MAX, dequantize_fp8, fp8_candidate, quantize_fp8, write_fp8_checkpoint
from .offload import ExpertStore, OffloadedExperts

__all__ = [
    # re-exported from .checkpoint
    "CODE_OF_DTYPE", "COMPONENTS", "CONFIG_FILE", "DTYPES", "FLOAT_CODES", "FP8_CODES", "INDEX_FILE",
    "MAX_HEADER_BYTES", "PICKLE_FILES", "SCALE_SUFFIX", "SINGLE_FILE", "Checkpoint", "CheckpointError",
    "Expected", "MissingFileError", "Plan", "TensorInfo", "check_checkpoint", "component_of", "hub_layout",
    "mtp_layout", "open_checkpoint", "read_header", "read_tensor",
    # re-exported from .fp8
    "FP8_KEEP", "FP8_MAX", "dequantize_fp8", "fp8_candidate", "quantize_fp8", "write_fp8_checkpoint",
    # re-exported from .offload
    "ExpertStore", "OffloadedExperts",
    # defined here
    "load_pretrained", "load_mtp", "Summary", "describe", "human_bytes", "format_summary", "memory_status",
    "reset_peak_memory", "measure_modes_in_subprocess", "measure_in_subprocess",
]


# ------------------------------------------------------------------------------------- loading
def _target_dtype(ckpt: Checkpoint, dtype: torch.dtype | str | None) -> torch.dtype:
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


def _meta_model(cfg: Qwen3NextConfig) -> nn.Module:
    from .model import Qwen3NextForCausalLM

    with torch.device("meta"):
        return Qwen3NextForCausalLM(cfg)


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
    from .moe import SparseMoeBlock

    blocks = []
    for name, module in model.named_modules():
        m = re.fullmatch(r"model\.layers\.(\d+)\.mlp", name)
        if m and isinstance(module, SparseMoeBlock):
            blocks.append((int(m.group(1)), module))
    return blocks


def load_pretrained(path: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
                    offload_experts: bool = False, expert_cache_size: int | None = None) -> nn.Module:
    """Build a ``Qwen3NextForCausalLM`` from a checkpoint directory (what ``from_pretrained`` calls).

    Steps: open and check every file (headers only); build the model on the meta device (no memory);
    check every key, shape and dtype; then read shard by shard through ``safetensors.safe_open``
    (memory-mapped), dequantising FP8 blocks and converting to ``dtype`` (default: the checkpoint's),
    and put each tensor in place. With ``offload_experts`` the routed experts are not read: each MoE
    block gets an :class:`OffloadedExperts` that reads an expert when the router picks it, through one
    LRU cache of ``expert_cache_size`` experts shared by all layers (default: one token's worth,
    ``num_experts_per_tok`` x the number of MoE layers).
    """
    from safetensors import safe_open

    ckpt = open_checkpoint(path)
    device = torch.device(device)
    target = _target_dtype(ckpt, dtype)
    model = _meta_model(ckpt.config)
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
    target = _target_dtype(ckpt, dtype)
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


# ------------------------------------------------------------------------------------- inspect

@dataclass
class Summary:
    """What :func:`describe` finds: counts by component and dtype, and the memory of each loading mode."""

    directory: Path
    files: int
    file_bytes: int
    tensors: dict[str, int]
    params: dict[str, int]
    bytes: dict[str, int]
    dtypes: dict[str, int]  # tensors per dtype code
    config: Qwen3NextConfig
    quantization: dict | None

    @property
    def model_params(self) -> int:
        return sum(v for k, v in self.params.items() if k not in ("mtp", "fp8 scales"))

    @property
    def expert_params(self) -> int:
        return self.params.get("routed experts", 0)

    def memory(self, dtype_bytes: int = 2, cache_experts: int | None = None) -> dict[str, int]:
        """Resident bytes of the weights in each loading mode, at ``dtype_bytes`` per parameter."""
        cfg = self.config
        n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
        if cache_experts is None:
            cache_experts = cfg.num_experts_per_tok * n_moe
        expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size * dtype_bytes
        non_expert = (self.model_params - self.expert_params) * dtype_bytes
        return {"load everything": self.model_params * dtype_bytes,
                "offload experts": non_expert + cache_experts * expert,
                "non-expert weights": non_expert,
                "expert cache": cache_experts * expert}


def describe(path: str | Path) -> Summary:
    """Count a checkpoint's tensors, parameters and bytes by component and dtype, from headers only."""
    ckpt = open_checkpoint(path)
    tensors = dict.fromkeys(COMPONENTS, 0)
    params = dict.fromkeys(COMPONENTS, 0)
    nbytes = dict.fromkeys(COMPONENTS, 0)
    dtypes: dict[str, int] = {}
    for name, info in ckpt.tensors.items():
        c = component_of(name)
        tensors[c] = tensors.get(c, 0) + 1
        params[c] = params.get(c, 0) + (0 if c == "fp8 scales" else info.numel)
        nbytes[c] = nbytes.get(c, 0) + info.nbytes
        dtypes[info.dtype] = dtypes.get(info.dtype, 0) + 1
    return Summary(ckpt.directory, len(ckpt.files), ckpt.total_bytes, tensors, params, nbytes, dtypes,
                   ckpt.config, ckpt.quantization)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    return f"{n} B"


def format_summary(s: Summary) -> str:
    """The text ``python -m qwen3next inspect DIR`` prints."""
    cfg = s.config
    lines = [f"checkpoint {s.directory}",
             f"  {s.files} file(s), {human_bytes(s.file_bytes)} on disk, {sum(s.tensors.values()):,} tensors",
             f"  config: {cfg.num_hidden_layers} layers ({cfg.layer_types.count('linear_attention')} Gated DeltaNet, "
             f"{cfg.layer_types.count('full_attention')} gated attention), hidden {cfg.hidden_size}, "
             f"{cfg.num_experts} experts (top {cfg.num_experts_per_tok}), vocab {cfg.vocab_size}",
             "  dtypes: " + ", ".join(f"{k} x {v:,}" for k, v in sorted(s.dtypes.items()))]
    if s.quantization:
        lines.append(f"  quantization: {json.dumps(s.quantization, sort_keys=True)}")
    lines.append("")
    lines.append(f"  {'component':<16}{'tensors':>10}{'parameters':>18}{'bytes':>14}")
    for c in COMPONENTS:
        if s.tensors.get(c):
            lines.append(f"  {c:<16}{s.tensors[c]:>10,}{s.params[c]:>18,}{human_bytes(s.bytes[c]):>14}")
    lines.append(f"  {'model (no mtp)':<16}{'':>10}{s.model_params:>18,}")
    lines.append("")
    lines.append("  memory for the weights (KV cache and activations come on top):")
    for label, nb in (("bf16", 2), ("fp32", 4)):
        m = s.memory(nb)
        lines.append(f"    {label}: load everything {human_bytes(m['load everything'])}; offload experts "
                     f"{human_bytes(m['offload experts'])} (non-expert {human_bytes(m['non-expert weights'])} + "
                     f"cache {human_bytes(m['expert cache'])})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------- measurement
def memory_status() -> dict[str, int] | None:
    """This process's resident size and its high-water mark, in bytes (Linux ``/proc``; else None)."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return None
    return {"rss": int(fields["VmRSS"].split()[0]) * 1024, "peak": int(fields["VmHWM"].split()[0]) * 1024}


def reset_peak_memory() -> bool:
    """Reset the high-water mark to the current resident size (``/proc/self/clear_refs``); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _warm_up() -> None:
    """Pay the lazy imports (building on the meta device pulls in sympy) before anything is measured."""
    from .config import Qwen3NextConfig
    from .model import Qwen3NextForCausalLM

    torch.manual_seed(0)
    with torch.no_grad():
        Qwen3NextForCausalLM(Qwen3NextConfig.tiny(num_hidden_layers=4))(torch.arange(4)[None])
        _meta_model(Qwen3NextConfig.tiny(num_hidden_layers=4))


def _measure(path: str, offload: bool, cache: int | None, new_tokens: int, prompt_len: int) -> dict:
    """Load, then decode greedily; memory counted from just before loading (run in a fresh process)."""
    import time

    from .generate import generate

    reset_peak_memory()
    before = memory_status()
    t0 = time.perf_counter()
    model = load_pretrained(path, offload_experts=offload, expert_cache_size=cache)
    load_s = time.perf_counter() - t0
    loaded = memory_status()
    ids = torch.arange(prompt_len)[None] % model.config.vocab_size
    t1 = time.perf_counter()
    with torch.no_grad():
        out = generate(model, ids, new_tokens)
    gen_s = time.perf_counter() - t1
    end = memory_status()
    result = {"load_s": load_s, "tokens_per_s": new_tokens / gen_s, "tokens": out[0, prompt_len:].tolist(),
              "resident": None if before is None else loaded["rss"] - before["rss"],
              "peak": None if before is None else end["peak"] - before["rss"]}
    store = getattr(model, "expert_store", None)
    if store is not None:
        result.update(store.stats())
    return result


_MEASURE_MAIN = """
import json, os, sys, torch
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
from qwen3next.weights import _measure, _warm_up
_warm_up()
results = {}
for name, (offload, cache) in spec["runs"].items():
    args = (spec["path"], offload, cache, spec["new_tokens"], spec["prompt_len"])
    if not hasattr(os, "fork"):
        results[name] = _measure(*args)  # no fork: one process measures all (less exact)
        continue
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a child per mode: the same warm process, memory counted from the fork
        os.close(r)
        try:
            _warm_up()  # a forked child faults the library code pages in again: not weights, so before the count
            out = {"ok": _measure(*args)}
        except BaseException as err:
            out = {"error": repr(err)}
        with os.fdopen(w, "w") as f:
            f.write(json.dumps(out))
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = json.loads(f.read() or '{"error": "the measuring process died"}')
    os.waitpid(pid, 0)
    if "error" in out:
        raise RuntimeError(name + ": " + out["error"])
    results[name] = out["ok"]
print(json.dumps(results))
"""


def measure_modes_in_subprocess(path: str | Path, runs: dict[str, tuple[bool, int | None]], new_tokens: int = 8,
                                prompt_len: int = 16, threads: int = 1) -> dict[str, dict]:
    """Measure several loading modes of a checkpoint, each in a fresh process (Linux for the memory).

    ``runs`` maps a label to ``(offload_experts, expert_cache_size)``. One helper process does the
    imports once, then forks a child per mode, which loads the checkpoint and decodes ``new_tokens``
    greedily after a ``prompt_len``-token prompt. Each result has ``load_s``, ``resident`` (bytes added
    by loading), ``peak`` (high-water mark above the start, decoding included), ``tokens_per_s`` and the
    greedy ``tokens``; with offloading also the cache statistics. Fresh processes, because memory once
    used by a process blurs what a later measurement in it sees.
    """
    import subprocess
    import sys

    spec = {"path": str(path), "runs": {k: [bool(o), c] for k, (o, c) in runs.items()}, "new_tokens": new_tokens,
            "prompt_len": prompt_len, "threads": int(threads)}
    env = {**os.environ, "OMP_NUM_THREADS": str(int(threads))}
    res = subprocess.run([sys.executable, "-c", _MEASURE_MAIN, json.dumps(spec)], capture_output=True, text=True,
                         env=env)
    if res.returncode != 0:
        raise RuntimeError(f"measurement of {path} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure_in_subprocess(path: str | Path, offload_experts: bool = False, expert_cache_size: int | None = None,
                          new_tokens: int = 8, prompt_len: int = 16, threads: int = 1) -> dict:
    """One loading mode of :func:`measure_modes_in_subprocess`."""
    runs = {"run": (offload_experts, expert_cache_size)}
    return measure_modes_in_subprocess(path, runs, new_tokens, prompt_len, threads)["run"]
