"""Gradients of the chunked delta rule: the hand-written backward passes of the UT-transform inverse and of
the scan over chunks against numerical differentiation (float64) and the whole kernel's gradients against
the recurrent form's autograd and the reference kernel's."""

from __future__ import annotations

import pytest
import torch

from qwen3next.delta_rule import (
    chunk_gated_delta_rule,
    recurrent_gated_delta_rule,
    scan_chunks,
    unit_lower_inverse,
)
from qwen3next.reference import max_abs_diff

ref_mod = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")


def strictly_lower(shape, seed, scale=0.5):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).tril(-1)


def ut_matrix(n, batch=3, seed=0):
    """The kernel's ``A = strictly_lower(diag(beta) (K K^T * Gamma))`` for unit keys (as the model has)."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.nn.functional.normalize(torch.randn(batch, n, 32, generator=gen), dim=-1)
    beta, gamma = torch.rand(batch, n, 1, generator=gen), (-torch.rand(batch, n, generator=gen) * 0.1).cumsum(-1)
    Gamma = (gamma[..., :, None] - gamma[..., None, :]).tril().exp()
    return (beta * (k @ k.transpose(-1, -2)) * Gamma).tril(-1)


@pytest.mark.parametrize("n", [1, 5, 16, 23, 64])
def test_unit_lower_inverse_is_the_inverse(n):
    eye = torch.eye(n)
    for A in (ut_matrix(n, seed=n), strictly_lower((3, n, n), seed=n).float()):
        Y = unit_lower_inverse(A)
        assert torch.equal(Y.triu(1), torch.zeros_like(Y))
        assert torch.equal(Y.diagonal(dim1=-2, dim2=-1), torch.ones(3, n))
        expected = torch.linalg.solve_triangular(eye + A, eye.expand_as(A), upper=False, unitriangular=True)
        scale = 1 + expected.abs().max().item()  # random Gaussian A has inverses with entries in the hundreds
        assert max_abs_diff(Y, expected) <= 1e-5 * scale
        assert max_abs_diff(Y @ (eye + A), eye.expand_as(A)) <= 1e-5 * scale


@pytest.mark.parametrize("n", [3, 18])  # 18: one split into halves above a 16 x 16 block
def test_unit_lower_inverse_gradcheck(n):
    A = strictly_lower((1, n, n), seed=1).requires_grad_()
    # the input is taken strictly lower inside the checked function: gradcheck perturbs every entry
    assert torch.autograd.gradcheck(lambda A: unit_lower_inverse(A.tril(-1)), (A,), fast_mode=n > 8)


def scan_inputs(N=3, BH=2, C=4, Dk=3, Dv=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    U, W, q_in, k_out = rand(N, BH, C, Dv), rand(N, BH, C, Dk) * 0.5, rand(N, BH, C, Dk), rand(N, BH, C, Dk)
    P = rand(N, BH, C, C).tril()
    decay = torch.rand(N, BH, 1, 1, generator=gen, dtype=torch.float64)
    h = rand(BH, Dk, Dv)
    return [x.requires_grad_() for x in (U, W, P, q_in, k_out, decay, h)]


def test_scan_gradcheck():
    assert torch.autograd.gradcheck(scan_chunks, tuple(scan_inputs()))


def test_scan_equals_its_loop_without_gradients():
    inputs = scan_inputs(seed=2)
    o, h = scan_chunks(*inputs)
    with torch.no_grad():
        o_ng, h_ng = scan_chunks(*inputs)
    assert o.requires_grad and not o_ng.requires_grad
    assert torch.equal(o.detach(), o_ng) and torch.equal(h.detach(), h_ng)


def kernel_inputs(B=2, T=37, Hk=2, Hv=4, Dk=8, Dv=6, seed=9):
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, T, Hk, Dk, generator=gen), torch.randn(B, T, Hk, Dk, generator=gen)
    v = torch.randn(B, T, Hv, Dv, generator=gen)
    g, beta = -torch.rand(B, T, Hv, generator=gen) * 0.7, torch.rand(B, T, Hv, generator=gen)
    S0 = torch.randn(B, Hv, Dk, Dv, generator=gen)
    return q, k, v, g, beta, S0


def grads(fn, inputs, final_state=True, **kw):
    """Gradients of a fixed random weighting of the outputs with respect to every input."""
    leaves = [x.clone().requires_grad_() for x in inputs]
    q, k, v, g, beta, S0 = leaves
    o, S = fn(q, k, v, g, beta, initial_state=S0, output_final_state=final_state, use_qk_l2norm_in_kernel=True, **kw)
    gen = torch.Generator().manual_seed(0)
    loss = (o * torch.randn(o.shape, generator=gen)).sum()
    if final_state:
        loss = loss + (S * torch.randn(S.shape, generator=gen)).sum()
    loss.backward()
    return [x.grad for x in leaves]


@pytest.mark.parametrize("T,C", [(37, 8), (64, 64), (100, 16), (5, 64)])
@pytest.mark.parametrize("final_state", [True, False])
def test_gradients_equal_the_recurrent_form(T, C, final_state):
    inputs = kernel_inputs(T=T)
    ours = grads(chunk_gated_delta_rule, inputs, final_state, chunk_size=C)
    loop = grads(recurrent_gated_delta_rule, inputs, final_state)
    for name, a, b in zip("q k v g beta S0".split(), ours, loop, strict=True):
        assert max_abs_diff(a, b) <= 1e-4 * (1 + b.abs().max().item()), name


def test_gradients_equal_the_reference_chunked_kernel():
    inputs = kernel_inputs(B=1, T=130, Hk=2, Hv=4, Dk=16, Dv=16, seed=4)
    ours = grads(chunk_gated_delta_rule, inputs)
    ref = grads(ref_mod.torch_chunk_gated_delta_rule, inputs)
    for name, a, b in zip("q k v g beta S0".split(), ours, ref, strict=True):
        assert max_abs_diff(a, b) <= 1e-4 * (1 + b.abs().max().item()), name


def test_no_gradient_flows_where_none_is_asked():
    q, k, v, g, beta, S0 = kernel_inputs(T=20)
    v = v.clone().requires_grad_()
    o, _ = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=8, use_qk_l2norm_in_kernel=True)
    o.sum().backward()
    assert v.grad is not None and v.grad.shape == v.shape and q.grad is None


def test_the_final_state_is_the_callers_to_change():
    """A cache may overwrite the returned state in place; the saved states of the backward pass are apart."""
    q, k, v, g, beta, S0 = kernel_inputs(T=40)
    v = v.clone().requires_grad_()
    o, S = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=16, initial_state=S0, output_final_state=True,
                                  use_qk_l2norm_in_kernel=True)
    (grad_before,) = torch.autograd.grad(o.sum(), v, retain_graph=True)
    S.detach().zero_()  # as a cache would, between steps
    (grad_after,) = torch.autograd.grad(o.sum(), v)
    assert torch.equal(grad_before, grad_after)
