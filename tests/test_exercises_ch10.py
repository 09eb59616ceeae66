"""The exercise checks of chapter 10: a right answer passes, a wrong one fails, the placeholder gets a hint."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qwen3next.exercises import UNANSWERED
from qwen3next.exercises import ch10_training as ex
from qwen3next.stories import entropy_floor, generate_stories


def micro_balance(logits, top_k, micro_batches):
    N, E = logits.shape
    p = logits.float().softmax(-1).view(micro_batches, N // micro_batches, E)
    chosen = torch.zeros_like(p).scatter_(-1, p.topk(top_k, -1).indices, 1.0)
    return (E * (chosen.mean(1) * p.mean(1)).sum(-1)).mean()


def test_inverse_softplus():
    assert ex.check_inverse_softplus(lambda dt: dt + torch.log(-torch.expm1(-dt)))
    assert not ex.check_inverse_softplus(lambda dt: torch.log(torch.exp(dt) - 1).float())  # float32 back
    assert not ex.check_inverse_softplus(F.softplus)  # the forward map, not its inverse
    assert not ex.check_inverse_softplus(lambda dt: dt[:3])  # wrong shape
    assert not ex.check_inverse_softplus(lambda dt: 1 / 0)


def test_micro_batch_balance():
    assert ex.check_micro_batch_balance(micro_balance)
    assert not ex.check_micro_batch_balance(lambda lg, k, m: micro_balance(lg, k, 1))  # ignores the groups
    assert not ex.check_micro_batch_balance(lambda lg, k, m: micro_balance(lg, 1, m))  # top 1, not top k
    assert not ex.check_micro_batch_balance(lambda lg, k, m: "two")


def test_numbers():
    floor = entropy_floor(generate_stories(2000, seed=7)).nats_per_char
    assert ex.check_nats_per_token(floor * 2.5) and not ex.check_nats_per_token(floor / 2.5)
    assert ex.check_warmup_fraction(26 / 50) and not ex.check_warmup_fraction(25 / 50)


def test_placeholder_gets_a_reminder(capsys):
    checks = [ex.check_inverse_softplus, ex.check_micro_batch_balance, ex.check_nats_per_token,
              ex.check_warmup_fraction]
    assert not any(check(...) for check in checks)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(checks) and all(ln.startswith("Not yet. Hint: " + UNANSWERED) for ln in lines)
