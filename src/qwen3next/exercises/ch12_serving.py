"""Checks for the exercises of chapter 12, "Serving many requests, multi-turn chat, and splitting the model"."""

from __future__ import annotations

import textwrap

from ..config import Qwen3NextConfig
from ..paged_kv import BlockPool
from ..parallel_memory import memory_per_rank
from ..prefix_cache import vllm_attention_block_size
from . import UNANSWERED, check_equal, report


def _hint(text: str) -> str:
    """A hint on lines of its own, wrapped to the book's 84 columns."""
    return "\n" + textwrap.fill(text, 84)


SLOT_CASES = [([3], 4, 0, 4), ([5, 1, 7], 4, 0, 12), ([2, 0, 9, 4], 16, 17, 50), ([6, 2], 1, 0, 2), ([8, 3], 5, 4, 7)]


def check_block_slots(fn) -> bool:
    """``fn(blocks, block_size, start, end) -> list[int]``: the flat slot of every token position
    ``start .. end - 1`` of a request whose block table is ``blocks``."""
    if fn is Ellipsis:
        return report(False, UNANSWERED + _hint("Write a function of (blocks, block_size, start, end)."))
    pool = BlockPool(1, 10, 1, 1, 1)
    for blocks, size, start, end in SLOT_CASES:
        pool.block_size = size
        want = pool.slots(blocks, start, end).tolist()
        try:
            got = [int(s) for s in fn(list(blocks), size, start, end)]
        except Exception as err:  # a student's function may fail in any way; say how
            return report(False, _hint(f"your function raised {type(err).__name__}: {err}"))
        if got != want:
            return report(False, _hint(
                f"for blocks {blocks}, block size {size}, positions {start}..{end - 1} the slots are "
                f"{want}, you gave {got}: token p is in block blocks[p // block_size] at offset "
                "p % block_size, and a block's slots start at block * block_size."))
    return report(True, "")


def check_block_size_tp8(answer: int) -> bool:
    """vLLM's attention block size for the released model at TP = 8 with a float32 recurrent state."""
    expected = vllm_attention_block_size(Qwen3NextConfig.full(), tp=8, state_bytes=4)
    return check_equal(answer, expected, _hint(
        "per rank: 1 KV head (replicated past TP = 2), so 2 x 1 x 256 x 2 bytes of K and V per "
        "token; the state is 8192 / 8 x 3 conv values in 2 bytes plus 32 / 8 x 128 x 128 values "
        "in 4 bytes; divide, round up to a multiple of 16."))


def check_kv_per_token_tp8(answer: int) -> bool:
    """Bytes of K and V per token on one rank at TP = 8, over all 12 attention layers (bf16)."""
    expected = memory_per_rank(Qwen3NextConfig.full(), 8).kv_bytes_per_token
    return check_equal(answer, expected, _hint(
        "2 KV heads cannot be split 8 ways: each rank keeps one, so the cache per rank is half of "
        "one process's 24 KiB per token, not an eighth."))
