"""The paged KV cache: block allocation, the block table's mapping, and attention read through it."""

from __future__ import annotations

import pytest
import torch

from qwen3next.attention import GatedAttention, KVCache
from qwen3next.config import Qwen3NextConfig
from qwen3next.paged_kv import BlockPool, BlockPoolFull, BlockTable, PagedKV
from qwen3next.rope import RotaryEmbedding

CFG = Qwen3NextConfig.tiny()


def test_allocation_hands_out_the_lowest_free_blocks_and_counts_owners():
    pool = BlockPool(1, 4, 2, 1, 1)
    assert [pool.allocate() for _ in range(3)] == [0, 1, 2]
    pool.share(1)
    assert pool.release(1) is False and pool.release(1) is True  # two owners, freed by the second
    assert pool.allocate() == 1
    pool.allocate()
    with pytest.raises(BlockPoolFull, match="all 4 blocks are in use"):
        pool.allocate()
    with pytest.raises(ValueError, match="cannot share a free block"):
        BlockPool(1, 2, 2, 1, 1).share(0)


def test_a_token_lives_in_block_table_p_div_size_at_offset_p_mod_size():
    pool = BlockPool(1, 8, 4, 1, 1)
    pool.allocate()  # block 0 taken by someone else
    table = BlockTable(pool)
    table.reserve(10)
    assert table.blocks == [1, 2, 3]
    assert table.slots(0, 10).tolist() == [4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    table.num_tokens = 10
    table.truncate(5)  # keeps ceil(5 / 4) = 2 blocks
    assert table.blocks == [1, 2] and pool.num_free == 5
    with pytest.raises(ValueError, match="the table has 2"):
        table.slots(0, 9)


def test_written_keys_come_back_in_token_order():
    pool = BlockPool(2, 6, 3, 2, 4)
    table = BlockTable(pool)
    table.reserve(7)
    k, v = torch.randn(7, 2, 4), torch.randn(7, 2, 4)
    pool.write(1, table.slots(0, 7), k, v)
    k2, v2 = pool.read(1, table.slots(0, 7))
    assert torch.equal(k2, k) and torch.equal(v2, v)
    assert torch.count_nonzero(pool.k[0]) == 0  # the other layer is untouched


def _attention():
    torch.manual_seed(0)
    return GatedAttention(CFG, 3).eval(), RotaryEmbedding(CFG)


@torch.no_grad()
def test_attention_through_blocks_equals_the_growing_cache():
    """Chunks of one prompt, then a batch of two decode rows of different lengths (left-padded)."""
    attn, rope = _attention()
    pool = BlockPool(1, 32, 4, CFG.num_key_value_heads, CFG.head_dim)
    xa, xb = torch.randn(1, 13, CFG.hidden_size), torch.randn(1, 6, CFG.hidden_size)

    def alone(x):
        cache, outs = KVCache(), []
        for t in range(x.shape[1]):  # one token at a time through the ordinary cache
            cos, sin = rope(torch.tensor([[t]]))
            outs.append(attn(x[:, t:t + 1], cos, sin, cache=cache))
        return torch.cat(outs, 1)

    tables = [BlockTable(pool), BlockTable(pool)]
    for t in tables:
        t.reserve(16)
    paged = {0: [], 1: []}
    for row, x, (a, b) in ((0, xa, (0, 12)), (1, xb, (0, 5))):  # prefill all but the last token
        for start in range(a, b, 5):
            end = min(start + 5, b)
            view = PagedKV(pool, 0, [tables[row]])
            cos, sin = rope(torch.arange(start, end)[None])
            paged[row].append(attn(x[:, start:end], cos, sin, attention_mask=view.mask, cache=view))
            tables[row].num_tokens = end
    view = PagedKV(pool, 0, tables)  # decode: rows at positions 12 and 5 in one batch
    assert view.mask is not None and view.mask.shape == (2, 13)
    cos, sin = rope(torch.tensor([[12], [5]]))
    out = attn(torch.cat([xa[:, 12:], xb[:, 5:]]), cos, sin, attention_mask=view.mask, cache=view)
    ours_a = torch.cat(paged[0] + [out[:1]], 1)
    ours_b = torch.cat(paged[1] + [out[1:]], 1)
    assert (ours_a - alone(xa)).abs().max() < 1e-5
    assert (ours_b - alone(xb)).abs().max() < 1e-5


@torch.no_grad()
def test_a_wrong_block_table_is_caught():
    """A table pointing at another request's block reads that request's keys: the output changes.

    (Swapping two of a request's *own* blocks would change nothing: the keys are stored already
    rotated, and attention does not care in which order it reads them.)"""
    attn, rope = _attention()
    pool = BlockPool(1, 8, 4, CFG.num_key_value_heads, CFG.head_dim)
    mine, other = BlockTable(pool), BlockTable(pool)
    for table in (mine, other):
        table.reserve(9)
        cos, sin = rope(torch.arange(8)[None])
        attn(torch.randn(1, 8, CFG.hidden_size), cos, sin, cache=PagedKV(pool, 0, [table]))
        table.num_tokens = 8
    x, (cos, sin) = torch.randn(1, 1, CFG.hidden_size), rope(torch.tensor([[8]]))
    right = attn(x, cos, sin, cache=PagedKV(pool, 0, [mine]))
    mine.blocks[0] = other.blocks[0]
    wrong = attn(x, cos, sin, cache=PagedKV(pool, 0, [mine]))
    assert (right - wrong).abs().max() > 1e-3
