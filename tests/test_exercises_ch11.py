"""The checkers of chapter 11's exercises: a right answer passes, a wrong one fails, ``...`` gets a reminder."""

from __future__ import annotations

import torch

from qwen3next.exercises import ch11_speculative_decoding as ex


def right_accept(drafts, target_logits):
    target = target_logits.argmax(-1)
    accepted = (drafts == target[:, : drafts.shape[1]]).long().cumprod(-1).sum(-1)
    return accepted, target[torch.arange(len(drafts)), accepted]


def counts_every_match(drafts, target_logits):  # wrong: counts matches after a mismatch too
    target = target_logits.argmax(-1)
    accepted = (drafts == target[:, : drafts.shape[1]]).long().sum(-1)
    return accepted, target[torch.arange(len(drafts)), accepted]


def test_accept_greedy(capsys):
    assert ex.check_accept_greedy(right_accept)
    assert "All 5 inputs" in capsys.readouterr().out
    assert not ex.check_accept_greedy(counts_every_match)
    assert "run of matches" in capsys.readouterr().out
    assert not ex.check_accept_greedy(...)
    assert "replace `...`" in capsys.readouterr().out


def test_residual(capsys):
    assert ex.check_residual(lambda p, q: (p - q).clamp_min(0) / (p - q).clamp_min(0).sum(-1, keepdim=True))
    assert not ex.check_residual(lambda p, q: (p - q).clamp_min(0))  # not normalised
    assert not ex.check_residual(lambda p, q: 1 / 0)
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_numbers(capsys):
    assert ex.check_expected_tokens(1 + 0.7 + 0.49 + 0.343)
    assert not ex.check_expected_tokens(3 * 0.7 + 1)
    assert ex.check_checkpoint_bytes(4 * 36 * (8192 * 4 * 2 + 32 * 128 * 128 * 4))
    assert not ex.check_checkpoint_bytes(36 * (8192 * 4 * 2 + 32 * 128 * 128 * 4))
    assert not ex.check_checkpoint_bytes(...)
    assert "replace `...`" in capsys.readouterr().out
