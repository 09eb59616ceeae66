"""The checks of chapter 07's exercises: a right answer passes, a wrong one fails, the placeholder is answered."""

from __future__ import annotations

import pytest
import torch

from qwen3next import Qwen3NextConfig
from qwen3next.accounting import moe_params
from qwen3next.exercises import UNANSWERED
from qwen3next.exercises import ch07_moe as ex
from qwen3next.moe import route

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only waits


def test_active_parameters(capsys):
    active = moe_params(Qwen3NextConfig.full())
    right = active.router + active.active_routed + active.shared + active.shared_gate  # the accounting module's
    assert ex.check_active_moe_params(right) and not ex.check_active_moe_params(right - 1_048_576)
    assert "Not yet" in capsys.readouterr().out


def my_route(logits, k):
    p = logits.float().softmax(-1).topk(k)
    return (p.values / p.values.sum(-1, keepdim=True)).to(logits.dtype), p.indices


def test_router(capsys):
    assert ex.check_router(my_route)
    assert capsys.readouterr().out.strip() == "Correct!"
    wrong = {
        "not renormalised": lambda z, k: (lambda p: (p.values.to(z.dtype), p.indices))(z.float().softmax(-1).topk(k)),
        "kept float32": lambda z, k: (lambda w, i: (w.float(), i))(*my_route(z, k)),
        "smallest experts": lambda z, k: route(-z, k)[:2],
        "one tensor": lambda z, k: my_route(z, k)[0],
        "raises": lambda z, k: 1 / 0,
    }
    for name, fn in wrong.items():
        assert not ex.check_router(fn), name
        assert "Not yet" in capsys.readouterr().out, name


def test_uniform_balance_loss():
    assert ex.check_uniform_balance_loss(10.0) and not ex.check_uniform_balance_loss(1.0)


def test_dense_moe(capsys):
    block, x = ex.exercise_block()
    with torch.no_grad():
        xf = x.reshape(-1, x.shape[-1])
        w, i, _ = route(block.gate(xf), block.top_k)
        dense_w = torch.zeros(xf.shape[0], block.num_experts).scatter(1, i, w)  # (N, E)
        every = torch.stack([expert(xf) for expert in block.experts], 1)  # (N, E, H)
        routed = (dense_w[..., None] * every).sum(1)
        shared = torch.sigmoid(block.shared_expert_gate(xf)) * block.shared_expert(xf)
        assert ex.check_dense_moe((routed + shared).view_as(x))
        assert not ex.check_dense_moe(routed.view_as(x))  # forgot the shared expert
        assert not ex.check_dense_moe(routed)  # wrong shape
    assert "Not yet" in capsys.readouterr().out


def test_every_check_answers_the_placeholder(capsys):
    checks = [ex.check_active_moe_params, ex.check_router, ex.check_uniform_balance_loss, ex.check_dense_moe]
    for check in checks:
        assert not check(...)
        assert capsys.readouterr().out.startswith("Not yet. Hint: " + UNANSWERED), check.__name__
