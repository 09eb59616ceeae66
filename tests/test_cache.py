"""The hybrid cache: per-layer contents, measured memory, padding mask, batch select/reorder."""

from __future__ import annotations

import pytest
import torch

from qwen3next.accounting import cache_bytes
from qwen3next.attention import KVCache
from qwen3next.cache import HybridCache
from qwen3next.config import Qwen3NextConfig
from qwen3next.deltanet import DeltaNetState
from qwen3next.model import Qwen3NextForCausalLM
from qwen3next.reference import max_abs_diff

pytestmark = pytest.mark.usefixtures("one_thread")




def test_one_cache_per_layer_by_type(model):
    cache = model.new_cache(2)
    cfg = model.config
    assert len(cache.layers) == cfg.num_hidden_layers
    for kind, layer in zip(cfg.layer_types, cache, strict=True):
        assert isinstance(layer, KVCache if kind == "full_attention" else DeltaNetState)
    assert cache.seq_len == 0 and cache.batch_size == 2 and cache.attention_mask is None
    assert cache.memory_report()["total"] == 0


@torch.no_grad()
def test_memory_is_measured_and_matches_accounting(model):
    """Attention memory grows with the context, DeltaNet memory does not."""
    cfg = model.config
    cache = model.new_cache(3)
    ids = torch.randint(0, cfg.vocab_size, (3, 40))
    model(ids[:, :30], cache=cache)
    at30 = cache.memory_report()
    model(ids[:, 30:], cache=cache)
    at40 = cache.memory_report()
    # the tiny model runs in float32: 4 bytes for K/V and the conv window, 4 for the recurrent state
    for T, report in ((30, at30), (40, at40)):
        expected = cache_bytes(cfg, T, batch_size=3, activation_bytes=4, state_bytes=4)
        assert report["full_attention"] == expected.attention_kv
        assert report["linear_attention"] == expected.deltanet
        assert report["total"] == expected.total
    assert at40["linear_attention"] == at30["linear_attention"]
    assert at40["full_attention"] * 30 == at30["full_attention"] * 40
    assert sum(cache.layer_nbytes()) == at40["total"]


@torch.no_grad()
def test_bfloat16_cache_keeps_the_state_in_float32():
    cfg = Qwen3NextConfig.tiny()
    torch.manual_seed(1)
    m = Qwen3NextForCausalLM(cfg).to(torch.bfloat16).eval()
    cache = m.new_cache(2)
    m(torch.randint(0, cfg.vocab_size, (2, 24)), cache=cache)
    expected = cache_bytes(cfg, 24, batch_size=2, activation_bytes=2, state_bytes=4)
    report = cache.memory_report()
    assert report["full_attention"] == expected.attention_kv
    assert report["linear_attention"] == expected.deltanet
    assert cache[0].recurrent_state.dtype == torch.float32 and cache[3].key.dtype == torch.bfloat16


@torch.no_grad()
def test_keep_and_reorder_rows(model):
    """Rows [2, 0] of a batch-3 cache continue exactly like a batch-2 run of those rows."""
    V = model.config.vocab_size
    ids = torch.randint(0, V, (3, 20))
    nxt = torch.randint(0, V, (2, 3))
    cache = model.new_cache(3)
    model(ids, cache=cache)
    cache.reorder(torch.tensor([2, 0]))
    assert cache.batch_size == 2 and cache.seq_len == 20
    got = model(nxt, cache=cache).logits
    fresh = model.new_cache(2)
    model(ids[[2, 0]], cache=fresh)
    want = model(nxt, cache=fresh).logits
    assert max_abs_diff(got, want) < 1e-5
    # keeping rows by a boolean mask, then a reorder with repeats (beam search)
    cache.keep_rows(torch.tensor([False, True]))
    assert cache.batch_size == 1
    cache.reorder(torch.tensor([0, 0]))
    assert cache.batch_size == 2
    tok = torch.tensor([[7], [7]])
    both = model(tok, cache=cache).logits  # (2, 1, V): two copies of original row 0
    alone = model.new_cache(1)
    model(ids[[0]], cache=alone)
    model(nxt[[1]], cache=alone)
    want = model(tok[:1], cache=alone).logits
    assert max_abs_diff(both[0], want[0]) < 1e-5 and max_abs_diff(both[1], want[0]) < 1e-5


@torch.no_grad()
def test_padding_mask_is_kept_and_selected(model):
    V = model.config.vocab_size
    ids = torch.randint(0, V, (2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    cache = model.new_cache(2)
    model(ids, attention_mask=mask, cache=cache)
    assert torch.equal(cache.attention_mask, mask)
    model(ids[:, :1], cache=cache)  # decode: a real token in every row
    assert torch.equal(cache.attention_mask[:, -1], torch.tensor([1, 1]))
    assert cache.attention_mask.shape == (2, 7) and cache.seq_len == 7
    cache.keep_rows([0])
    assert torch.equal(cache.attention_mask, torch.tensor([[0, 0, 1, 1, 1, 1, 1]]))
    # an all-ones mask never turns the mask on
    clean = model.new_cache(2)
    model(ids, attention_mask=torch.ones(2, 6), cache=clean)
    assert clean.attention_mask is None and clean.memory_report()["mask"] == 0


def test_extend_mask_shapes_and_errors():
    cache = HybridCache([], [], batch_size=2)
    assert cache.extend_mask(None, 3) is None and cache.seq_len == 3
    full = cache.extend_mask(torch.tensor([[1, 1], [0, 1]]), 2)
    assert torch.equal(full, torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 1]]))
    # the transformers form: a mask over every token so far
    full = cache.extend_mask(torch.ones(2, 6, dtype=torch.long), 1)
    assert full.shape == (2, 6)
    with pytest.raises(ValueError, match="attention_mask"):
        cache.extend_mask(torch.ones(2, 4), 1)
    with pytest.raises(ValueError, match="attention_mask"):
        cache.extend_mask(torch.ones(3, 1), 1)


def test_bad_arguments_raise(model):
    with pytest.raises(ValueError, match="batch_size"):
        model.new_cache(0)
    cache = model.new_cache(2)
    with pytest.raises(ValueError, match="index"):
        cache.reorder(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="index"):
        cache.keep_rows(torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match="index: expected a 1-D LongTensor"):
        cache.reorder(torch.tensor([True, False]))  # a mask says which rows, not in which order
    with pytest.raises(ValueError, match="rows: expected increasing row numbers"):
        cache.keep_rows([1, 0])  # that is a reorder
    with pytest.raises(ValueError, match="layers"):
        HybridCache([KVCache()], ["full_attention", "linear_attention"], batch_size=1)
