"""The checks of chapter 09's exercises: a right answer passes, a wrong one fails, the placeholder is answered."""

from __future__ import annotations

import pytest
import torch

from qwen3next import Qwen3NextConfig
from qwen3next.exercises import UNANSWERED
from qwen3next.exercises import ch09_real_weights as ex
from qwen3next.fp8 import dequantize_fp8

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only waits


def test_bytes_per_token():
    cfg = Qwen3NextConfig.full()
    expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size * 2
    assert ex.check_bytes_per_token(cfg.num_experts_per_tok * cfg.num_hidden_layers * expert)
    assert not ex.check_bytes_per_token(cfg.num_experts_per_tok * expert)


def test_dequantize():
    assert ex.check_dequantize(lambda q, s, b: dequantize_fp8(q, s, b, torch.float32))
    assert not ex.check_dequantize(lambda q, s, b: q.float() * s.float().mean())
    # blocks taken as (columns, rows): right only where the block is square
    assert not ex.check_dequantize(lambda q, s, b: dequantize_fp8(q, s, b[::-1], torch.float32))
    assert not ex.check_dequantize(lambda q, s, b: 1 / 0)


def test_offload_gib():
    cfg = Qwen3NextConfig.full()
    expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size * 2
    non_expert = 79_674_391_296 - 77_309_411_328  # all parameters minus the routed experts'
    assert ex.check_offload_gib((2 * non_expert + 960 * expert) / 2**30)
    assert not ex.check_offload_gib(2 * non_expert / 2**30)


def test_every_check_answers_the_placeholder(capsys):
    for check in (ex.check_bytes_per_token, ex.check_dequantize, ex.check_offload_gib):
        assert not check(...)
        assert capsys.readouterr().out.startswith("Not yet. Hint: " + UNANSWERED), check.__name__
