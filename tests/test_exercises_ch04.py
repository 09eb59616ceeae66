"""The exercise checks of chapter 04: a right answer passes, a wrong one fails, the placeholder gets a hint."""

from __future__ import annotations

import torch

from qwen3next.exercises import UNANSWERED
from qwen3next.exercises import ch04_gated_attention as ex


def gated_gqa(q, k, v, gate):
    B, H, T, D = q.shape
    k, v = (x.repeat_interleave(H // x.shape[1], dim=1) for x in (k, v))
    scores = (q @ k.transpose(-1, -2) / D**0.5).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -torch.inf)
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * D) * torch.sigmoid(gate)


def test_gate_rows_and_parameters():
    assert ex.check_gate_rows((3 * 512 + 256, 4 * 512)) and ex.check_gate_rows([1792, 2048])
    assert not ex.check_gate_rows((3 * 512, 3 * 512 + 256)) and not ex.check_gate_rows("rows")
    assert ex.check_attention_params(27_263_488) and not ex.check_attention_params(27_263_488 - 512)


def test_gated_gqa_accepts_the_mechanism_and_rejects_near_misses():
    assert ex.check_gated_gqa(gated_gqa)

    def kv_heads_tiled(q, k, v, gate):  # query head h reads kv head h % Hkv instead of h // (H / Hkv)
        B, H, T, D = q.shape
        k, v = (x.repeat(1, H // x.shape[1], 1, 1) for x in (k, v))
        return gated_gqa(q, k, v, gate)

    assert not ex.check_gated_gqa(kv_heads_tiled)
    assert not ex.check_gated_gqa(lambda q, k, v, gate: gated_gqa(q, k, v, gate) / torch.sigmoid(gate))  # no gate
    assert not ex.check_gated_gqa(lambda q, k, v, gate: gated_gqa(q, k, v, gate)[:, :, :-1])  # wrong shape
    assert not ex.check_gated_gqa(lambda *args: 1 / 0)


def test_placeholder_gets_a_reminder(capsys):
    checks = [ex.check_gate_rows, ex.check_attention_params, ex.check_gated_gqa]
    assert not any(check(...) for check in checks)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(checks) and all(ln.startswith("Not yet. Hint: " + UNANSWERED) for ln in lines)
