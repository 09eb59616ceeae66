"""Tests of qwen3next.offload's background reading: prefetching changes what is read when, never the results."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from qwen3next import Qwen3NextConfig, Qwen3NextForCausalLM, generate
from qwen3next.offload import enable_prefetch

CFG = Qwen3NextConfig.tiny(num_experts=16, num_experts_per_tok=4)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny checkpoint in the Hub layout, written from our own model's ``state_dict``."""
    torch.manual_seed(0)
    model = Qwen3NextForCausalLM(CFG)
    d = tmp_path_factory.mktemp("ckpt")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, d / "model.safetensors",
              metadata={"format": "pt"})
    CFG.to_json(d / "config.json")
    return d


@pytest.mark.parametrize("lookahead", [False, True])
def test_prefetching_gives_the_same_tokens_and_logits(checkpoint, lookahead, one_thread):
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    full = Qwen3NextForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    off = Qwen3NextForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, offload_experts=True,
                                               expert_cache_size=6)
    handles = enable_prefetch(off, threads=2, lookahead=lookahead)
    with torch.no_grad():
        assert torch.equal(off(ids).logits, full(ids).logits)
        assert torch.equal(generate(off, ids, 6), generate(full, ids, 6))
    stats = off.expert_store.stats()
    assert stats["prefetched"] > 0 and 0 < stats["prefetch_used"] <= stats["misses"]
    if not lookahead:  # the block's own router picks exactly what it will ask for: nothing is wasted
        assert stats["prefetch_used"] == stats["prefetched"]
    for h in handles:
        h.remove()
    before = off.expert_store.prefetched
    with torch.no_grad():
        off(ids)
    assert off.expert_store.prefetched == before  # hooks removed: reading on demand again
    off.expert_store.close()


def test_forgotten_guesses_never_enter_the_cache(checkpoint):
    off = Qwen3NextForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, offload_experts=True,
                                               expert_cache_size=4)
    store = off.expert_store
    store.start_readers(1)
    store.prefetch(0, [3, 4])
    store.prefetch(1, [5])
    store.forget_prefetches(keep=[1])
    assert set(store._pending) == {(1, 5)} and len(store.cache) == 0
    store.get(1, 5)
    assert store.prefetch_used == 1 and list(store.cache) == [(1, 5)]
    store.close()


def test_prefetch_needs_reader_threads_and_an_offloaded_model(checkpoint):
    off = Qwen3NextForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, offload_experts=True)
    with pytest.raises(RuntimeError, match="start_readers"):
        off.expert_store.prefetch(0, [1])
    with pytest.raises(ValueError, match="threads"):
        off.expert_store.start_readers(0)
    with pytest.raises(ValueError, match="offload_experts=True"):
        enable_prefetch(Qwen3NextForCausalLM(CFG))
    off.expert_store.close()
