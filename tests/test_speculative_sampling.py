"""Speculative *sampling* has plain sampling's output distribution: a chi-square test on a tiny vocabulary.

One prompt, repeated in a batch of N rows (each row an independent run), continued by sampled tokens with
2 drafts per verification; the first 3 tokens are tested (the first verification decides the second and
the third). The rows go through acceptances at both draft positions and rejections. The exact
distribution of the 3 tokens under plain sampling (with the same temperature and top-k) is computed by
enumerating all V^3 continuations through the trunk. Pearson's chi-square statistic over those cells
(cells expected below 5 merged) is compared with its distribution: the test fails when the p-value is
below ALPHA, so a correct sampler fails it with probability ALPHA (1e-4). Two broken samplers (drafts
always accepted; after a rejection, drawing from p instead of the residual) must fail it.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from qwen3next import Qwen3NextConfig, Qwen3NextForCausalLM, speculative
from qwen3next.generate import filter_logits
from qwen3next.speculative import SpeculativeDecoder, accept_sampling, residual_distribution
from qwen3next.train import init_for_training

pytestmark = pytest.mark.usefixtures("one_thread")
V, NEW, N, ALPHA = 8, 3, 6000, 1e-4  # tested: the first NEW of NEW + 1 tokens
SETTINGS = dict(temperature=0.8, top_k=6)
PROMPT = torch.tensor([[3, 1, 4]])


@pytest.fixture(scope="module")
def small():
    return small_model()


@pytest.fixture(scope="module")
def exact(small):
    return exact_distribution(small)


def small_model():
    torch.manual_seed(1)
    model = Qwen3NextForCausalLM(Qwen3NextConfig.tiny(vocab_size=V, num_hidden_layers=4), mtp=True).eval()
    init_for_training(model, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # larger logits: peaked distributions, so trunk and head disagree often
        model.lm_head.weight.mul_(7.0)
    return model


def exact_distribution(small):
    """P(x1, x2, x3 | prompt) under plain sampling, for all V^3 continuations: a dict tuple -> probability."""
    seqs = torch.tensor(list(itertools.product(range(V), repeat=NEW)))  # (V^3, 3)
    ids = torch.cat([PROMPT.expand(len(seqs), -1), seqs], dim=1)
    with torch.no_grad():
        logits = small(ids[:, :-1]).logits[:, PROMPT.shape[1] - 1:]  # (V^3, 3, V): the three choices
    probs = filter_logits(logits.flatten(0, 1), **SETTINGS).softmax(-1).view(len(seqs), NEW, V)
    chosen = probs.gather(-1, seqs[..., None]).squeeze(-1).double().prod(-1)  # (V^3,)
    assert abs(chosen.sum().item() - 1) < 1e-5
    return dict(zip(map(tuple, seqs.tolist()), chosen.tolist(), strict=True))


def chi_square_p_value(samples: torch.Tensor, exact: dict) -> float:
    """Pearson's test of ``samples (N, 3)`` against ``exact``; cells expected below 5 merged into one."""
    counts: dict = {}
    for row in map(tuple, samples.tolist()):
        counts[row] = counts.get(row, 0) + 1
    n = len(samples)
    big = [c for c, p in exact.items() if n * p >= 5]
    observed = [counts.get(c, 0) for c in big]
    expected = [n * exact[c] for c in big]
    rest = n - sum(expected)
    if rest > 0:
        observed.append(n - sum(observed))
        expected.append(rest)
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    df = len(expected) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def sample(model, decoder_class=SpeculativeDecoder, rollback="checkpoints", seed=0):
    # NEW + 1 tokens: the first verification then drafts 2 tokens, and its outcome decides tokens 2 and 3
    decoder = decoder_class(model, PROMPT.expand(N, -1).contiguous(), NEW + 1, num_draft_tokens=2, seed=seed,
                            rollback=rollback, **SETTINGS)
    with torch.no_grad():
        while not decoder.done:
            decoder.step()
    return torch.tensor(decoder.emitted)[:, :NEW], decoder.stats


@pytest.mark.slow
@pytest.mark.parametrize("rollback", ["replay", "checkpoints"])
def test_speculative_sampling_has_the_plain_distribution(small, exact, rollback):
    samples, stats = sample(small, rollback=rollback, seed=7)
    assert 0.2 < stats.acceptance_rate < 0.9  # both branches of the rule are exercised
    assert chi_square_p_value(samples, exact) > ALPHA


class AlwaysAccept(SpeculativeDecoder):
    """Broken: every draft is kept, so the drafts follow the head's distribution."""

    def _accept(self, drafts, q, logits):
        p = self._filtered(logits[:, -1])
        bonus = torch.multinomial(p, 1, generator=self.generator).squeeze(-1)
        return torch.full_like(bonus, drafts.shape[1]), bonus


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["always accept", "resample from p"])
def test_the_test_rejects_a_broken_sampler(small, exact, broken, monkeypatch):
    if broken == "resample from p":  # after a rejection, draw from p instead of max(p - q, 0)
        monkeypatch.setattr(speculative, "residual_distribution", lambda p, q: p)
    samples, _ = sample(small, AlwaysAccept if broken == "always accept" else SpeculativeDecoder, seed=7)
    assert chi_square_p_value(samples, exact) < 1e-6


def test_the_residual_and_the_acceptance_probability():
    p = torch.tensor([[0.5, 0.3, 0.2, 0.0]])
    q = torch.tensor([[0.2, 0.5, 0.1, 0.2]])
    assert torch.allclose(residual_distribution(p, q), torch.tensor([[0.75, 0.0, 0.25, 0.0]]))
    assert torch.equal(residual_distribution(p, p), p)  # nothing left: p itself
    # draft 1 (q = 0.5, p = 0.3) is accepted with probability 0.6: measured over many rows
    g = torch.Generator().manual_seed(0)
    n = 20000
    accepted, _ = accept_sampling(torch.ones(n, 1, dtype=torch.long), q.expand(n, 1, 4).contiguous(),
                                  torch.cat([p, p])[None].expand(n, 2, 4).contiguous(), g)
    assert abs(accepted.float().mean().item() - 0.6) < 5 * (0.6 * 0.4 / n) ** 0.5
