"""Inspecting a checkpoint without loading it: what it holds and what each way of loading it would cost.

:func:`describe` counts tensors, parameters and bytes by component and dtype from the safetensors headers
alone (nothing is read beyond them); :func:`format_summary` is the text ``python -m qwen3next inspect DIR``
prints. Chapter 09.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import open_checkpoint
from .config import Qwen3NextConfig
from .hub_layout import COMPONENTS, component_of

__all__ = ["Summary", "describe", "human_bytes", "format_summary"]


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
