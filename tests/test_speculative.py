"""Speculative decoding with the MTP head: greedy output equal to plain greedy decoding, every cache equal
to plain decoding's after every verification step, and the checks failing on a broken rollback.

Drafts come from the real head (a random one rarely agrees with the trunk) and from an *oracle* that
proposes plain greedy decoding's own next tokens, wrong where a seeded coin says: it reaches every number
of accepted drafts, in every row of a batch. Equality of tokens is exact up to floating-point ties: the
verification pass computes the trunk's function with another summation order (``k + 1`` tokens at once),
so its logits agree with plain decoding's to about 1e-6; where outputs differ, the test asserts that plain
decoding's two best logits were that close at the first difference (a tie, not a bug).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen3next import Qwen3NextConfig, Qwen3NextForCausalLM, generate
from qwen3next.rollback import Checkpoints, PlainDecoding, Replay
from qwen3next.speculative import (
    SpeculativeDecoder,
    SpeculativeStats,
    accept_greedy,
    speculative_generate,
)
from qwen3next.train import init_for_training

pytestmark = pytest.mark.usefixtures("one_thread")
V = 32  # a small vocabulary: the random head agrees with the trunk now and then
TIE = 1e-4  # plain decoding's top-2 logit gap below which a different arg-max is rounding


@pytest.fixture(scope="module")
def spec_model():
    """A random 4-layer hybrid (3 DeltaNet, 1 attention) with an MTP head, slowly forgetting DeltaNet
    heads (the training initialisation, so a wrong state shows in the outputs) and uneven norm gains."""
    torch.manual_seed(0)
    model = Qwen3NextForCausalLM(Qwen3NextConfig.tiny(vocab_size=V, num_hidden_layers=4), mtp=True).eval()
    init_for_training(model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # gains off their start, so that a norm read in the wrong place shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    return model


def padded_batch(lengths, seed=0):
    """Left-padded random prompts of the given lengths: ``(ids, mask or None)``."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(0, V, (len(lengths), T), generator=g)
    mask = (torch.arange(T)[None, :] >= T - torch.tensor(lengths)[:, None]).long()
    return ids, (None if bool(mask.all()) else mask)


class Oracle(SpeculativeDecoder):
    """Drafts plain greedy decoding's next tokens, each one wrong with probability ``error``."""

    def __init__(self, *args, reference, error=0.3, seed=0, **kwargs):
        self.reference, self.error = reference, error
        self.coin = torch.Generator().manual_seed(seed)
        super().__init__(*args, **kwargs)

    def draft(self, k):
        drafts, q = super().draft(k)  # the head still reads its pairs: its cache stays what it would be
        for b in range(drafts.shape[0]):
            for j in range(k):
                at = len(self.emitted[b]) + j
                right = int(self.reference[b, at]) if at < self.reference.shape[1] else 0
                wrong = bool(torch.rand(1, generator=self.coin) < self.error)
                drafts[b, j] = (right + 1) % V if wrong else right
        return drafts, q


@torch.no_grad()
def assert_same_tokens_up_to_ties(model, ids, mask, ours, plain):
    """``ours == plain``, or plain decoding's best two logits within TIE where they first differ."""
    if torch.equal(ours, plain):
        return
    assert ours.shape == plain.shape
    full_mask = torch.ones_like(plain)
    if mask is not None:
        full_mask[:, : mask.shape[1]] = mask
    for b in range(ids.shape[0]):
        differ = (ours[b] != plain[b]).nonzero()
        if len(differ):
            at = int(differ[0])
            logits = model(plain[b:b + 1, :at], attention_mask=full_mask[b:b + 1, :at]).logits[0, -1]
            top2 = logits.topk(2).values
            assert float(top2[0] - top2[1]) < TIE, f"row {b} differs at {at} where the trunk was sure"


def run_checked(model, ids, mask, max_new, k, rollback, reference, error, seed=0, eos=None, tol=1e-5):
    """Decode with the oracle, comparing every cache with plain decoding's after each step."""
    decoder = Oracle(model, ids, max_new, num_draft_tokens=k, rollback=rollback, attention_mask=mask,
                     eos_token_id=eos, reference=reference, error=error, seed=seed)
    plain = PlainDecoding(model, ids, mask)
    worst = dict.fromkeys(("kv", "conv", "recurrent", "mtp_kv", "tokens"), 0.0)
    decoder.seen = set()  # the numbers of accepted drafts that occurred, over rows and steps
    while not decoder.done:
        decoder.seen |= set(decoder.step()[decoder.active].tolist())
        for name, d in plain.differences(decoder).items():
            worst[name] = max(worst[name], d)
    assert worst["tokens"] == 0, worst
    assert max(worst.values()) < tol, worst
    return decoder


