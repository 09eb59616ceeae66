"""Expert offloading: the routed experts stay on disk and are read when the router picks them.

What it implements
    * :class:`ExpertStore`: an expert's three matrices (and FP8 scales) read with ``os.preadv`` straight
      from the byte offsets of the safetensors headers, dequantised and converted to the loading dtype,
      and kept in one bounded LRU cache shared by all layers; it counts hits, misses and bytes read.
    * :class:`OffloadedExperts`: stands in for a MoE block's stacked ``experts``, so
      ``moe.SparseMoeBlock`` runs unchanged; it holds no parameters.
    * :func:`enable_prefetch`: background reading. Before a MoE block runs, its router is applied to its
      input and all the experts it will ask for are read at once by a few threads (the reads overlap
      each other and the shared expert); optionally the next layer's router is applied to the same input
      to guess and read ahead that layer's experts while this layer and the next attention compute.
      The weights read are the same, so the results are identical.

The routed experts are 97% of the parameters and a token uses 10 of 512 per layer; the idea is that of
expert offloading in llama.cpp, vLLM's CPU offload and "Fast Inference of Mixture-of-Experts Language
Models with Offloading" (Eliseev and Mazur, 2023), here in its simplest form.

Leaves out: pinned memory and asynchronous copies to an accelerator, per-layer caches.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
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
    ``bytes_read`` count what happened; ``cached_bytes`` is what the cache holds now. With reader threads
    (:meth:`start_readers`), :meth:`prefetch` reads experts in the background; ``prefetched`` counts the
    experts read ahead and ``prefetch_used`` those of them that were then asked for (a miss whose read
    had started early; ``bytes_read`` includes the guesses that were never used).
    """

    def __init__(self, plan: Plan, dtype: torch.dtype, device: torch.device, capacity: int):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"expert_cache_size: expected a positive number of experts, found {capacity!r}")
        self.plan, self.dtype, self.device, self.capacity = plan, dtype, device, capacity
        cfg = plan.checkpoint.config
        self.hidden, self.width = cfg.hidden_size, cfg.moe_intermediate_size
        self.cache: OrderedDict[tuple[int, int], nn.Module] = OrderedDict()
        self.hits = self.misses = self.bytes_read = self.prefetched = self.prefetch_used = 0
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()  # file descriptors and byte counts are shared with the reader threads
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[tuple[int, int], Future] = {}

    def _fd(self, file: Path) -> int:
        with self._lock:
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
            with self._lock:
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
        pending = self._pending.pop(key, None)
        if pending is not None:
            self.prefetch_used += 1
            mlp = pending.result()  # already read, or being read: wait for it
        else:
            mlp = self.load(layer, e)
        self.cache[key] = mlp
        while len(self.cache) > self.capacity:
            self.cache.popitem(last=False)  # least recently used
        return mlp

    # ------------------------------------------------------------------------ background reading
    def start_readers(self, threads: int = 4) -> None:
        """Start ``threads`` reader threads for :meth:`prefetch` (once)."""
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads: expected a positive number of reader threads, found {threads!r}")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="expert-reader")

    def prefetch(self, layer: int, experts: Iterable[int]) -> None:
        """Start reading these experts of ``layer`` in the background, unless cached or already coming.

        The expert enters the cache only when :meth:`get` asks for it, so a wrong guess evicts nothing.
        """
        if self._pool is None:
            raise RuntimeError("prefetch: no reader threads; call start_readers() first")
        for e in experts:
            key = (layer, int(e))
            if key not in self.cache and key not in self._pending:
                self._pending[key] = self._pool.submit(self.load, *key)
                self.prefetched += 1

    def forget_prefetches(self, keep: Iterable[int]) -> None:
        """Drop read-ahead experts of every layer not in ``keep`` (guesses that were not used)."""
        keep = set(keep)
        for key in [k for k in self._pending if k[0] not in keep]:
            self._pending.pop(key).cancel()  # a read already under way finishes and is thrown away

    @property
    def expert_bytes(self) -> int:
        """Bytes of one expert in memory at the loading dtype."""
        return 3 * self.hidden * self.width * torch.empty((), dtype=self.dtype).element_size()

    @property
    def cached_bytes(self) -> int:
        return len(self.cache) * self.expert_bytes

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "bytes_read": self.bytes_read,
                "cached_experts": len(self.cache), "capacity": self.capacity,
                "prefetched": self.prefetched, "prefetch_used": self.prefetch_used}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


class OffloadedExperts(nn.Module):
    """Stands in for a MoE block's stacked ``experts``: ``len()`` and ``[e]`` read through the store.

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



def enable_prefetch(model: nn.Module, threads: int = 4, lookahead: bool = True) -> list:
    """Read a MoE block's experts in the background before it asks for them (``model.expert_store``).

    A forward pre-hook on every offloaded MoE block applies the block's router to its input and starts
    reading all the experts it picks at once (``threads`` reads in flight instead of one at a time);
    with ``lookahead`` it also applies the next MoE block's router to the same input and reads ahead the
    experts that one is likely to pick. The hooks change what is read when, never what is computed.
    Returns the hook handles (``handle.remove()`` turns it off).
    """
    from .moe import route

    store = getattr(model, "expert_store", None)
    if store is None:
        raise ValueError("enable_prefetch: the model has no expert_store (load it with offload_experts=True)")
    store.start_readers(threads)
    blocks = [m for m in model.modules() if isinstance(getattr(m, "experts", None), OffloadedExperts)]

    def likely(block, x):
        """The experts ``block``'s router picks for the tokens ``x`` (B, T, H), as a sorted list."""
        logits = block.gate(x.reshape(-1, x.shape[-1]))  # (N, E)
        return torch.unique(route(logits, block.top_k, block.norm_topk_prob)[1]).tolist()

    def hook_for(i):
        block, after = blocks[i], blocks[i + 1] if i + 1 < len(blocks) else None

        def hook(_module, args):
            x = args[0]
            layer = block.experts.layer_idx
            store.forget_prefetches(keep=(layer,))  # guesses for this layer not yet used stay; older go
            with torch.no_grad():
                store.prefetch(layer, likely(block, x))
                if lookahead and after is not None:
                    store.prefetch(after.experts.layer_idx, likely(after, x))

        return hook

    return [blocks[i].register_forward_pre_hook(hook_for(i)) for i in range(len(blocks))]
