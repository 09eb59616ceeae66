"""The checks of chapter 08's exercises: a right answer passes, a wrong one fails, the placeholder is answered."""

from __future__ import annotations

import pytest
import torch

from qwen3next.exercises import UNANSWERED
from qwen3next.exercises import ch08_model as ex
from qwen3next.generate import filter_logits
from qwen3next.lens import residual_stream
from qwen3next.reference import layer_differences

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only waits


def test_layer_parameters():
    assert ex.check_deltanet_layer_params(33_718_464 + 1_614_809_088 + 2 * 2048)  # mixer + MoE + two norms
    assert not ex.check_deltanet_layer_params(1_614_809_088)


def test_top_p():
    assert ex.check_top_p(lambda z, p: filter_logits(z, top_p=p))
    assert not ex.check_top_p(lambda z, p: filter_logits(z, top_k=5))
    assert not ex.check_top_p(lambda z, p: 1 / 0)


def greedy_with_cache(model, ids, n):
    cache = model.new_cache(ids.shape[0])
    logits = model(ids, cache=cache).logits
    out = [ids]
    for _ in range(n):
        token = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        out.append(token)
        logits = model(token, cache=cache).logits
    return torch.cat(out, dim=1)


def greedy_without_cache(model, ids, n):
    for _ in range(n):
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_greedy(capsys):
    assert ex.check_greedy(greedy_with_cache)
    assert capsys.readouterr().out.strip() == "Correct!"
    assert not ex.check_greedy(greedy_without_cache)  # right tokens, but recomputes the whole sequence
    assert "after the prompt you fed" in capsys.readouterr().out
    assert not ex.check_greedy(lambda m, ids, n: greedy_with_cache(m, ids, n)[:, -n:])  # forgot the prompt
    assert not ex.check_greedy(lambda m, ids, n: greedy_with_cache(m, ids, n) + 1)  # other tokens
    assert not ex.check_greedy(lambda m, ids, n: 1 / 0)


def test_broken_layer():
    suspect, reference = ex.broken_pair()
    d = layer_differences(suspect, reference, torch.randint(0, 512, (1, 12)))
    found = next(i for i, v in enumerate(d[1:-1]) if v > 1e-5)
    assert ex.check_broken_layer(found) and not ex.check_broken_layer(found + 1)


def lens_by_hook(model, ids, layer, remove=True):
    caught = []
    hook = model.model.layers[layer].register_forward_hook(lambda _m, _args, out: caught.append(out[0]))
    with torch.no_grad():
        model(ids)
        if remove:
            hook.remove()
        return model.lm_head(model.model.norm(caught[0]))


def test_logit_lens(capsys):
    assert ex.check_logit_lens(lens_by_hook)
    assert capsys.readouterr().out.strip() == "Correct!"
    wrong = {
        "hook left on": lambda m, ids, layer: lens_by_hook(m, ids, layer, remove=False),
        "no final norm": lambda m, ids, layer: m.lm_head(residual_stream(m, ids)[layer + 1]),
        "one layer early": lambda m, ids, layer: m.lm_head(m.model.norm(residual_stream(m, ids)[layer])),
        "last position only": lambda m, ids, layer: lens_by_hook(m, ids, layer)[:, -1],
        "raises": lambda m, ids, layer: 1 / 0,
    }
    for name, fn in wrong.items():
        assert not ex.check_logit_lens(fn), name
        assert capsys.readouterr().out.startswith("Not yet. Hint: "), name


def test_every_check_answers_the_placeholder(capsys):
    checks = [ex.check_deltanet_layer_params, ex.check_top_p, ex.check_greedy, ex.check_broken_layer,
              ex.check_logit_lens]
    for check in checks:
        assert not check(...)
        assert capsys.readouterr().out.startswith("Not yet. Hint: " + UNANSWERED), check.__name__
