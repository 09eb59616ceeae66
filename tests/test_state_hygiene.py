"""State hygiene: what the cache carries between calls is exactly what one call would have computed.

The bugs every serving engine for this architecture has had: a prefill cut into pieces (of any
length, not multiples of the delta rule's chunk size, one token at a time) that does not continue
like one prefill; padding that leaks into the short convolution's window or the delta-rule state;
a recurrent state that silently drops to the activation dtype. Property tests (hypothesis) over
segment lengths and padded batches, each example a few forward passes of the tiny model in float32.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from qwen3next.config import Qwen3NextConfig
from qwen3next.model import Qwen3NextForCausalLM
from qwen3next.reference import max_abs_diff

CFG = Qwen3NextConfig.tiny(num_hidden_layers=4)  # 3 Gated DeltaNet layers, 1 gated attention
TOL = 2e-5  # float32 throughout: only summation order differs between the paths
FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Qwen3NextForCausalLM(CFG).eval()


def _ids(n: int, rows: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (rows, n), generator=torch.Generator().manual_seed(seed))


def _deltanet_states(cache):
    return [layer for layer, kind in zip(cache, CFG.layer_types, strict=True) if kind == "linear_attention"]


@FAST
@given(st.lists(st.integers(1, 70), min_size=1, max_size=5), st.integers(1, 3))
@example([1] * 9, 2)  # one token at a time
@example([63, 2, 64], 1)  # across the delta rule's 64-token chunks
@torch.no_grad()
def test_prefill_in_segments_then_decode_equals_one_prefill(model, segments, steps):
    n = sum(segments)
    ids = _ids(n + steps, seed=n)
    whole = model.new_cache(1)
    expected = [model(ids[:, :n], cache=whole).logits[:, -1]]
    pieces, at = model.new_cache(1), 0
    for length in segments:
        got = model(ids[:, at:at + length], cache=pieces).logits
        at += length
    got = [got[:, -1]]
    for t in range(n, n + steps):
        expected.append(model(ids[:, t:t + 1], cache=whole).logits[:, -1])
        got.append(model(ids[:, t:t + 1], cache=pieces).logits[:, -1])
    assert pieces.seq_len == whole.seq_len == n + steps
    assert max_abs_diff(torch.stack(got), torch.stack(expected)) < TOL
    for a, b in zip(_deltanet_states(pieces), _deltanet_states(whole), strict=True):
        assert max_abs_diff(a.recurrent_state, b.recurrent_state) < TOL
        assert max_abs_diff(a.conv_state, b.conv_state) < TOL


def _left_padded(lengths: list[int], pad_id: int, seed: int, extra: int = 0):
    """Rows of ``lengths`` random tokens, left-padded with ``pad_id`` to ``max(lengths) + extra``."""
    rows = [_ids(n, seed=seed + i)[0] for i, n in enumerate(lengths)]
    T = max(lengths) + extra
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):], mask[i, T - len(r):] = r, 1
    return ids, mask, rows


@FAST
@given(st.lists(st.integers(1, 12), min_size=1, max_size=3), st.integers(0, CFG.vocab_size - 1),
       st.integers(0, 4))
@example([5], 7, 3)  # batch size 1, with padding
@torch.no_grad()
def test_padded_batch_one_token_at_a_time_equals_each_row_alone(model, lengths, pad_id, extra):
    ids, mask, rows = _left_padded(lengths, pad_id, 5, extra)
    B, T = ids.shape
    cache = model.new_cache(B)
    logits = [model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache).logits[:, 0] for t in range(T)]
    logits = torch.stack(logits, 1)  # (B, T, V)
    for i, r in enumerate(rows):
        alone = model(r[None]).logits[0]
        assert max_abs_diff(logits[i, T - len(r):], alone) < TOL, (lengths, i)


@FAST
@given(st.lists(st.integers(1, 9), min_size=2, max_size=3), st.integers(0, CFG.vocab_size - 1),
       st.integers(0, CFG.vocab_size - 1))
@torch.no_grad()
def test_left_padding_never_reaches_the_states(model, lengths, pad_a, pad_b):
    """A padded row's conv window and delta-rule state equal those of the row alone, whatever the pad ids."""
    states = []
    for pad_id in (pad_a, pad_b):
        ids, mask, rows = _left_padded(lengths, pad_id, 7)
        cache = model.new_cache(len(rows))
        model(ids, attention_mask=mask, cache=cache)
        states.append(cache)
    for i, r in enumerate(rows):
        alone = model.new_cache(1)
        model(r[None], cache=alone)
        for padded_a, padded_b, single in zip(_deltanet_states(states[0]), _deltanet_states(states[1]),
                                             _deltanet_states(alone), strict=True):
            K = single.conv_state.shape[-1]
            real = min(len(r), K)  # the window slots that hold real tokens; the others must be zero
            assert max_abs_diff(padded_a.recurrent_state[i], single.recurrent_state[0]) < TOL
            assert max_abs_diff(padded_a.recurrent_state[i], padded_b.recurrent_state[i]) < TOL
            assert max_abs_diff(padded_a.conv_state[i, :, K - real:], single.conv_state[0, :, K - real:]) < TOL
            assert max_abs_diff(padded_a.conv_state[i], padded_b.conv_state[i]) < TOL
            assert not padded_a.conv_state[i, :, :K - real].any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@torch.no_grad()
def test_recurrent_state_stays_float32(model, dtype):
    m = Qwen3NextForCausalLM(CFG).eval()
    m.load_state_dict(model.state_dict())
    m = m.to(dtype)
    ids, mask, _ = _left_padded([7, 4], 3, 9)
    cache = m.new_cache(2)
    m(ids, attention_mask=mask, cache=cache)
    for _ in range(3):
        m(ids[:, -1:], cache=cache)
        for layer in _deltanet_states(cache):
            assert layer.recurrent_state.dtype == torch.float32
            assert layer.conv_state.dtype == dtype
