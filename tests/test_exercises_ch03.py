"""The checks of chapter 03's exercises: a right answer passes, a wrong one fails, the placeholder gets a hint."""

from __future__ import annotations

import math

import torch

from qwen3next import Qwen3NextConfig
from qwen3next.exercises import ch03_norms_and_rope as ex
from qwen3next.rope import RotaryEmbedding


def rotary(x, cos, sin):
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    turned = torch.cat((-x2, x1), dim=-1)
    return torch.cat((x_rot * cos.unsqueeze(1) + turned * sin.unsqueeze(1), x_pass), dim=-1)


def rotary_adjacent_pairs(x, cos, sin):
    """A plausible mistake: the GPT-J layout, pairs (0, 1), (2, 3), ..."""
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    turned = torch.stack((-x_rot[..., 1::2], x_rot[..., ::2]), dim=-1).flatten(-2)
    return torch.cat((x_rot * cos.unsqueeze(1) + turned * sin.unsqueeze(1), x_pass), dim=-1)


def test_apply_rotary(capsys):
    assert ex.check_apply_rotary(rotary)
    assert not ex.check_apply_rotary(rotary_adjacent_pairs)
    assert "input 1 of 4: the values differ" in capsys.readouterr().out
    assert not ex.check_apply_rotary(lambda x, cos, sin: x[..., :cos.shape[-1]])  # drops the pass-through dims
    assert "expected a tensor of shape (1, 16, 5, 256)" in capsys.readouterr().out
    assert not ex.check_apply_rotary(...)
    assert "replace `...`" in capsys.readouterr().out


def test_value_checks(capsys):
    cfg = Qwen3NextConfig.full()
    slowest = 2 * math.pi / RotaryEmbedding(cfg).inv_freq[-1].item()
    assert ex.check_slowest_wavelength(slowest) and not ex.check_slowest_wavelength(2 * math.pi)
    assert ex.check_yarn_unchanged_pairs(15) and not ex.check_yarn_unchanged_pairs(22)
    yarn = RotaryEmbedding(cfg.replace(rope_scaling=dict(ex.YARN))).inv_freq
    assert int((yarn == RotaryEmbedding(cfg).inv_freq).sum()) == 15  # the package's own YaRN agrees
    w = ex.exercise_norm().weight.detach()
    assert ex.check_plain_gain(1 + w) and not ex.check_plain_gain(w) and not ex.check_plain_gain([1.0] * 8)
    assert not ex.check_slowest_wavelength(...) and not ex.check_plain_gain(...)
    out = capsys.readouterr().out
    assert out.count("Correct!") == 3 and out.count("Not yet") == 6
