"""The exercise checks of chapter 05: a right answer passes, a wrong one fails, the placeholder gets a hint."""

from __future__ import annotations

import math

import torch

from qwen3next.exercises import UNANSWERED
from qwen3next.exercises import ch05_delta_rule as ex


def delta_step(S, k, v, beta, alpha):
    S = alpha * S
    return S + beta * torch.outer(k, v - S.T @ k)


def chunk_step(q, k, v, g, beta, h):
    C = len(q)
    gamma = g.cumsum(0)
    Gamma = (gamma[:, None] - gamma[None, :]).masked_fill(~torch.ones(C, C, dtype=torch.bool).tril(), -math.inf).exp()
    T = torch.linalg.inv(torch.eye(C) + (beta[:, None] * (k @ k.T) * Gamma).tril(-1))
    v_new = T @ (beta[:, None] * v) - T @ ((beta * gamma.exp())[:, None] * k) @ h
    o = gamma.exp()[:, None] * (q @ h) + (q @ k.T * Gamma) @ v_new
    return o, gamma[-1].exp() * h + ((gamma[-1] - gamma).exp()[:, None] * k).T @ v_new


def test_delta_step():
    assert ex.check_delta_step(delta_step)
    assert not ex.check_delta_step(lambda S, k, v, beta, alpha: S + beta * torch.outer(k, v - S.T @ k))  # no gate
    assert not ex.check_delta_step(lambda S, k, v, beta, alpha: alpha * S + beta * torch.outer(k, v))  # no delta
    assert not ex.check_delta_step(lambda *a: 1 / 0)


def test_mixing_diagonal_and_half_life():
    assert ex.check_mixing_diagonal(lambda q, k, beta, g: beta * (q * k).sum(-1) / q.shape[-1] ** 0.5)
    assert not ex.check_mixing_diagonal(lambda q, k, beta, g: beta * (q * k).sum(-1))  # forgot the scale
    assert ex.check_half_life(math.log(2) / -ex.HALF_LIFE_G)
    assert not ex.check_half_life(1 / -ex.HALF_LIFE_G) and not ex.check_half_life("soon")


def test_chunk_step():
    assert ex.check_chunk_step(chunk_step)

    def no_incoming_state(q, k, v, g, beta, h):
        return chunk_step(q, k, v, g, beta, torch.zeros_like(h))

    def state_not_decayed(q, k, v, g, beta, h):
        o, h_new = chunk_step(q, k, v, g, beta, h)
        return o, h_new + (1 - g.sum().exp()) * h

    assert not ex.check_chunk_step(no_incoming_state)
    assert not ex.check_chunk_step(state_not_decayed)  # o right, the state carried out wrong
    assert not ex.check_chunk_step(lambda *args: chunk_step(*args)[0])  # only o
    assert not ex.check_chunk_step(lambda *args: 1 / 0)


def test_placeholder_gets_a_reminder(capsys):
    checks = [ex.check_delta_step, ex.check_mixing_diagonal, ex.check_half_life, ex.check_chunk_step]
    assert not any(check(...) for check in checks)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(checks) and all(ln.startswith("Not yet. Hint: " + UNANSWERED) for ln in lines)
