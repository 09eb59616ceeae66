"""The edges of the interface: masks that hide past tokens, top-p on ties, hidden states, and bad settings.

Each behaviour is compared with the reference (``transformers``' model and its ``TopPLogitsWarper``),
and every wrongly typed or out-of-range argument of ``generate`` and of the model is a ``ValueError`` or
``TypeError`` that names the argument, never an error from deep inside torch.
"""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from qwen3next.config import Qwen3NextConfig
from qwen3next.generate import filter_logits, generate
from qwen3next.model import Qwen3NextForCausalLM
from qwen3next.reference import max_abs_diff, reference_twin

CFG = Qwen3NextConfig.tiny(num_hidden_layers=4)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    ours = Qwen3NextForCausalLM(CFG).eval()
    return ours, reference_twin(ours, CFG)


# ---------------------------------------------------------------------------------- masks
@torch.no_grad()
def test_decode_with_a_mask_that_hides_past_tokens(pair):
    """A (B, past + 1) mask with zeros in the past: the attention layers no longer see those tokens."""
    ours, ref = pair
    ids = torch.randint(0, CFG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    cache = ours.new_cache(2)
    ours(ids[:, :10], cache=cache)
    ref_cache = ref(ids[:, :10], use_cache=True).cache
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[0, 3] = 0
    mask[1, 5:8] = 0
    pos = torch.full((2, 1), 10)
    for t in (10, 11):  # two steps, the second with the mask grown by one real token
        a = ours(ids[:, t:t + 1], attention_mask=mask, position_ids=pos, cache=cache).logits
        b = ref(ids[:, t:t + 1], attention_mask=mask, position_ids=pos, cache=ref_cache, use_cache=True).logits
        assert max_abs_diff(a, b) < 2e-5, t
        mask, pos = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1), pos + 1
    # and hiding them changed something: the same step with a mask of ones differs
    cache2 = ours.new_cache(2)
    ours(ids[:, :10], cache=cache2)
    plain = ours(ids[:, 10:11], position_ids=torch.full((2, 1), 10), cache=cache2).logits
    cache3 = ours.new_cache(2)
    ours(ids[:, :10], cache=cache3)
    hidden = ours(ids[:, 10:11], attention_mask=mask[:, :11], position_ids=torch.full((2, 1), 10), cache=cache3).logits
    assert max_abs_diff(plain, hidden) > 1e-3


# ---------------------------------------------------------------------------------- top-p
def _reference_filter(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """transformers' sampling warpers, in the order ``generate`` applies them."""
    scores = logits.float()
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    if min_p > 0.0:
        scores = MinPLogitsWarper(min_p)(None, scores)
    return scores


def _kept(scores):
    return torch.isfinite(scores)


def test_top_p_on_ties_keeps_the_references_set():
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    assert torch.equal(_kept(filter_logits(logits, top_p=0.5)), _kept(_reference_filter(logits, top_p=0.5)))
    # bf16 logits: few distinct values, many ties at every cut
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2000, 64, generator=g) * 2).to(torch.bfloat16).float().round()
    for top_p in (0.1, 0.3, 0.5, 0.7, 0.9, 0.95):
        assert torch.equal(_kept(filter_logits(logits, top_p=top_p)), _kept(_reference_filter(logits, top_p=top_p)))


@pytest.mark.parametrize("settings", [dict(temperature=0.7, top_k=5), dict(temperature=1.3, top_p=0.8),
                                      dict(top_k=10, top_p=0.6, min_p=0.05), dict(temperature=0.5, min_p=0.2)])
def test_filters_keep_the_references_set(settings):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(500, 128, generator=g) * 3).to(torch.bfloat16).float()
    ours, theirs = filter_logits(logits, **settings), _reference_filter(logits, **settings)
    assert torch.equal(_kept(ours), _kept(theirs))
    assert torch.allclose(ours.softmax(-1), theirs.softmax(-1), atol=1e-6)


# -------------------------------------------------------------------------------- hidden states
@torch.no_grad()
def test_hidden_states_are_the_references(pair):
    ours, ref = pair
    ids = torch.randint(0, CFG.vocab_size, (2, 9))
    a = ours(ids, output_hidden_states=True).hidden_states
    b = ref(ids, output_hidden_states=True).hidden_states
    assert len(a) == len(b) == CFG.num_hidden_layers + 1
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert max_abs_diff(x, y) < 2e-5, i  # the last one after the final norm, like the reference


