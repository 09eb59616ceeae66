"""Tests of tools/vllm_compare.py's arithmetic (no vLLM, no model) and of the summary it committed."""

import json

import pytest

from tools import vllm_compare as vc


def test_new_tokens_stop_after_the_first_end_of_text():
    assert vc.new_tokens([1, 2, 3, 9, 4, 9], 2, eos=9) == [3, 9]
    assert vc.new_tokens([1, 2, 3, 4], 2, eos=9) == [3, 4]


def test_agreement_finds_the_first_divergence():
    assert vc.agreement([1, 2, 3], [1, 2, 3]) == {"identical_prefix": 3, "first_divergence": None,
                                                  "tokens": 3, "equal": True}
    parted = vc.agreement([1, 2, 3, 4], [1, 5, 3, 4])
    assert parted["identical_prefix"] == 1 and parted["first_divergence"] == 1 and not parted["equal"]
    # one output stopped early (end-of-text): not a divergence, but not equal either
    short = vc.agreement([1, 2], [1, 2, 3])
    assert short["first_divergence"] is None and not short["equal"] and short["tokens"] == 3


def test_compare_outputs_counts_prompts_and_tokens():
    row = vc.compare_outputs("a vs b", [[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 7, 6]])
    assert row == {"pair": "a vs b", "prompts_equal": 1, "prompts": 2, "identical_tokens": 4,
                   "tokens": 6, "first_divergences": [None, 1]}
    with pytest.raises(ValueError):  # a prompt missing on one side is an error, not a shorter table
        vc.compare_outputs("x", [[1]], [[1], [2]])


def test_acceptance_per_position_and_tokens_per_step():
    # vLLM drafts k = 3 tokens at each of 10 steps; 8 first drafts accepted, 5 second, 2 third
    equal = {"prompts_equal": 2, "prompts": 2}
    row = vc.speculation_row("vLLM", 3, [8, 5, 2], [10, 10, 10], steps=10, emitted=10 + 15, equal=equal)
    assert row["acceptance_per_pos"] == [0.8, 0.5, 0.2]
    assert row["acceptance"] == pytest.approx(15 / 30)
    assert row["tokens_per_step"] == 2.5  # each step emits its accepted drafts plus the target's token
    assert vc.acceptance_per_position([0, 3], [0, 4]) == [None, 0.75]


def test_counter_delta_subtracts_what_the_engine_had_counted_before():
    before = {"num_drafts": 4, "num_accepted_tokens_per_pos": [3, 1]}
    after = {"num_drafts": 10, "num_accepted_tokens_per_pos": [8, 4], "num_draft_tokens": 12}
    assert vc.counter_delta(after, before) == {"num_drafts": 6, "num_accepted_tokens_per_pos": [5, 3],
                                               "num_draft_tokens": 12}


def test_cache_facts_reads_each_engine_from_the_log():
    log = (f"noise\n{vc.ENGINE_MARK}0\n(Worker) INFO Setting attention block size to 384 tokens to ensure"
           f"\n(Worker) INFO Padding mamba page size by 43.28% to ensure\n{vc.ENGINE_MARK}2\n"
           "(Worker) INFO Setting attention block size to 400 tokens\n")
    assert vc.cache_facts(log) == {
        "k=0": {"attention_block_size": 384, "state_page_padding_pct": 43.28},
        "k=2": {"attention_block_size": 400, "state_page_padding_pct": None}}


def test_the_committed_summary_is_consistent():
    """The chapter shows benchmarks/results/vllm_compare.json: check it holds what the tables need."""
    s = json.loads(vc.SUMMARY.read_text())
    n = s["settings"]["prompts"]
    assert [r["pair"] for r in s["greedy"]] == ["book bf16 vs vLLM bf16", "book fp32 vs vLLM bf16",
                                                "book fp32 vs book bf16"]
    for r in s["greedy"]:
        assert r["prompts"] == n and 0 <= r["prompts_equal"] <= n and r["identical_tokens"] <= r["tokens"]
        assert sum(f is None for f in r["first_divergences"]) >= r["prompts_equal"]
    assert len(s["divergences"]) == sum(f is not None for r in s["greedy"] for f in r["first_divergences"])
    assert {(r["engine"], r["k"]) for r in s["speculation"]} == {
        (e, k) for e in ("vLLM bf16", "book bf16", "book fp32") for k in s["settings"]["ks"]}
    for r in s["speculation"]:
        per = r["acceptance_per_pos"]
        assert len(per) == r["k"] and all(0 <= a <= 1 for a in per)
        if r["engine"].startswith("vLLM"):  # one denominator: a later draft is accepted only after the earlier
            assert per == sorted(per, reverse=True)