# ----------------------------------------------------------------------------- greedy exactness
@pytest.mark.parametrize("rollback", ["replay", "checkpoints"])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_greedy_with_the_head_equals_plain_greedy(spec_model, k, rollback):
    ids, mask = padded_batch([9, 4, 1], seed=k)
    plain = generate(spec_model, ids, 14, attention_mask=mask)
    ours, stats = speculative_generate(spec_model, ids, 14, num_draft_tokens=k, rollback=rollback,
                                       attention_mask=mask)
    assert_same_tokens_up_to_ties(spec_model, ids, mask, ours, plain)
    assert stats.drafted > 0 and 0.0 <= stats.acceptance_rate <= 1.0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=3), k=st.integers(1, 4),
       max_new=st.integers(1, 12), error=st.sampled_from([0.0, 0.2, 0.5, 1.0]),
       rollback=st.sampled_from(["replay", "checkpoints"]), eos_from=st.none() | st.integers(0, 11),
       seed=st.integers(0, 2**16))
def test_greedy_equals_plain_for_any_acceptance_pattern(spec_model, lengths, k, max_new, error, rollback,
                                                        eos_from, seed):
    ids, mask = padded_batch(lengths, seed)
    reference = generate(spec_model, ids, max_new, attention_mask=mask)[:, ids.shape[1]:]
    # an end token taken from the plain output, so it falls inside a draft
    eos = None if eos_from is None else int(reference[0, min(eos_from, reference.shape[1] - 1)])
    plain = generate(spec_model, ids, max_new, attention_mask=mask, eos_token_id=eos)
    decoder = Oracle(spec_model, ids, max_new, num_draft_tokens=k, rollback=rollback, attention_mask=mask,
                     eos_token_id=eos, reference=reference, error=error, seed=seed)
    with torch.no_grad():
        while not decoder.done:
            decoder.step()
    assert_same_tokens_up_to_ties(spec_model, ids, mask, decoder.output(ids), plain)
    if error == 0.0 and max_new > k + 1 and eos is None:
        assert decoder.stats.accepted_at[k - 1] > 0  # a perfect draft is accepted whole


# ----------------------------------------------------------------------------- cache equality
@pytest.mark.parametrize("rollback", ["replay", "checkpoints"])
def test_every_cache_equals_plain_decoding_after_every_step(spec_model, rollback):
    ids, mask = padded_batch([7, 3, 10], seed=5)
    reference = generate(spec_model, ids, 16, attention_mask=mask)[:, ids.shape[1]:]
    decoder = run_checked(spec_model, ids, mask, 16, 3, rollback, reference, error=0.35, seed=1)
    assert decoder.seen == {0, 1, 2, 3}  # every outcome, rows of one step keeping different counts
    assert torch.equal(decoder.output(ids)[:, ids.shape[1]:], reference)


def test_single_row_caches_have_no_holes(spec_model):
    ids, _ = padded_batch([6], seed=3)
    reference = generate(spec_model, ids, 12)[:, 6:]
    decoder = run_checked(spec_model, ids, None, 12, 2, "checkpoints", reference, error=0.3, seed=2)
    assert decoder.cache.attention_mask is None  # one row: the caches are cut, never masked
    assert decoder.cache.seq_len == 6 + 12 - 1  # every emitted token but the pending one


# ------------------------------------------------------------------------ broken rollbacks fail
class OneTooMany(Checkpoints):
    """A deliberately broken rollback: keeps the state one position past the last accepted token."""

    def after_verify(self, model, cache, keep):
        steps = next(s for s in cache if hasattr(s, "conv_steps") and s.conv_steps is not None).conv_steps
        super().after_verify(model, cache, (keep + 1).clamp(max=steps.shape[1]))


class NoRestore(Replay):
    """A deliberately broken replay: runs the accepted tokens again on top of the verified state."""

    def after_verify(self, model, cache, keep):
        for i, (conv, recurrent) in self._snapshots.items():
            conv.copy_(cache[i].conv_state)
            recurrent.copy_(cache[i].recurrent_state)
        super().after_verify(model, cache, keep)


@pytest.mark.parametrize("broken", [OneTooMany, NoRestore])
def test_the_cache_check_catches_a_broken_rollback(spec_model, broken):
    ids, mask = padded_batch([7, 5], seed=8)
    reference = generate(spec_model, ids, 12, attention_mask=mask)[:, ids.shape[1]:]
    run_checked(spec_model, ids, mask, 12, 3, broken.__base__.name, reference, error=0.35, seed=4)  # sound
    with pytest.raises(AssertionError, match="conv"):
        run_checked(spec_model, ids, mask, 12, 3, broken(), reference, error=0.35, seed=4)


