"""Sampling filters against transformers' logits warpers; seeded sampling; eos; streaming; errors."""

from __future__ import annotations

import pytest
import torch

from qwen3next.generate import filter_logits, generate, next_token, stream
from qwen3next.reference import reference_twin

pytestmark = pytest.mark.usefixtures("one_thread")




def reference_filter(logits, temperature, top_k, top_p, min_p):
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    scores = logits.clone()
    for warper, on in ((TemperatureLogitsWarper(temperature), temperature != 1.0),
                       (TopKLogitsWarper(top_k) if top_k else None, bool(top_k)),
                       (TopPLogitsWarper(top_p), top_p < 1.0),
                       (MinPLogitsWarper(min_p) if min_p else None, min_p > 0)):
        if on:
            scores = warper(None, scores)
    return scores


@pytest.mark.parametrize("settings", [
    (1.0, 0, 1.0, 0.0), (0.7, 20, 0.8, 0.0), (0.6, 20, 0.95, 0.0), (1.3, 0, 0.5, 0.0),
    (1.0, 5, 1.0, 0.0), (0.8, 0, 1.0, 0.1), (1.0, 10, 0.9, 0.05),
])
def test_filters_match_reference_warpers(settings):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 300, generator=g) * 3
    ours = filter_logits(logits, *settings)
    ref = reference_filter(logits, *settings)
    kept = torch.isfinite(ours)
    assert torch.equal(kept, torch.isfinite(ref)), settings
    assert torch.allclose(ours[kept], ref[kept], atol=1e-6)
    assert kept.any(-1).all()  # every row keeps at least one token


def test_samples_stay_in_the_kept_set_with_the_right_frequencies():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([next_token(logits, 1.0, top_k=3, generator=g) for _ in range(3000)]).flatten()
    counts = torch.bincount(draws, minlength=6).float()
    assert counts[3:].sum() == 0
    expected = logits[0, :3].softmax(-1) * 3000
    assert ((counts[:3] - expected).abs() < 5 * expected.sqrt()).all()  # within 5 standard deviations
    assert torch.equal(next_token(logits), torch.tensor([0]))  # temperature 0: arg-max


@torch.no_grad()
def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone(model):
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    state = torch.get_rng_state()
    a = generate(model, ids, 8, temperature=1.0, seed=123)
    b = generate(model, ids, 8, temperature=1.0, seed=123)
    c = generate(model, ids, 8, temperature=1.0, seed=124)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # top_k = 1 leaves one candidate: sampling is then greedy
    assert torch.equal(generate(model, ids, 10, temperature=0.9, top_k=1, seed=5), generate(model, ids, 10))


@torch.no_grad()
def test_sampling_matches_reference_with_the_same_seed(model):
    """The reference draws from the global generator; ours from a private one seeded alike."""
    cfg = model.config
    ref = reference_twin(model, cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 7))
    settings = dict(temperature=0.7, top_k=20, top_p=0.8)
    torch.manual_seed(42)
    expected = ref.generate(ids, max_new_tokens=10, do_sample=True, **settings)
    assert torch.equal(generate(model, ids, 10, seed=42, **settings), expected)


@torch.no_grad()
def test_eos_stops_and_pads_finished_rows(model):
    ids = torch.randint(0, model.config.vocab_size, (2, 6))
    free = generate(model, ids, 10)
    eos = int(free[0, 6 + 3])  # row 0's fourth new token
    out = generate(model, ids, 10, eos_token_id=eos)
    first_eos = [(row[6:] == eos).nonzero()[0, 0].item() if (row[6:] == eos).any() else None for row in free]
    for i, stop in enumerate(first_eos):
        if stop is None:
            assert torch.equal(out[i], free[i, :out.shape[1]])
        else:
            assert torch.equal(out[i, :6 + stop + 1], free[i, :6 + stop + 1])
            assert (out[i, 6 + stop + 1:] == eos).all()  # finished rows are filled with the pad (= eos) id
    if all(s is not None for s in first_eos):
        assert out.shape[1] == 6 + max(first_eos) + 1  # stops once every row has finished
    # a list of eos ids works too
    assert torch.equal(generate(model, ids, 10, eos_token_id=[eos, 10_000]), out)


@torch.no_grad()
def test_streaming_callback_and_iterator(model):
    ids = torch.randint(0, model.config.vocab_size, (2, 4))
    seen = []
    out = generate(model, ids, 6, streamer=seen.append)
    assert len(seen) == 6 and all(t.shape == (2,) for t in seen)
    assert torch.equal(torch.stack(seen, 1), out[:, 4:])
    assert torch.equal(torch.stack(list(stream(model, ids, 6)), 1), out[:, 4:])

    class Streamer:  # the put/end protocol of transformers' streamers
        def __init__(self):
            self.tokens, self.ended = [], False

        def put(self, t):
            self.tokens.append(t)

        def end(self):
            self.ended = True

    s = Streamer()
    generate(model, ids, 3, streamer=s)
    assert len(s.tokens) == 3 and s.ended
    assert torch.equal(generate(model, ids, 0), ids)


def test_bad_settings_raise_clear_errors(model):
    ids = torch.zeros(1, 3, dtype=torch.long)
    for kwargs, name in [(dict(temperature=-1.0), "temperature"), (dict(top_p=0.0), "top_p"),
                         (dict(top_k=-2), "top_k"), (dict(min_p=1.5), "min_p"),
                         (dict(eos_token_id=-1), "eos_token_id"),
                         (dict(cpu_kernels="mkl"), r"cpu_kernels: expected one of .*, found 'mkl'")]:
        with pytest.raises(ValueError, match=name):
            generate(model, ids, 2, **kwargs)
    with pytest.raises(TypeError, match="eos_token_id"):  # a wrong type is a TypeError
        generate(model, ids, 2, eos_token_id="x")
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, ids, -1)
    with pytest.raises(ValueError, match="input_ids"):
        generate(model, torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="left"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), 2, attention_mask=torch.tensor([[1, 1, 0]]))
    with pytest.raises(TypeError, match="streamer"):
        generate(model, ids, 2, streamer=3)


@torch.no_grad()
def test_public_name_generates(model):
    """``from qwen3next import generate`` is the function, even after the submodule was imported."""
    import qwen3next
    import qwen3next.generate  # noqa: F401  (the submodule of the same name)
    from qwen3next import generate as public

    assert public is generate and qwen3next.generate is generate

    ids = torch.randint(0, model.config.vocab_size, (1, 4))
    assert torch.equal(public(model, ids, 3), generate(model, ids, 3))
    assert torch.equal(qwen3next.generate(model, ids, 3), generate(model, ids, 3))
