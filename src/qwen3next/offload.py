"""Expert offloading: the routed experts stay on disk and are read when the router picks them.

What it implements
    * :class:`ExpertStore`: an expert's three matrices (and FP8 scales) read with ``os.preadv`` straight
      from the byte offsets of the safetensors headers, dequantised and converted to the loading dtype,
      and kept in one bounded LRU cache shared by all layers; it counts hits, misses and bytes read.
    * :class:`OffloadedExperts`: stands in for a MoE block's ``experts`` ModuleList, so
      ``moe.SparseMoeBlock`` runs unchanged; it holds no parameters.

The routed experts are 97% of the parameters and a token uses 10 of 512 per layer; the idea is that of
expert offloading in llama.cpp, vLLM's CPU offload and "Fast Inference of Mixture-of-Experts Language
Models with Offloading" (Eliseev and Mazur, 2023), here in its simplest form.

Leaves out: prefetching, pinned memory and asynchronous copies, per-layer caches, speculative loading.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from .checkpoint import Plan
from .fp8 import dequantize_fp8
from .safetensors_file import FP8_CODES, read_tensor


class ExpertStore:
    """Routed experts read from disk on demand, kept in one bounded LRU cache shared by all layers.

    ``get(layer, e)`` returns a ready ``moe.MLP``; a miss reads its three weights (and FP8 scales) with
    ``os.preadv`` from the byte ranges of the safetensors headers. ``hits``, ``misses`` and
    ``bytes_read`` count what happened; ``cached_bytes`` is what the cache holds now.
    """

    def __init__(self, plan: Plan, dtype: torch.dtype, device: torch.device, capacity: int):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"expert_cache_size: expected a positive number of experts, found {capacity!r}")
        self.plan, self.dtype, self.device, self.capacity = plan, dtype, device, capacity
        cfg = plan.checkpoint.config
        self.hidden, self.width = cfg.hidden_size, cfg.moe_intermediate_size
        self.cache: OrderedDict[tuple[int, int], nn.Module] = OrderedDict()
        self.hits = self.misses = self.bytes_read = 0
        self._fds: dict[Path, int] = {}

    def _fd(self, file: Path) -> int:
        if file not in self._fds:
            self._fds[file] = os.open(file, os.O_RDONLY)
        return self._fds[file]

    def _read(self, name: str) -> tuple[torch.Tensor, int]:
        info = self.plan.checkpoint.tensors[name]
        raw = read_tensor(info, self._fd(info.file))
        n = info.nbytes
        if info.dtype in FP8_CODES:
            scale_info = self.plan.scales[name]
            scale = read_tensor(scale_info, self._fd(scale_info.file))
            n += scale_info.nbytes
            return dequantize_fp8(raw, scale, self.plan.checkpoint.fp8_block, self.dtype), n
        return raw.to(self.dtype), n

    def load(self, layer: int, e: int) -> nn.Module:
        """Read one expert from disk (no caching)."""
        from .moe import MLP

        with torch.device("meta"):
            mlp = MLP(self.hidden, self.width)
        for proj in ("gate_proj", "up_proj", "down_proj"):
            w, n = self._read(f"model.layers.{layer}.mlp.experts.{e}.{proj}.weight")
            self.bytes_read += n
            getattr(mlp, proj)._parameters["weight"] = nn.Parameter(w.to(self.device), requires_grad=False)
        return mlp.eval()

    def get(self, layer: int, e: int) -> nn.Module:
        key = (layer, e)
        mlp = self.cache.get(key)
        if mlp is not None:
            self.hits += 1
            self.cache.move_to_end(key)
            return mlp
        self.misses += 1
        mlp = self.load(layer, e)
        self.cache[key] = mlp
        while len(self.cache) > self.capacity:
            self.cache.popitem(last=False)  # least recently used
        return mlp

    @property
    def expert_bytes(self) -> int:
        """Bytes of one expert in memory at the loading dtype."""
        return 3 * self.hidden * self.width * torch.empty((), dtype=self.dtype).element_size()

    @property
    def cached_bytes(self) -> int:
        return len(self.cache) * self.expert_bytes

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "bytes_read": self.bytes_read,
                "cached_experts": len(self.cache), "capacity": self.capacity}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


class OffloadedExperts(nn.Module):
    """Stands in for a MoE block's ``experts`` ModuleList: ``len()`` and ``[e]`` read through the store.

    It holds no parameters, so ``state_dict()`` leaves the routed experts out (they stay on disk).
    """

    def __init__(self, store: ExpertStore, layer_idx: int, num_experts: int):
        super().__init__()
        self.store, self.layer_idx, self.num_experts = store, layer_idx, num_experts

    def __len__(self) -> int:
        return self.num_experts

    def __getitem__(self, e: int) -> nn.Module:
        e = int(e)
        if not 0 <= e < self.num_experts:
            raise IndexError(f"expert {e} out of range 0..{self.num_experts - 1}")
        return self.store.get(self.layer_idx, e)

    def __iter__(self):
        return (self[e] for e in range(self.num_experts))

    def extra_repr(self) -> str:
        return f"layer={self.layer_idx}, num_experts={self.num_experts}, on disk, cache={self.store.capacity}"

