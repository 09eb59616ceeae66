"""Prefix caching for the hybrid: hits end at a block boundary with a state snapshot, and are exact.

A request that reuses cached blocks and restores the DeltaNet snapshot must produce what it produces
cold. A snapshot that is empty, or one block stale, must be caught by that comparison.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen3next import packed_step
from qwen3next.config import Qwen3NextConfig
from qwen3next.engine import Engine, Request, compare_with_alone
from qwen3next.paged_kv import BlockPool
from qwen3next.prefix_cache import Hit, PrefixCache, block_keys, deltanet_state_bytes, vllm_attention_block_size
from qwen3next.state_pool import StatePool

TOL = 1e-5
pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_block_key_covers_everything_before_the_block():
    a = block_keys([1, 2, 3, 4, 5, 6], 3, 2)
    b = block_keys([9, 2, 3, 4, 5, 6], 3, 2)
    assert a[1] != b[1]  # same second block, different first block
    assert block_keys([1, 2, 3, 4, 5, 6, 7], 3, 2) == a


def _cache(num_blocks=16, snapshots=4, block_size=4):
    cfg = Qwen3NextConfig.tiny()
    pool = BlockPool.for_config(cfg, num_blocks, block_size)
    return PrefixCache(pool, StatePool.for_config(cfg, snapshots), mode="all"), pool


def test_a_hit_ends_at_the_deepest_snapshot_and_leaves_a_token_to_compute():
    cache, pool = _cache()
    tokens = list(range(100, 116))  # four blocks of 4
    blocks = [pool.allocate() for _ in range(4)]
    cache.insert(tokens, blocks, 16, snapshots={4: cache.new_snapshot_slot(), 12: cache.new_snapshot_slot()})
    assert cache.lookup(tokens + [7]).num_tokens == 12  # block 4 has no snapshot
    assert cache.lookup(tokens[:13]).num_tokens == 12
    assert cache.lookup(tokens[:12]).num_tokens == 4  # 12 tokens: the last one must be computed
    assert cache.lookup(tokens[:5] + [0] * 10).num_tokens == 4  # the chain breaks in block 2
    hit = cache.lookup(tokens[:14])
    assert hit.blocks == blocks[:3] and hit.snapshot is not None
    assert cache.hit_rate == (12 + 12 + 4 + 4 + 12) / (17 + 13 + 12 + 15 + 14)


def test_eviction_takes_idle_blocks_least_recently_used_first():
    cache, pool = _cache(num_blocks=4)
    old, new = [1, 2, 3, 4], [5, 6, 7, 8]
    b_old, b_new = pool.allocate(), pool.allocate()
    cache.insert(old, [b_old], 4)
    cache.insert(new, [b_new], 4)
    pool.release(b_old)  # the requests finished: only the cache holds their blocks
    pool.release(b_new)
    pool.allocate(), pool.allocate()  # the pool is now full
    assert cache.evictable() == 2
    cache.make_room(1)
    assert pool.num_free == 1 and cache.lookup(old + [0]).num_tokens == 0 and len(cache.entries) == 1


def test_vllm_block_size_rule_for_the_released_model():
    """Per rank: K+V of one token in one attention layer is 2 * max(1, 2 / tp) * 256 * 2 bytes; one
    DeltaNet layer's state is 8192 / tp * 3 conv values (2 bytes) + 32 / tp * 128 * 128 values."""
    cfg = Qwen3NextConfig.full()
    assert deltanet_state_bytes(cfg) == 8192 * 3 * 2 + 32 * 128 * 128 * 2
    assert vllm_attention_block_size(cfg) == 544  # bf16 state: 1,097,728 / 2,048 = 536 -> x16
    assert vllm_attention_block_size(cfg, state_bytes=4) == 1056  # float32 state: 1,048 -> x16
    assert vllm_attention_block_size(cfg, tp=4, state_bytes=4) == 528  # KV heads replicated: 1 per rank
    assert vllm_attention_block_size(cfg, state_bytes=4, prefix_caching=True) == 1088  # x64, the kernel chunk


def _shared_prefix_requests(vocab: int, seed: int, prefix_len: int, tails: list[int], new: int = 3):
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, vocab, (prefix_len,), generator=g).tolist()
    return [Request(prefix + torch.randint(0, vocab, (n,), generator=g).tolist(), new, request_id=i, arrival=3 * i)
            for i, n in enumerate(tails)]


