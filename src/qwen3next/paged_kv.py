"""A paged KV cache: the keys and values of many requests in one pool of fixed-size blocks.

Kwon et al., "Efficient Memory Management for Large Language Model Serving with PagedAttention"
(2023). A request's keys and values are not kept in one growing tensor per request (what
:class:`qwen3next.attention.KVCache` does for a single batch), but in *blocks* of ``block_size`` tokens
taken from a shared pool. A request owns a :class:`BlockTable`: the list of its block ids, in order,
so token ``p`` lives in block ``table[p // block_size]`` at offset ``p % block_size``. Memory is then
allocated a block at a time, freed the moment a request finishes, and a block can be *shared* by
several requests (the same prompt prefix): the pool counts references.

* :class:`BlockPool` holds the tensors, ``(attention layers, blocks, block_size, Hkv, D)`` for K and for
  V, and hands out / takes back block ids (reference counted).
* :class:`BlockTable` is one request's list of blocks and the number of tokens written.
* :class:`PagedKV` lets an unchanged :class:`qwen3next.attention.GatedAttention` read and write the
  pool: it has the two members of the ``KVCache`` protocol the layer uses (``length`` and
  ``update(k, v)``). For a batch of rows with different lengths it returns the rows *left-padded* to
  the longest one, with the padding mask the layer needs.

Mirrors the block pool and block table of vLLM (``vllm/v1/core/block_pool.py``,
``vllm/v1/worker/block_table.py``) at the level of ideas; leaves out the fused paged-attention kernel
(the blocks are gathered into a contiguous tensor before attention) and copy-on-write (only full
blocks are ever shared, and a shared block is never written).
"""

from __future__ import annotations

import torch


class BlockPoolFull(RuntimeError):
    """No free block is left in the pool."""


