"""Mixed-precision training (``torch.autocast`` to bfloat16, float32 weights): the delta rule keeps its float32
arithmetic, the fused loss matches the plain one under autocast, and a whole training step stays within
bfloat16 rounding of the float32 step and of the reference's own autocast step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qwen3next.config import Qwen3NextConfig
from qwen3next.delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule
from qwen3next.loss import linear_cross_entropy
from qwen3next.model import Qwen3NextForCausalLM
from qwen3next.reference import max_abs_diff, reference_twin

pytestmark = pytest.mark.usefixtures("one_thread")


def bf16_autocast(enabled: bool = True):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def _delta_rule_inputs(T=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, T, 2, 16, generator=g) for _ in range(2))
    v = torch.randn(2, T, 4, 8, generator=g)
    decay = -torch.rand(2, T, 4, generator=g)
    beta = torch.rand(2, T, 4, generator=g)
    return q, k, v, decay, beta


@pytest.mark.parametrize("kernel", [chunk_gated_delta_rule, recurrent_gated_delta_rule])
def test_delta_rule_ignores_autocast(kernel):
    """Under autocast the kernels compute exactly what they compute outside it: float32 throughout."""
    args = _delta_rule_inputs()
    plain, plain_h = kernel(*args, output_final_state=True, use_qk_l2norm_in_kernel=True)
    with bf16_autocast():
        mixed, mixed_h = kernel(*args, output_final_state=True, use_qk_l2norm_in_kernel=True)
    assert mixed.dtype == mixed_h.dtype == torch.float32
    assert max_abs_diff(mixed, plain) == 0 and max_abs_diff(mixed_h, plain_h) == 0


def test_fused_loss_under_autocast_equals_the_plain_loss():
    """Both take the vocabulary projection in bfloat16 and the softmax in float32; the gradients reach the
    float32 tensors, within bfloat16 rounding of each other."""
    torch.manual_seed(0)
    h = torch.randn(2, 300, 64, requires_grad=True)
    W = (torch.randn(1000, 64) * 0.1).requires_grad_()
    targets = torch.randint(0, 1000, (600,))
    targets[::7] = -100
    with bf16_autocast():
        loss, logits = linear_cross_entropy(h, W, targets, chunk=128)
        plain_logits = F.linear(h, W)
        plain_loss = F.cross_entropy(plain_logits.flatten(0, 1).float(), targets, ignore_index=-100)
    assert logits.dtype == plain_logits.dtype == torch.bfloat16
    assert max_abs_diff(logits, plain_logits) == 0
    assert abs(loss.item() - plain_loss.item()) <= 1e-5
    fused, plain = torch.autograd.grad(loss, (h, W)), torch.autograd.grad(plain_loss, (h, W))
    for a, b in zip(fused, plain, strict=True):
        assert a.dtype == torch.float32
        assert max_abs_diff(a, b) <= 2e-2 * b.abs().max().item()


def _step(model, ids, mixed: bool, **kwargs):
    model.zero_grad(set_to_none=True)
    with bf16_autocast(mixed):
        loss = model(ids, labels=ids, output_router_logits=True, **kwargs).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _relative_error(grads, reference) -> float:
    """``|g - g_ref| / |g_ref|`` over all parameters' gradients as one vector.

    Per parameter the error can be large: bfloat16 rounding flips a few tokens' choice of experts,
    which moves those experts' gradients by a lot (the reference's too)."""
    diff = sum((grads[n] - g).square().sum() for n, g in reference.items())
    return (diff / sum(g.square().sum() for g in reference.values())).sqrt().item()


def test_a_mixed_precision_step_is_the_float32_step_to_bfloat16_rounding():
    cfg = Qwen3NextConfig.tiny()
    torch.manual_seed(0)
    ours = Qwen3NextForCausalLM(cfg).train()
    ref = reference_twin(ours, cfg).train()
    ids = torch.randint(0, cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    loss32, grads32 = _step(ours, ids, mixed=False)
    loss16, grads16 = _step(ours, ids, mixed=True)
    _, ref_grads32 = _step(ref, ids, mixed=False, use_cache=False)
    ref16, ref_grads16 = _step(ref, ids, mixed=True, use_cache=False)
    assert all(g.dtype == torch.float32 for g in grads16.values()) and set(grads16) == set(grads32)
    # the reference's own autocast step sets the scale of bfloat16 rounding here
    ref_loss_error, ref_grad_error = abs(ref16 - loss32), _relative_error(ref_grads16, ref_grads32)
    assert abs(loss16 - loss32) <= max(2 * ref_loss_error, 2e-3 * loss32)
    assert abs(loss16 - ref16) <= max(2 * ref_loss_error, 2e-3 * loss32)
    assert _relative_error(grads16, grads32) <= min(3 * ref_grad_error, 5e-2)