def _run(model, requests, mode, block_size=4, budget=8):
    engine = Engine(model, max_running=2, max_tokens_per_step=budget, block_size=block_size, max_model_len=96,
                    prefix_caching=mode, record_logits=True)
    engine.run(requests)
    return engine


def test_align_mode_hits_only_where_a_step_ended_all_mode_at_every_boundary(model):
    """A 13-token shared prefix, blocks of 4, prompts read 8 tokens a step: "align" keeps the states at
    8 and 16 (step ends), so the next request resumes at 8; "all" keeps every boundary, so at 12."""
    for mode, expected in (("align", 8), ("all", 12)):
        requests = _shared_prefix_requests(model.config.vocab_size, 0, 13, [10, 6])
        _run(model, requests, mode)
        assert [r.cached_tokens for r in requests] == [0, expected]
        result = compare_with_alone(model, requests)
        assert result.identical == 2 and result.max_abs_diff <= TOL


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix_len=st.integers(0, 30), tails=st.lists(st.integers(1, 12), min_size=2, max_size=4),
       block_size=st.sampled_from([2, 4, 8]), mode=st.sampled_from(["align", "all"]), seed=st.integers(0, 999))
def test_prefix_hits_equal_cold_runs(model, prefix_len, tails, block_size, mode, seed):
    requests = _shared_prefix_requests(model.config.vocab_size, seed, prefix_len, tails)
    engine = _run(model, requests, mode, block_size=block_size, budget=2 + block_size * 2)
    result = compare_with_alone(model, requests)
    assert result.identical == len(requests), (result, [r.cached_tokens for r in requests])
    assert result.max_abs_diff <= TOL
    assert all(r.cached_tokens % block_size == 0 and r.cached_tokens < len(r.prompt) for r in requests)
    assert engine.cache.hit_tokens == sum(r.cached_tokens for r in requests)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_hit_continued_in_one_token_pieces_equals_a_cold_run(model, seed):
    """A case the property test found: a 2-token hit, blocks of 2, "all" mode. The second prompt's
    last chunk, 7..9, is split at 8 into two one-token pieces in one step; they must run one after
    the other (the second continues the DeltaNet state the first leaves), not as two decode rows
    that both read the state at 7."""
    requests = _shared_prefix_requests(model.config.vocab_size, seed, 2, [5, 7])
    engine = _run(model, requests, "all", block_size=2, budget=6)
    assert [r.cached_tokens for r in requests] == [0, 2]
    assert (1, "prefill", 2) in [w for r in engine.records for w in r.work]  # the pieces 7..8 and 8..9
    result = compare_with_alone(model, requests)
    assert result.identical == 2 and result.max_abs_diff <= TOL


def test_an_empty_snapshot_is_caught(model, monkeypatch):
    """Snapshots never written (all zeros): the second request resumes from no DeltaNet memory."""
    monkeypatch.setattr(packed_step, "copy_slot", lambda *args, **kwargs: None)
    requests = _shared_prefix_requests(model.config.vocab_size, 1, 16, [5, 5])
    _run(model, requests, "all")
    assert requests[1].cached_tokens == 16
    assert compare_with_alone(model, requests).max_abs_diff > 1e-2


def test_a_stale_snapshot_is_caught(model, monkeypatch):
    """The KV blocks of 16 tokens with the states of 12: the DeltaNet layers miss a block of the prompt."""
    lookup = PrefixCache.lookup

    def stale(self, tokens):
        hit = lookup(self, tokens)
        if hit.num_tokens <= self.block_size:
            return hit
        parent = block_keys(tokens, self.block_size, hit.num_tokens // self.block_size)[-2]
        return Hit(hit.blocks, hit.num_tokens, self.entries[parent].snapshot)

    monkeypatch.setattr(PrefixCache, "lookup", stale)
    requests = _shared_prefix_requests(model.config.vocab_size, 1, 16, [5, 5])
    _run(model, requests, "all")
    assert requests[1].cached_tokens == 16
    assert compare_with_alone(model, requests).max_abs_diff > 1e-2


def test_the_hit_rate_grows_as_blocks_get_smaller(model):
    rates = []
    for block_size in (16, 8, 4):
        requests = _shared_prefix_requests(model.config.vocab_size, 2, 30, [4, 9, 3, 6], new=1)
        engine = _run(model, requests, "all", block_size=block_size, budget=32)
        rates.append(engine.cache.hit_rate)
    assert rates[0] < rates[1] < rates[2]