class BlockPool:
    """Fixed-size blocks of K and V for every attention layer, with a reference-counting allocator.

    ``k[l]`` and ``v[l]`` are ``(num_blocks, block_size, Hkv, D)`` for the ``l``-th attention layer
    (attention layers are numbered among themselves, 0 .. 11 in the release). A free block has
    reference count 0; ``allocate`` hands out the lowest free ids first, so runs are reproducible.
    """

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device=None):
        for name, value in (("num_layers", num_layers), ("num_blocks", num_blocks), ("block_size", block_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, found {value!r}")
        self.block_size = block_size
        self.num_blocks = num_blocks
        shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.ref_count = [0] * num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: pop() gives the lowest id

    @classmethod
    def for_config(cls, config, num_blocks: int, block_size: int, dtype=torch.float32, device=None) -> BlockPool:
        """A pool sized for ``config``'s attention layers."""
        layers = config.layer_types.count("full_attention")
        return cls(max(layers, 1), num_blocks, block_size, config.num_key_value_heads, config.head_dim,
                   dtype=dtype, device=device)

    # ------------------------------------------------------------------------------ allocation
    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        """A free block id, now with reference count 1."""
        if not self._free:
            raise BlockPoolFull(f"BlockPool: all {self.num_blocks} blocks are in use")
        block = self._free.pop()
        self.ref_count[block] = 1
        return block

    def share(self, block: int) -> None:
        """One more owner for ``block`` (a request that reuses a cached prefix)."""
        if self.ref_count[block] < 1:
            raise ValueError(f"block {block}: cannot share a free block")
        self.ref_count[block] += 1

    def release(self, block: int) -> bool:
        """Drop one owner of ``block``; returns True when the block became free."""
        if self.ref_count[block] < 1:
            raise ValueError(f"block {block}: released more often than allocated")
        self.ref_count[block] -= 1
        if self.ref_count[block] == 0:
            self._free.append(block)
            self._free.sort(reverse=True)  # keep handing out the lowest ids first
            return True
        return False

    def nbytes_per_block(self) -> int:
        """Bytes one block takes over all attention layers (K and V)."""
        per = self.k[:, 0].numel() * self.k.element_size()
        return 2 * per

    # --------------------------------------------------------------------------- reading, writing
    def slots(self, blocks: list[int], start: int, end: int) -> torch.Tensor:
        """Flat slot numbers ``block * block_size + offset`` of token positions ``start .. end - 1``."""
        pos = torch.arange(start, end)
        table = torch.tensor(blocks, dtype=torch.long)
        return table[pos // self.block_size] * self.block_size + pos % self.block_size  # (end - start,)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store ``k, v (n, Hkv, D)`` at flat ``slots (n,)`` of attention layer ``layer``."""
        self.k[layer].view(-1, *self.k.shape[3:]).index_copy_(0, slots.to(self.k.device), k.to(self.k.dtype))
        self.v[layer].view(-1, *self.v.shape[3:]).index_copy_(0, slots.to(self.v.device), v.to(self.v.dtype))

    def read(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V at flat ``slots`` (any shape ``S``) of layer ``layer``: two ``(*S, Hkv, D)`` tensors."""
        flat = slots.reshape(-1).to(self.k.device)
        k = self.k[layer].view(-1, *self.k.shape[3:]).index_select(0, flat)
        v = self.v[layer].view(-1, *self.v.shape[3:]).index_select(0, flat)
        return k.view(*slots.shape, *k.shape[1:]), v.view(*slots.shape, *v.shape[1:])


class BlockTable:
    """One request's blocks, in token order, and how many of its tokens are stored in them."""

    def __init__(self, pool: BlockPool):
        self.pool = pool
        self.blocks: list[int] = []
        self.num_tokens = 0  # tokens whose K and V are written

    @property
    def capacity(self) -> int:
        return len(self.blocks) * self.pool.block_size

    def blocks_needed(self, num_tokens: int) -> int:
        """How many more blocks holding ``num_tokens`` tokens in all would take."""
        return max(0, -(-num_tokens // self.pool.block_size) - len(self.blocks))

    def reserve(self, num_tokens: int) -> None:
        """Allocate blocks until ``num_tokens`` tokens fit."""
        for _ in range(self.blocks_needed(num_tokens)):
            self.blocks.append(self.pool.allocate())

    def adopt(self, blocks: list[int], num_tokens: int) -> None:
        """Start with shared blocks already holding ``num_tokens`` tokens (a prefix-cache hit)."""
        if self.blocks:
            raise ValueError("BlockTable.adopt: only an empty table can start from a cached prefix")
        if num_tokens != len(blocks) * self.pool.block_size:
            raise ValueError(f"adopt: {len(blocks)} full blocks hold {len(blocks) * self.pool.block_size} "
                             f"tokens, not {num_tokens}")
        for b in blocks:
            self.pool.share(b)
        self.blocks = list(blocks)
        self.num_tokens = num_tokens

    def truncate(self, num_tokens: int) -> None:
        """Forget every token from ``num_tokens`` on and release the blocks no longer needed."""
        if not 0 <= num_tokens <= self.num_tokens:
            raise ValueError(f"truncate: expected 0..{self.num_tokens} tokens, found {num_tokens}")
        keep = -(-num_tokens // self.pool.block_size)
        for b in self.blocks[keep:]:
            self.pool.release(b)
        self.blocks = self.blocks[:keep]
        self.num_tokens = num_tokens

    def free(self) -> None:
        self.truncate(0)

    def slots(self, start: int, end: int) -> torch.Tensor:
        if end > self.capacity:
            raise ValueError(f"BlockTable: positions up to {end} need {-(-end // self.pool.block_size)} blocks, "
                             f"the table has {len(self.blocks)}")
        return self.pool.slots(self.blocks, start, end)

    def __repr__(self) -> str:
        return f"BlockTable(blocks={self.blocks}, num_tokens={self.num_tokens})"


class PagedKV:
    """The ``KVCache`` protocol of :class:`qwen3next.attention.GatedAttention`, backed by a block pool.

    ``tables``: the block tables of the batch rows; each row appends the same number ``T`` of new
    tokens (a batch of one-token decode steps, or one request's prefill chunk) after ``past[b]``
    stored tokens (default: the table's count). ``length`` is the
    longest row's past; ``update`` writes the new keys and values into the blocks and returns every
    row's keys and values left-padded to the longest row, ``(B, Hkv, S, D)``. ``mask`` is then the
    ``(B, S)`` padding mask (1 = real token) to pass as the layer's ``attention_mask``, or None when
    every row has the same length.
    """

    def __init__(self, pool: BlockPool, layer: int, tables: list[BlockTable], past: list[int] | None = None):
        self.pool, self.layer, self.tables = pool, layer, tables
        # tokens already stored per row; a step may hold several segments of one request, so the
        # runner says where each starts rather than reading the table's count
        self.past = [t.num_tokens for t in tables] if past is None else list(past)

    @property
    def length(self) -> int:
        return max(self.past)

    @property
    def mask(self) -> torch.Tensor | None:
        if len(set(self.past)) == 1:
            return None
        longest = self.length
        keep = [[0] * (longest - p) + [1] * (p + 1) for p in self.past]  # one new token per row (decode)
        return torch.tensor(keep, dtype=torch.long)

    def update(
        self, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v (B, Hkv, T, D)`` after each row's past; return all rows' K, V ``(B, Hkv, S, D)``."""
        B, _, T, _ = k.shape
        self._check(B, T)
        longest = self.length + T
        index = torch.zeros(B, longest, dtype=torch.long)  # padding: slot 0, masked out
        for b, (table, past) in enumerate(zip(self.tables, self.past, strict=True)):
            new = table.slots(past, past + T)
            self.pool.write(self.layer, new, k[b].transpose(0, 1), v[b].transpose(0, 1))
            index[b, longest - past - T:] = table.slots(0, past + T)  # left-padded
        keys, values = self.pool.read(self.layer, index)  # (B, S, Hkv, D)
        return keys.transpose(1, 2).to(k.dtype), values.transpose(1, 2).to(v.dtype)

    def _check(self, B: int, T: int) -> None:
        if B != len(self.tables):
            raise ValueError(f"PagedKV: {len(self.tables)} block tables, but k has {B} rows")
        if T > 1 and B > 1:
            raise ValueError("PagedKV: a batch of several rows appends one token per row (decode steps)")
