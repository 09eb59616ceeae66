"""Tests of qwen3next.mqar: the recall task, the study's mixers, and a short run."""

import pytest
import torch

from qwen3next.deltanet import GatedDeltaNet
from qwen3next.mqar import (
    MIXERS,
    LinearAttention,
    MQARTask,
    RecallRun,
    UngatedDeltaNet,
    linear_attention,
    mqar_batch,
    recall_model,
    state_numbers,
    train_recall,
)
from qwen3next.train import IGNORE

TASK = MQARTask(num_pairs=6, num_keys=20, num_values=10)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_batch_asks_every_key_once_and_scores_only_the_answers():
    ids, labels = mqar_batch(TASK, 5, torch.Generator().manual_seed(0))
    D = TASK.num_pairs
    assert ids.shape == labels.shape == (5, TASK.seq_len)
    for row, lab in zip(ids.tolist(), labels.tolist(), strict=True):
        pairs = dict(zip(row[0:2 * D:2], row[1:2 * D:2], strict=True))
        assert len(pairs) == D and all(k < TASK.num_keys <= v < TASK.vocab_size for k, v in pairs.items())
        queries = row[2 * D::2]
        assert sorted(queries) == sorted(pairs)
        assert row[2 * D + 1::2] == [pairs[q] for q in queries]
        assert [t for t in lab if t != IGNORE] == [pairs[q] for q in queries]
        assert all(t == IGNORE for t in lab[:2 * D + 1])


def test_linear_attention_is_the_additive_state_update():
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 7, 1, 4, generator=gen), torch.randn(2, 7, 1, 4, generator=gen)
    v = torch.randn(2, 7, 2, 3, generator=gen)
    o = linear_attention(q, k, v)
    qn = torch.nn.functional.normalize(q, dim=-1, eps=1e-6) * 4 ** -0.5
    kn = torch.nn.functional.normalize(k, dim=-1, eps=1e-6)
    S = torch.zeros(2, 2, 3, 4)  # (B, Hv, Dv, Dk)
    for t in range(7):
        S = S + v[:, t, :, :, None] * kn[:, t, :, None, :]  # S += v k^T, every value head reads key head 0
        assert torch.allclose(o[:, t], (S @ qn[:, t, :, :, None]).squeeze(-1), atol=1e-5)


def test_mixer_kinds_and_equal_state_size():
    kinds = {}
    for mixer in MIXERS:
        model = recall_model(mixer, TASK)
        kinds[mixer] = [type(getattr(layer, "linear_attn", getattr(layer, "self_attn", None))).__name__
                        for layer in model.model.layers]
    assert kinds["attention"] == ["GatedAttention"] * 4
    assert kinds["linear_attention"] == ["LinearAttention"] * 4
    assert kinds["deltanet"] == ["UngatedDeltaNet"] * 4
    assert kinds["gated_deltanet"] == ["GatedDeltaNet"] * 4
    assert kinds["hybrid"] == ["GatedDeltaNet"] * 3 + ["GatedAttention"]
    states = {m: state_numbers(recall_model(m, TASK).config, TASK.seq_len) for m in MIXERS}
    recurrent = {states[m][0] for m in ("linear_attention", "deltanet", "gated_deltanet", "hybrid")}
    assert len(recurrent) == 1  # the same state per recurrent layer
    with pytest.raises(ValueError, match="mixer"):
        recall_model("mamba", TASK)


def test_ungated_deltanet_never_forgets_and_no_conv_is_the_identity():
    model = recall_model("deltanet", TASK, short_conv=False)
    layer = model.model.layers[0].linear_attn
    assert isinstance(layer, UngatedDeltaNet) and isinstance(layer, GatedDeltaNet)
    _, g = layer.gates(torch.randn(2, 3, 2), torch.randn(2, 3, 2))
    assert torch.all(g == 0)
    w = layer.conv1d.weight
    assert not w.requires_grad and torch.all(w[..., :-1] == 0) and torch.all(w[..., -1] == 1)


def test_initialisations_differ_only_in_the_decay():
    ref, m2 = recall_model("gated_deltanet", TASK, init="reference"), recall_model("gated_deltanet", TASK)
    a, b = ref.model.layers[0].linear_attn, m2.model.layers[0].linear_attn
    assert torch.all(a.dt_bias == 1) and not torch.allclose(a.dt_bias, b.dt_bias)
    assert torch.equal(a.in_proj_qkvz.weight, b.in_proj_qkvz.weight)


def test_linear_attention_mixer_refuses_a_cache():
    layer = recall_model("linear_attention", TASK).model.layers[0].linear_attn
    assert isinstance(layer, LinearAttention)
    with pytest.raises(ValueError, match="no cache"):
        layer(torch.zeros(1, 3, 64), cache=object())


def test_a_short_run_is_logged_with_its_curve():
    result = train_recall(RecallRun("gated_deltanet", steps=6, eval_every=3, batch_size=8), TASK)
    assert [s for s, _, _ in result["curve"]] == [3, 6] and 0 <= result["accuracy"] <= 1
    assert result["name"] == "gated deltanet" and result["chance"] == pytest.approx(0.1)
    assert RecallRun("deltanet", short_conv=False, init="reference").name == "deltanet, no conv, reference init"
