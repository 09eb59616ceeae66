"""The exercise checks of chapter 06: a right answer passes, a wrong one fails, the placeholder gets a hint."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qwen3next import Qwen3NextForCausalLM, Tokenizer, tiny_pretrained_path
from qwen3next.exercises import UNANSWERED
from qwen3next.exercises import ch06_gated_deltanet as ex
from qwen3next.lens import deltanet_gates, story_ids
from qwen3next.stories import generate_stories


def gates(b, a, A_log, dt_bias):
    return b.sigmoid(), -A_log.float().exp() * F.softplus(a.float() + dt_bias.float())


def test_parameters_and_state_size():
    assert ex.check_deltanet_params(33_718_464) and not ex.check_deltanet_params(33_718_464 - 128)
    assert ex.check_state_mib(36 * (8192 * 4 * 2 + 32 * 128 * 128 * 4) / 2**20)
    assert not ex.check_state_mib(36 * (8192 * 4 * 4 + 32 * 128 * 128 * 4) / 2**20)  # fp32 conv state


def test_gates():
    assert ex.check_gates(gates)
    assert ex.check_gates(lambda b, a, A_log, dt: (gates(b, a, A_log, dt)[0].float(), gates(b, a, A_log, dt)[1]))

    def overflowing_softplus(b, a, A_log, dt_bias):
        return b.sigmoid(), -A_log.float().exp() * torch.log(1 + torch.exp(a.float() + dt_bias.float()))

    def in_bfloat16(b, a, A_log, dt_bias):
        return b.sigmoid(), -A_log.exp() * F.softplus(a + dt_bias)

    assert not ex.check_gates(overflowing_softplus)
    assert not ex.check_gates(in_bfloat16)
    assert not ex.check_gates(lambda b, a, A_log, dt: (gates(b, a, A_log, dt)[0], F.softplus(a + dt)))  # no rate
    assert not ex.check_gates(lambda b, a, A_log, dt: gates(b, a, A_log, dt)[1])  # one tensor
    assert not ex.check_gates(lambda *args: 1 / 0)


def test_longest_keeper(capsys):
    path = tiny_pretrained_path()
    model, tokenizer = Qwen3NextForCausalLM.from_pretrained(path).eval(), Tokenizer.from_pretrained(path)
    gates = deltanet_gates(model, story_ids(tokenizer, generate_stories(8, seed=10_000)))
    kept, median_decay = {}, {}
    for layer, (_, g) in gates.items():
        alpha = g[0].double().exp()  # (T, H)
        windows = alpha[1:].unfold(0, ex.KEPT_SPAN, 1).prod(-1)  # (T - span, H): one product per write
        for head in range(alpha.shape[1]):
            kept[layer, head] = windows[:, head].median().item()
            median_decay[layer, head] = g[0, :, head].median().item()
    right = max(kept, key=kept.get)
    slowest = max(median_decay, key=median_decay.get)  # the longest half-life at a typical token
    assert slowest != right and kept[slowest] < 1e-3  # what the exercise is about
    assert ex.check_longest_keeper(right) and ex.check_longest_keeper(list(right))
    assert capsys.readouterr().out.splitlines() == ["Correct!"] * 2
    for wrong in (slowest, (3, 0), (right[0], 9), "1, 2", "12"):  # 3: an attention layer; head 9: none
        assert not ex.check_longest_keeper(wrong), wrong
        assert capsys.readouterr().out.startswith("Not yet. Hint: "), wrong


def test_placeholder_gets_a_reminder(capsys):
    checks = [ex.check_deltanet_params, ex.check_state_mib, ex.check_gates, ex.check_longest_keeper]
    assert not any(check(...) for check in checks)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(checks) and all(ln.startswith("Not yet. Hint: " + UNANSWERED) for ln in lines)