def test_a_broken_rollback_changes_the_tokens(spec_model):
    ids, _ = padded_batch([8, 8, 8, 8], seed=9)
    plain = generate(spec_model, ids, 16)
    ours, _ = speculative_generate(spec_model, ids, 16, num_draft_tokens=3, rollback=OneTooMany())
    assert (ours != plain).any(-1).sum() >= 2  # rows whose text changed


# ------------------------------------------------------------------------------- the pieces
def test_accept_greedy_longest_prefix_and_the_trunks_token():
    drafts = torch.tensor([[1, 2, 3], [1, 2, 3], [4, 2, 3], [1, 2, 0]])
    target = torch.tensor([[1, 2, 3, 7], [1, 5, 3, 7], [0, 2, 3, 7], [1, 2, 3, 6]])
    logits = torch.nn.functional.one_hot(target, 8).float()
    accepted, nxt = accept_greedy(drafts, logits)
    assert accepted.tolist() == [3, 1, 0, 2]
    assert nxt.tolist() == [7, 5, 0, 3]


def test_stats_count_what_was_emitted(spec_model):
    ids, _ = padded_batch([5], seed=11)
    ours, stats = speculative_generate(spec_model, ids, 20, num_draft_tokens=3)
    assert stats.emitted + 1 == 20  # the prefill's token plus every verification's
    assert stats.tokens_per_verify_step == pytest.approx(1 + stats.accepted / stats.row_steps)
    per = stats.accepted_per_position
    assert all(a >= b for a, b in zip(per, per[1:], strict=False))  # draft j needs drafts 1..j-1
    assert stats.acceptance_rate == pytest.approx(stats.accepted / stats.drafted)


def test_no_new_tokens_and_one_new_token(spec_model):
    ids, _ = padded_batch([4], seed=1)
    same, stats = speculative_generate(spec_model, ids, 0)
    assert torch.equal(same, ids) and stats.verify_steps == 0
    one, stats = speculative_generate(spec_model, ids, 1)
    assert torch.equal(one, generate(spec_model, ids, 1)) and stats.verify_steps == 0


def test_bad_arguments_are_named(spec_model):
    ids, _ = padded_batch([4])
    with pytest.raises(ValueError, match="rollback"):
        speculative_generate(spec_model, ids, 4, rollback="truncate")
    with pytest.raises(ValueError, match="num_draft_tokens"):
        speculative_generate(spec_model, ids, 4, num_draft_tokens=0)
    with pytest.raises(ValueError, match="no MTP head"):
        speculative_generate(Qwen3NextForCausalLM(Qwen3NextConfig.tiny(vocab_size=V)), ids, 4)
    assert isinstance(SpeculativeStats(2).acceptance_rate, float)


def test_weight_bytes_of_the_release():
    from qwen3next.accounting import moe_params, parameter_counts
    from qwen3next.hub_layout import mtp_layout
    from qwen3next.speculative import head_bytes_read, weight_bytes_read

    cfg = Qwen3NextConfig.full()
    counts, moe = parameter_counts(cfg), moe_params(cfg)
    one = weight_bytes_read(cfg, 1)
    assert one == 2 * (counts.active_with_lm_head + cfg.hidden_size)  # a token's active weights, bf16
    every_expert = 2 * (counts.total - counts.embedding + 10**6 * cfg.hidden_size)
    assert weight_bytes_read(cfg, 10**6) == pytest.approx(every_expert, rel=1e-9)  # all experts hit
    assert 1.7 < weight_bytes_read(cfg, 3) / one < 1.9  # verifying 2 drafts reads ~1.8x the weights
    # the head: its checkpoint tensors with only top-k of the routed experts, plus the trunk's lm_head
    head = sum(math.prod(e.shape) for e in mtp_layout(cfg).values())
    inactive = moe.routed - moe.active_routed
    assert head_bytes_read(cfg) == 2 * (head - inactive + cfg.vocab_size * cfg.hidden_size + cfg.hidden_size)


# ---------------------------------------------------------------------------------- controls
@pytest.mark.parametrize("control", ["PreNormHidden", "SwappedConcat", "UnshiftedTokens"])
def test_a_wrong_wiring_changes_the_drafts_not_the_output(spec_model, control):
    from qwen3next import speculative

    ids, mask = padded_batch([6, 9], seed=12)
    plain = generate(spec_model, ids, 10, attention_mask=mask)

    def drafts(cls):
        d = cls(spec_model, ids, 10, num_draft_tokens=2, attention_mask=mask)
        seen = []
        with torch.no_grad():
            while not d.done:
                d.step()
                seen.append(d.last_round.read[:, 1:])
        return d.output(ids), torch.cat(seen, 1)

    right_out, right = drafts(SpeculativeDecoder)
    wrong_out, wrong = drafts(getattr(speculative, control))
    assert_same_tokens_up_to_ties(spec_model, ids, mask, wrong_out, plain)
    assert right.shape != wrong.shape or not torch.equal(right, wrong)  # the head saw other inputs
