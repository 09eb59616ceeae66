"""Prefix caching for a hybrid model: full KV blocks plus a DeltaNet state snapshot at block boundaries.

Requests often share their beginning (a system prompt, few-shot examples, the earlier turns of a
chat). A transformer server keeps the KV blocks of finished prompts in a table keyed by their
content; a new prompt that starts with the same blocks reuses them and computes only the rest. Each
block's key covers the block's tokens *and everything before it* (a hash chain), because a key or
value depends on the whole prefix.

A hybrid model needs one more thing. Its DeltaNet layers do not keep one entry per token that could
be cut at any position: they keep one state that has absorbed the whole prefix. To resume after a
cached prefix of ``n`` tokens the server needs the DeltaNet states *at position n*, so it stores a
snapshot of them at block boundaries, and a hit can only end at a boundary that has one:

* ``"align"`` (vLLM's ``mamba_cache_mode="align"``): prompt chunks are cut at block boundaries, and
  only the state at the end of each step's chunk is kept (when that end is a block boundary);
* ``"all"``: every chunk is split at every block boundary, and every boundary gets a snapshot
  (more hits, more copies).

A hit also always leaves at least one prompt token to compute: the logits of the last prompt
token are needed to sample the first new one.

:class:`PrefixCache` holds the table, a reference on every cached block of the shared
:class:`~qwen3next.paged_kv.BlockPool`, and the snapshots in a
:class:`~qwen3next.state_pool.StatePool` of their own; it evicts the least recently used blocks no
running request holds. :func:`vllm_attention_block_size` is the rule by which vLLM chooses the block
size for this model (a block's KV bytes must reach one layer's state bytes), which decides the
smallest prefix that can ever hit.

Mirrors vLLM's ``KVCacheManager`` prefix caching (``BlockHash`` chains) and its ``MambaManager``;
SGLang's ``MambaRadixCache`` keeps a radix tree instead of a hash table. Leaves out multi-modal and
LoRA keys, and the hash algorithm choice (Python's tuple hash, checked against the stored tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .paged_kv import BlockPool
from .state_pool import StatePool

MODES = ("align", "all")


@dataclass
class CachedBlock:
    """One cached full block: its KV block id and, when kept, the DeltaNet snapshot after its last token."""

    key: int
    parent: int | None
    tokens: tuple[int, ...]
    block: int
    depth: int  # 1 for a prompt's first block
    snapshot: int | None = None
    last_used: int = 0


@dataclass(frozen=True)
class Hit:
    """What a lookup found: blocks to share, how many tokens they hold, and the snapshot to restore."""

    blocks: list[int]
    num_tokens: int
    snapshot: int | None


def block_keys(tokens: list[int], block_size: int, num_blocks: int) -> list[int]:
    """The chained keys of the first ``num_blocks`` full blocks of ``tokens``."""
    keys, parent = [], None
    for b in range(num_blocks):
        parent = hash((parent, tuple(tokens[b * block_size:(b + 1) * block_size])))
        keys.append(parent)
    return keys


class PrefixCache:
    """Content-addressed full blocks of earlier requests, with the state snapshots a hybrid needs."""

    def __init__(self, kv_pool: BlockPool, snapshots: StatePool, mode: str = "align"):
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, found {mode!r}")
        self.kv, self.snapshots, self.mode = kv_pool, snapshots, mode
        self.block_size = kv_pool.block_size
        self.entries: dict[int, CachedBlock] = {}
        self.clock = 0
        self.queried_tokens = 0
        self.hit_tokens = 0

    @property
    def hit_rate(self) -> float:
        """Share of looked-up prompt tokens that came from the cache."""
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0

    # ------------------------------------------------------------------------------------ lookup
    def lookup(self, tokens: list[int]) -> Hit:
        """The longest cached prefix of ``tokens`` that ends at a snapshot and leaves a token to compute."""
        self.clock += 1
        self.queried_tokens += len(tokens)
        usable = (len(tokens) - 1) // self.block_size  # never the whole prompt: its last logits are needed
        chain, best = [], 0
        for depth, key in enumerate(block_keys(tokens, self.block_size, usable), start=1):
            entry = self.entries.get(key)
            if entry is None or entry.tokens != tuple(tokens[(depth - 1) * self.block_size:depth * self.block_size]):
                break
            chain.append(entry)
            if entry.snapshot is not None:
                best = depth
        for entry in chain[:best]:
            entry.last_used = self.clock
        self.hit_tokens += best * self.block_size
        snapshot = chain[best - 1].snapshot if best else None
        return Hit([e.block for e in chain[:best]], best * self.block_size, snapshot)

    # --------------------------------------------------------------------------------- insertion
    def wants_snapshot(self, tokens: list[int], position: int) -> bool:
        """Should the state after ``tokens[:position]`` be kept? (a boundary without a snapshot yet)"""
        if position == 0 or position % self.block_size:
            return False
        key = block_keys(tokens, self.block_size, position // self.block_size)[-1]
        entry = self.entries.get(key)
        return entry is None or entry.snapshot is None

    def new_snapshot_slot(self) -> int | None:
        """A snapshot slot, taken from the least recently used entry when none is free (None if none has one)."""
        if self.snapshots.num_free == 0:
            holders = [e for e in self.entries.values() if e.snapshot is not None]
            if not holders:
                return None
            victim = min(holders, key=lambda e: (e.last_used, -e.depth))
            self.snapshots.free(victim.snapshot)
            victim.snapshot = None
        return self.snapshots.allocate()

    def insert(self, tokens: list[int], blocks: list[int], num_tokens: int,
               snapshots: dict[int, int] | None = None) -> None:
        """Register the full blocks of a request holding ``tokens[:num_tokens]`` in ``blocks``.

        ``snapshots`` maps a block boundary position to the snapshot slot taken there; a slot that is
        not needed (the entry already has one) is given back.
        """
        self.clock += 1
        snapshots = dict(snapshots or {})
        parent = None
        for depth, key in enumerate(block_keys(tokens, self.block_size, num_tokens // self.block_size), start=1):
            entry = self.entries.get(key)
            if entry is None:
                entry = CachedBlock(key, parent, tuple(tokens[(depth - 1) * self.block_size:depth * self.block_size]),
                                    blocks[depth - 1], depth)
                self.kv.share(entry.block)  # the cache keeps the block alive after the request ends
                self.entries[key] = entry
            snap = snapshots.pop(depth * self.block_size, None)
            if snap is not None:
                if entry.snapshot is None:
                    entry.snapshot = snap
                else:
                    self.snapshots.free(snap)
            entry.last_used = self.clock
            parent = key
        for snap in snapshots.values():  # boundaries past the full blocks (should not happen): give back
            self.snapshots.free(snap)

    # ---------------------------------------------------------------------------------- eviction
    def evictable(self) -> int:
        """Blocks held by the cache alone (no running request uses them)."""
        return sum(1 for e in self.entries.values() if self.kv.ref_count[e.block] == 1)

    def make_room(self, num_blocks: int) -> None:
        """Evict least recently used unshared blocks (deepest first) until ``num_blocks`` are free."""
        while self.kv.num_free < num_blocks:
            idle = [e for e in self.entries.values() if self.kv.ref_count[e.block] == 1]
            if not idle:
                return
            victim = min(idle, key=lambda e: (e.last_used, -e.depth))
            del self.entries[victim.key]
            self.kv.release(victim.block)
            if victim.snapshot is not None:
                self.snapshots.free(victim.snapshot)


# ------------------------------------------------------------------------------ vLLM's block size
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def deltanet_state_bytes(config, tp: int = 1, conv_bytes: int = 2, state_bytes: int = 2) -> int:
    """One DeltaNet layer's state per request per rank, as vLLM lays it out: a conv window of
    ``K - 1`` columns (the newest input is not stored) and the ``(Hv, Dk, Dv)`` recurrent state."""
    conv = config.linear_conv_dim // tp * (config.linear_conv_kernel_dim - 1) * conv_bytes
    recurrent = config.linear_num_value_heads // tp * config.linear_key_head_dim * config.linear_value_head_dim
    return conv + recurrent * state_bytes


def vllm_attention_block_size(config, tp: int = 1, kv_bytes: int = 2, conv_bytes: int = 2, state_bytes: int = 2,
                              prefix_caching: bool = False, kernel_alignment: int = 16, chunk: int = 64) -> int:
    """The attention block size (tokens) vLLM picks for a hybrid model so that one block of one
    attention layer takes at least as many bytes as one DeltaNet layer's state (one memory pool, one
    page size for both kinds of layer).

    Per rank, the KV heads are ``max(1, Hkv / tp)`` (replicated past ``tp = Hkv``). Without prefix
    caching the block is rounded up to a multiple of ``kernel_alignment``; with it (``"align"``), to a
    multiple of ``lcm(chunk, kernel_alignment)``, the DeltaNet kernel's chunk.
    (That is the rule of earlier vLLM releases; vLLM 0.32 rounds to its attention backend's block in
    both modes: pass that block as ``kernel_alignment`` with ``prefix_caching=False``.)
    """
    kv_heads = max(1, config.num_key_value_heads // tp)
    per_token = 2 * kv_heads * config.head_dim * kv_bytes  # K and V of one token in one layer
    state = deltanet_state_bytes(config, tp, conv_bytes, state_bytes)
    if prefix_caching:
        step = math.lcm(chunk, kernel_alignment)
        return step * cdiv(cdiv(state, per_token), step)
    return kernel_alignment * cdiv(state, kernel_alignment * per_token)

