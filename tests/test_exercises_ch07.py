"""The checks of chapter 07's exercises: a right answer passes, a wrong one fails, the placeholder is answered."""

from __future__ import annotations

import pytest
import torch

from qwen3next import Qwen3NextConfig, Qwen3NextForCausalLM, Tokenizer, tiny_pretrained_path
from qwen3next.accounting import moe_params
from qwen3next.exercises import UNANSWERED
from qwen3next.exercises import ch07_moe as ex
from qwen3next.lens import story_ids
from qwen3next.moe import route
from qwen3next.stories import generate_stories

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


def test_layer_balance(capsys):
    path = tiny_pretrained_path()
    model, tokenizer = Qwen3NextForCausalLM.from_pretrained(path).eval(), Tokenizer.from_pretrained(path)
    E, k = model.config.num_experts, model.config.num_experts_per_tok
    with torch.no_grad():
        logits = model(story_ids(tokenizer, generate_stories(8, seed=10_000)), output_router_logits=True).router_logits
    right = []
    for lg in logits:  # the formula by hand: f_e from a one-hot of the top k, P_e the mean probability
        p = lg.float().softmax(-1)
        f = torch.zeros_like(p).scatter(1, p.topk(k).indices, 1.0).mean(0)
        right.append(E * (f * p.mean(0)).sum().item())
    assert len(right) == model.config.num_hidden_layers and min(right) < k < max(right)  # one below k
    assert ex.check_layer_balance(right) and ex.check_layer_balance(torch.tensor(right))
    assert capsys.readouterr().out.splitlines() == ["Correct!"] * 2
    no_topk = [E * (lg.float().softmax(-1).mean(0) ** 2).sum().item() * k for lg in logits]  # P_e for f_e
    one_off = [*right[:5], right[5] * 1.01, *right[6:]]
    for wrong in (no_topk, one_off, right[:-1], [float(k)] * len(right), max(right)):
        assert not ex.check_layer_balance(wrong)
        assert capsys.readouterr().out.startswith("Not yet. Hint: ")
    ex.check_layer_balance(one_off)
    assert "layer 5" in capsys.readouterr().out


def test_every_check_answers_the_placeholder(capsys):
    checks = [ex.check_active_moe_params, ex.check_router, ex.check_uniform_balance_loss, ex.check_dense_moe,
              ex.check_layer_balance]
    for check in checks:
        assert not check(...)
        assert capsys.readouterr().out.startswith("Not yet. Hint: " + UNANSWERED), check.__name__
