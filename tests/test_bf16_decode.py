"""bfloat16 is as exact as float32: cached decode and greedy generation in bf16 against the reference.

The real checkpoint runs in bfloat16, so every cached path must round where the reference rounds:
the short convolution's decode step accumulates its K products in float32 and rounds once (the
reference's ``causal_conv1d_update`` is one ``F.conv1d``), the attention KV cache stays in bf16 with
softmax in float32, the delta-rule state in float32. The model: the tiny preset with 4 layers and
init std 0.1 (``initializer_range``), so logits are of order 1-4 and one rounding step per product
(the defect this file guards against) moves them by up to 1.7; with the default 0.02 they are ~0.7 and
the defect hides below bf16's resolution. Tolerance ``2**-5``: two bf16 steps of a logit in [2, 4),
room for the one rounding step SDPA's kernels take in a different order for one query than for 36.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.qwen3_next.modeling_qwen3_next import causal_conv1d_update

from qwen3next.config import Qwen3NextConfig
from qwen3next.deltanet import causal_conv1d_step
from qwen3next.generate import generate
from qwen3next.model import Qwen3NextForCausalLM
from qwen3next.reference import max_abs_diff, reference_twin

CFG = Qwen3NextConfig.tiny(num_hidden_layers=4, initializer_range=0.1)
TOL = 2**-5
PREFILL, STEPS = 20, 16

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(implementation: str, seed: int):
    torch.manual_seed(seed)
    ours = Qwen3NextForCausalLM(CFG).eval().to(torch.bfloat16)
    for module in ours.modules():
        if hasattr(module, "implementation"):  # the attention kernel of every gated-attention layer
            module.implementation = implementation
    ref = reference_twin(ours, CFG)
    ref.config._attn_implementation = implementation
    return ours, ref


@pytest.fixture(scope="module", params=[(impl, seed) for impl in ("eager", "sdpa") for seed in (0, 1)],
                ids=lambda p: f"{p[0]}-seed{p[1]}")
def pair(request):
    return _pair(*request.param)


def test_conv_step_rounds_once_like_the_reference():
    torch.manual_seed(0)
    B, C, K = 3, 96, 4
    weight = torch.randn(C, K).bfloat16()
    state = torch.randn(B, C, K).bfloat16()
    ref_state = state.clone()
    for _ in range(8):
        x = (torch.randn(B, C) * 3).bfloat16()
        ours = causal_conv1d_step(x, weight, state)
        theirs = causal_conv1d_update(x[:, :, None], ref_state, weight, None, None)[:, :, 0]
        assert ours.dtype == torch.bfloat16
        assert torch.equal(state, ref_state)
        assert torch.equal(ours, theirs)


@torch.no_grad()
def test_bf16_cached_decode_equals_full_forward_and_reference(pair):
    ours, ref = pair
    ids = torch.randint(0, CFG.vocab_size, (2, PREFILL + STEPS), generator=torch.Generator().manual_seed(1))
    full = ours(ids).logits
    cache = ours.new_cache(2)
    decoded = [ours(ids[:, :PREFILL], cache=cache).logits]
    out = ref(ids[:, :PREFILL], use_cache=True)
    ref_decoded, ref_cache = [out.logits], out.cache
    for t in range(PREFILL, PREFILL + STEPS):
        decoded.append(ours(ids[:, t:t + 1], cache=cache).logits)
        out = ref(ids[:, t:t + 1], cache=ref_cache, use_cache=True)
        ref_decoded.append(out.logits)
    decoded, ref_decoded = torch.cat(decoded, 1), torch.cat(ref_decoded, 1)
    assert decoded.dtype == torch.bfloat16 and full.abs().max() > 2  # logits large enough to show rounding
    assert max_abs_diff(decoded, full) <= TOL
    assert max_abs_diff(decoded, ref_decoded) <= TOL


@torch.no_grad()
def test_bf16_greedy_generation_is_the_references(pair):
    ours, ref = pair
    ids = torch.randint(0, CFG.vocab_size, (2, 8), generator=torch.Generator().manual_seed(2))
    expected = ref.generate(ids, max_new_tokens=24, do_sample=False)
    assert torch.equal(generate(ours, ids, 24), expected)


# ------------------------------------------------------------- PyTorch's own kernels for decoding steps
def _kernel_spy(model) -> list[tuple[int, bool]]:
    """(tokens in the call, whether oneDNN was on) for every forward of the model's first layer."""
    seen = []
    model.model.layers[0].register_forward_pre_hook(
        lambda m, args: seen.append((args[0].shape[1], torch.backends.mkldnn.enabled)))
    return seen


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN to switch off")
@torch.no_grad()
def test_bf16_generation_on_native_kernels_switches_only_the_decoding_steps():
    ours, ref = _pair("sdpa", 0)
    ids = torch.randint(0, CFG.vocab_size, (2, 8), generator=torch.Generator().manual_seed(2))
    seen = _kernel_spy(ours)
    native = generate(ours, ids, 24, cpu_kernels="native")
    assert seen[0] == (8, True)  # the prefill keeps oneDNN
    assert seen[1:] and all(step == (1, False) for step in seen[1:])  # every decoding step runs without it
    assert torch.backends.mkldnn.enabled  # put back once the loop ends
    assert torch.equal(native, ref.generate(ids, max_new_tokens=24, do_sample=False))


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN to switch off")
def test_native_kernels_are_put_back_after_an_error():
    from qwen3next.linear import use_cpu_kernels

    with pytest.raises(RuntimeError, match="inside"), use_cpu_kernels("native"):
        assert not torch.backends.mkldnn.enabled
        raise RuntimeError("inside")
    assert torch.backends.mkldnn.enabled
    with pytest.raises(ValueError, match=r"cpu_kernels: expected one of \('onednn', 'native'\), found 'mkl'"):
        with use_cpu_kernels("mkl"):
            pass