# --------------------------------------------------------------------------------- bad settings
IDS = torch.tensor([[1, 2, 3]])


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(temperature=None), TypeError, "temperature"), (dict(temperature="0.7"), TypeError, "temperature"),
    (dict(temperature=True), TypeError, "temperature"), (dict(temperature=-0.1), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(temperature=1e-45), ValueError, "temperature"),  # positive, but logits / 1e-45 overflow
    (dict(top_k=None), TypeError, "top_k"), (dict(top_k="5"), TypeError, "top_k"),
    (dict(top_k=2.5), TypeError, "top_k"), (dict(top_k=-1), ValueError, "top_k"),
    (dict(top_p=None), TypeError, "top_p"), (dict(top_p="0.9"), TypeError, "top_p"),
    (dict(top_p=0.0), ValueError, "top_p"), (dict(top_p=float("nan")), ValueError, "top_p"),
    (dict(min_p=None), TypeError, "min_p"), (dict(min_p=1.5), ValueError, "min_p"),
    (dict(max_new_tokens=None), TypeError, "max_new_tokens"), (dict(max_new_tokens="4"), TypeError, "max_new_tokens"),
    (dict(max_new_tokens=2.0), TypeError, "max_new_tokens"), (dict(max_new_tokens=True), TypeError, "max_new_tokens"),
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
    (dict(seed="x"), TypeError, "seed"), (dict(seed=1.5), TypeError, "seed"), (dict(seed=-1), ValueError, "seed"),
    (dict(seed=2**64), ValueError, "seed"), (dict(seed=True), TypeError, "seed"),
    (dict(eos_token_id="2"), TypeError, "eos_token_id"), (dict(eos_token_id=[1, None]), TypeError, "eos_token_id"),
    (dict(eos_token_id=-3), ValueError, "eos_token_id"), (dict(pad_token_id="0"), TypeError, "pad_token_id"),
    (dict(streamer=5), TypeError, "streamer"),
    (dict(input_ids=[[1, 2, 3]]), TypeError, "input_ids"), (dict(input_ids=torch.zeros(1, 0, dtype=torch.long)),
                                                             ValueError, "input_ids"),
    (dict(input_ids=torch.tensor([[1.0, 2.0]])), TypeError, "input_ids"),
    (dict(input_ids=torch.tensor([1, 2, 3])), ValueError, "input_ids"),
    (dict(input_ids=torch.tensor([[1, 10**6]])), ValueError, "input_ids"),
    (dict(attention_mask=[[1, 1, 1]]), TypeError, "attention_mask"),
    (dict(attention_mask=torch.ones(1, 2, dtype=torch.long)), ValueError, "attention_mask"),
    (dict(attention_mask=torch.tensor([[1, 1, 0]])), ValueError, "attention_mask"),
    (dict(attention_mask=torch.tensor([[1, 2, 1]])), ValueError, "attention_mask"),
])
def test_generate_names_the_bad_argument(pair, kwargs, error, name):
    ours, _ = pair
    args = dict(input_ids=IDS, max_new_tokens=3, temperature=1.0)
    args.update(kwargs)
    with pytest.raises(error, match=rf"^{name}\b"):
        generate(ours, **args)


def _other_model_cache():
    torch.manual_seed(1)
    other = Qwen3NextForCausalLM(Qwen3NextConfig.tiny(num_hidden_layers=8)).eval()
    cache = other.new_cache(1)
    with torch.no_grad():
        other(IDS, cache=cache)
    return cache


def _shaped_cache():
    torch.manual_seed(1)
    other = Qwen3NextForCausalLM(Qwen3NextConfig.tiny(num_hidden_layers=4, hidden_size=32)).eval()
    cache = other.new_cache(1)
    with torch.no_grad():
        other(IDS, cache=cache)
    return cache


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(input_ids=[[1, 2, 3]]), TypeError, "input_ids"),
    (dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), ValueError, "input_ids"),
    (dict(input_ids=None, inputs_embeds=torch.zeros(1, 3, 64, dtype=torch.float64)), ValueError, "inputs_embeds"),
    (dict(input_ids=None, inputs_embeds=torch.zeros(1, 0, 64)), ValueError, "inputs_embeds"),
    (dict(input_ids=None, inputs_embeds=[[0.0] * 64]), TypeError, "inputs_embeds"),
    (dict(cache="cache"), TypeError, "cache"),
    (dict(cache=_other_model_cache), ValueError, "cache"),
    (dict(cache=_shaped_cache), ValueError, "cache"),
    (dict(attention_mask=[[1, 1, 1]]), TypeError, "attention_mask"),
    (dict(position_ids=[[0, 1, 2]]), TypeError, "position_ids"),
    (dict(logits_to_keep=-1), ValueError, "logits_to_keep"), (dict(logits_to_keep="1"), TypeError, "logits_to_keep"),
    (dict(output_hidden_states="yes"), TypeError, "output_hidden_states"),
])
def test_the_model_names_the_bad_argument(pair, kwargs, error, name):
    ours, _ = pair
    args = dict(input_ids=IDS)
    args.update({k: v() if callable(v) else v for k, v in kwargs.items()})
    with pytest.raises(error, match=rf"^{name}\b"), torch.no_grad():
        ours(**args)
