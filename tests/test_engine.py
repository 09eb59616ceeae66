"""The serving engine gives every request exactly what it gets alone, whatever else is in the batch.

Property tests draw random workloads (prompt lengths, arrival steps, output lengths, block sizes,
token budgets, how many requests run at once) and compare every request with ``run_alone``: greedy
tokens identical, float32 logits within 1e-5. A deliberately wrong slot index must break that.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen3next.engine import Engine, Request, compare_with_alone, run_alone
from qwen3next.packed_step import PackedRunner, Segment, Sequence
from qwen3next.paged_kv import BlockPool, BlockTable
from qwen3next.state_pool import StatePool

TOL = 1e-5
pytestmark = pytest.mark.usefixtures("one_thread")


def workload(draw_lengths, vocab: int, seed: int) -> list[Request]:
    g = torch.Generator().manual_seed(seed)
    return [Request(torch.randint(0, vocab, (n,), generator=g).tolist(), new, request_id=i, arrival=arrival)
            for i, (n, new, arrival) in enumerate(draw_lengths)]


requests_strategy = st.lists(
    st.tuples(st.integers(1, 40), st.integers(1, 6), st.integers(0, 8)),  # prompt length, new tokens, arrival
    min_size=1, max_size=5,
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=requests_strategy, block_size=st.sampled_from([1, 3, 4, 16]), max_running=st.integers(1, 3),
       extra_budget=st.integers(0, 24), seed=st.integers(0, 2**16))
def test_every_request_equals_running_alone(model, lengths, block_size, max_running, extra_budget, seed):
    requests = workload(lengths, model.config.vocab_size, seed)
    engine = Engine(model, max_running=max_running, max_tokens_per_step=max_running + extra_budget,
                    block_size=block_size, max_model_len=64, record_logits=True)
    engine.run(requests)
    result = compare_with_alone(model, requests)
    assert result.identical == len(requests), result
    assert result.max_abs_diff <= TOL


def test_chunked_prefill_of_a_long_prompt_equals_one_pass(model):
    """A 150-token prompt read 7 tokens a step (22 chunks) continues its DeltaNet states and KV blocks."""
    req = workload([(150, 4, 0)], model.config.vocab_size, seed=3)[0]
    engine = Engine(model, max_running=1, max_tokens_per_step=7, block_size=5, max_model_len=160,
                    record_logits=True)
    engine.run([req])
    prefill_steps = [r for r in engine.records if r.work and r.work[0][1] == "prefill"]
    assert len(prefill_steps) == 22
    result = compare_with_alone(model, [req])
    assert result.identical == 1 and result.max_abs_diff <= TOL


def test_prefill_and_decode_run_in_the_same_step(model):
    requests = workload([(5, 8, 0), (30, 3, 2), (12, 4, 3)], model.config.vocab_size, seed=4)
    engine = Engine(model, max_running=3, max_tokens_per_step=10, block_size=4, record_logits=True)
    engine.run(requests)
    mixed = [r for r in engine.records if {kind for _, kind, _ in r.work} == {"prefill", "decode"}]
    assert mixed, "some step should hold both a prompt chunk and decode tokens"
    assert compare_with_alone(model, requests).identical == 3
    # requests arrive and finish at different steps
    assert len({r.finished_step for r in requests}) > 1
    assert all(r.admitted_step >= r.arrival for r in requests)


def test_a_wrong_slot_index_is_caught(model, monkeypatch):
    """Swap which slot two decoding requests read: each then continues the other's DeltaNet memory."""
    requests = workload([(9, 6, 0), (14, 6, 0)], model.config.vocab_size, seed=5)
    mix = PackedRunner._mix

    def wrong_slots(self, i, layer, segs, h, cos, sin):
        if len(segs) == 2:  # the decode batch: read each row's state from the other row's slot
            segs[0].seq.slot, segs[1].seq.slot = segs[1].seq.slot, segs[0].seq.slot
            try:
                return mix(self, i, layer, segs, h, cos, sin)
            finally:
                segs[0].seq.slot, segs[1].seq.slot = segs[1].seq.slot, segs[0].seq.slot
        return mix(self, i, layer, segs, h, cos, sin)

    monkeypatch.setattr(PackedRunner, "_mix", wrong_slots)
    Engine(model, max_running=2, max_tokens_per_step=32, record_logits=True).run(requests)
    result = compare_with_alone(model, requests)
    assert result.max_abs_diff > 1e-2, "a wrong slot must change the logits"


def test_one_token_pieces_of_one_prompt_in_one_step_run_in_order(model):
    """Segments 0..3, 3..4, 4..5 of one prompt in a single step: the two one-token pieces must not
    form a decode batch (both rows would read the state at 3), so the logits equal one pass."""
    prompt = workload([(5, 1, 0)], model.config.vocab_size, seed=8)[0].prompt
    kv, states = BlockPool.for_config(model.config, 4, 2), StatePool.for_config(model.config, 1)
    table = BlockTable(kv)
    table.reserve(len(prompt))
    seq = Sequence(list(prompt), table, states.allocate())
    pieces = [Segment(seq, 0, 3), Segment(seq, 3, 4), Segment(seq, 4, 5, logits=True)]
    logits = PackedRunner(model, kv, states).step(pieces)[0]
    _, alone = run_alone(model, prompt, 1)
    assert (logits - alone[0]).abs().max() <= TOL


def test_sampling_with_a_seed_equals_running_alone(model):
    requests = workload([(6, 8, 0), (11, 8, 1)], model.config.vocab_size, seed=6)
    for i, r in enumerate(requests):
        r.temperature, r.top_k, r.seed = 0.9, 20, 100 + i
    Engine(model, max_running=2, max_tokens_per_step=16, record_logits=True).run(requests)
    assert compare_with_alone(model, requests).identical == 2


def test_eos_stops_a_request_early(model):
    prompt = workload([(7, 1, 0)], model.config.vocab_size, seed=7)[0].prompt
    tokens, _ = run_alone(model, prompt, 6)
    req = Request(prompt, 6, eos_token_id=tokens[2])
    Engine(model, max_running=1, max_tokens_per_step=8).run([req])
    assert req.output == tokens[:3]


def test_clear_errors(model):
    engine = Engine(model, max_running=2, max_tokens_per_step=8, max_model_len=32)
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.add(Request([], 4))
    with pytest.raises(ValueError, match="exceed max_model_len=32"):
        engine.add(Request([1] * 30, 4))
    with pytest.raises(ValueError, match="token ids must be in 0..511"):
        engine.add(Request([512], 4))
    with pytest.raises(ValueError, match="max_tokens_per_step: expected at least 4"):
        Engine(model, max_running=4, max_tokens_per_step=3)
