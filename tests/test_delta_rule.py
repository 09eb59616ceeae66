"""Tests for qwen3next.delta_rule: the three forms of the gated delta rule agree with each other and with
the reference kernels (any length, chunk size, head sharing, carried state, padding, gradients, bf16)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.qwen3_next import modeling_qwen3_next as ref_mod

from qwen3next.delta_rule import (
    attention_form_gated_delta_rule,
    chunk_gated_delta_rule,
    delta_rule_mixing_matrix,
    l2_normalize,
    recurrent_gated_delta_rule,
)
from qwen3next.reference import max_abs_diff

TOL = 1e-5


def make_inputs(B=2, T=20, Hk=2, Hv=4, Dk=8, Dv=6, seed=0, dtype=torch.float32, state=False):
    """Random kernel inputs in the model's regime: g <= 0, beta in (0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, Hk, Dk, generator=gen)
    k = torch.randn(B, T, Hk, Dk, generator=gen)
    v = torch.randn(B, T, Hv, Dv, generator=gen)
    g = -torch.rand(B, T, Hv, generator=gen) * 0.7
    beta = torch.rand(B, T, Hv, generator=gen)
    S0 = torch.randn(B, Hv, Dk, Dv, generator=gen) if state else None
    return [x.to(dtype) for x in (q, k, v, g, beta)] + [S0]


# ---------------------------------------------------------------------------------- the kernels
@pytest.mark.parametrize("T", [1, 2, 63, 64, 65, 200])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_equals_recurrent_equals_attention_form(T, with_state):
    q, k, v, g, beta, S0 = make_inputs(T=T, state=with_state, seed=T)
    kw = dict(initial_state=S0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    o_rec, S_rec = recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    assert o_rec.shape == (2, T, 4, 6) and S_rec.shape == (2, 4, 8, 6) and S_rec.dtype == torch.float32
    o_att, S_att = attention_form_gated_delta_rule(q, k, v, g, beta, **kw)
    assert max_abs_diff(o_att, o_rec) <= TOL and max_abs_diff(S_att, S_rec) <= TOL
    for C in (8, 16, 64):
        o_chk, S_chk = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=C, **kw)
        assert max_abs_diff(o_chk, o_rec) <= TOL, f"chunk {C}"
        assert max_abs_diff(S_chk, S_rec) <= TOL, f"chunk {C}"


@pytest.mark.parametrize("Hk,Hv", [(3, 3), (1, 4)])
def test_without_kernel_l2norm_and_equal_heads(Hk, Hv):
    q, k, v, g, beta, S0 = make_inputs(T=50, Hk=Hk, Hv=Hv, Dk=5, Dv=7, state=True)
    q, k = l2_normalize(q), l2_normalize(k)  # keys of norm 1 keep the un-normalised kernel stable
    kw = dict(initial_state=S0, output_final_state=True)
    o_rec, S_rec = recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    o_chk, S_chk = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=16, **kw)
    assert max_abs_diff(o_chk, o_rec) <= TOL and max_abs_diff(S_chk, S_rec) <= TOL


@pytest.mark.parametrize("l2", [True, False])
def test_kernels_match_reference(l2):
    q, k, v, g, beta, S0 = make_inputs(T=100, state=True, seed=3)
    if not l2:
        q, k = l2_normalize(q), l2_normalize(k)
    kw = dict(initial_state=S0, output_final_state=True, use_qk_l2norm_in_kernel=l2)
    o, S = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=32, **kw)
    o_ref, S_ref = ref_mod.torch_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=32, **kw)
    assert max_abs_diff(o, o_ref) <= TOL and max_abs_diff(S, S_ref) <= TOL
    o, S = recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    o_ref, S_ref = ref_mod.torch_recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    assert max_abs_diff(o, o_ref) <= TOL and max_abs_diff(S, S_ref) <= TOL


def test_no_final_state_unless_asked():
    q, k, v, g, beta, _ = make_inputs(T=5)
    assert chunk_gated_delta_rule(q, k, v, g, beta)[1] is None
    assert recurrent_gated_delta_rule(q, k, v, g, beta)[1] is None


def test_bfloat16_inputs_keep_a_float32_state():
    q, k, v, g, beta, S0 = make_inputs(T=70, state=True, dtype=torch.bfloat16)
    kw = dict(initial_state=S0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    o, S = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=16, **kw)
    o_rec, S_rec = recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32 and S_rec.dtype == torch.float32
    # the same bf16 numbers computed in fp32: only the final rounding of o differs
    o32, S32 = recurrent_gated_delta_rule(*(x.float() for x in (q, k, v, g, beta)), **kw)
    assert max_abs_diff(S, S32) <= 1e-4
    assert max_abs_diff(o, o32) <= 2e-2 and max_abs_diff(o_rec, o32) <= 2e-2
    o_ref, S_ref = ref_mod.torch_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=16, **kw)
    assert max_abs_diff(o, o_ref) <= 2e-2 and max_abs_diff(S, S_ref) <= 1e-4


@pytest.mark.parametrize("split", [1, 30, 64])
def test_split_sequence_with_carried_state_equals_whole(split):
    q, k, v, g, beta, S0 = make_inputs(T=97, state=True, seed=5)
    kw = dict(output_final_state=True, use_qk_l2norm_in_kernel=True)
    o_all, S_all = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=S0, **kw)
    parts = [x[:, :split] for x in (q, k, v, g, beta)], [x[:, split:] for x in (q, k, v, g, beta)]
    o1, S1 = chunk_gated_delta_rule(*parts[0], initial_state=S0, chunk_size=16, **kw)
    o2, S2 = recurrent_gated_delta_rule(*parts[1], initial_state=S1, **kw)
    assert max_abs_diff(torch.cat([o1, o2], 1), o_all) <= TOL and max_abs_diff(S2, S_all) <= TOL


def test_zero_padding_never_changes_the_state():
    q, k, v, g, beta, S0 = make_inputs(T=40, state=True, seed=7)
    kw = dict(initial_state=S0, output_final_state=True, use_qk_l2norm_in_kernel=False)
    q, k = l2_normalize(q), l2_normalize(k)
    o, S = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64, **kw)  # 24 padded positions inside
    # explicit padding tokens (k = 0, beta = 0, g = 0) appended by hand: same outputs, same state
    pad = lambda x: torch.cat([x, torch.zeros_like(x[:, :25])], 1)
    v_noise = torch.cat([v, torch.randn_like(v[:, :25])], 1)  # whatever the padded values are
    o_p, S_p = chunk_gated_delta_rule(pad(q), pad(k), v_noise, pad(g), pad(beta), chunk_size=16, **kw)
    assert max_abs_diff(o_p[:, :40], o) <= TOL and max_abs_diff(S_p, S) <= TOL
    _, S_r = recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    assert max_abs_diff(S, S_r) <= TOL


def test_gradients_chunked_equal_recurrent():
    inputs = make_inputs(T=37, state=True, seed=9)
    leaves_c = [x.clone().requires_grad_() for x in inputs]
    leaves_r = [x.clone().requires_grad_() for x in inputs]
    w_o, w_S = torch.randn(2, 37, 4, 6), torch.randn(2, 4, 8, 6)
    q, k, v, g, beta, S0 = leaves_c
    o, S = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=8, initial_state=S0, output_final_state=True,
                                  use_qk_l2norm_in_kernel=True)
    ((o * w_o).sum() + (S * w_S).sum()).backward()
    q, k, v, g, beta, S0 = leaves_r
    o, S = recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=S0, output_final_state=True,
                                      use_qk_l2norm_in_kernel=True)
    ((o * w_o).sum() + (S * w_S).sum()).backward()
    for name, a, b in zip("q k v g beta S0".split(), leaves_c, leaves_r, strict=True):
        assert a.grad is not None and max_abs_diff(a.grad, b.grad) <= 1e-4 * (1 + b.grad.abs().max().item()), name


def test_mixing_matrix_reproduces_the_output_and_is_causal():
    q, k, v, g, beta, _ = make_inputs(T=30, seed=11)
    M = delta_rule_mixing_matrix(q, k, g, beta, use_qk_l2norm_in_kernel=True)  # (B, Hv, T, T)
    assert M.shape == (2, 4, 30, 30)
    assert torch.equal(M.triu(1), torch.zeros_like(M))  # no token reads the future
    o, _ = recurrent_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)
    assert max_abs_diff((M @ v.transpose(1, 2)).transpose(1, 2), o) <= TOL


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 90), C=st.sampled_from([1, 4, 7, 32]), r=st.sampled_from([1, 2]),
       Dk=st.integers(1, 9), Dv=st.integers(1, 9), seed=st.integers(0, 1000))
def test_property_chunk_size_does_not_matter(T, C, r, Dk, Dv, seed):
    q, k, v, g, beta, S0 = make_inputs(B=1, T=T, Hk=2, Hv=2 * r, Dk=Dk, Dv=Dv, seed=seed, state=True)
    kw = dict(initial_state=S0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    o_rec, S_rec = recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    o_chk, S_chk = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=C, **kw)
    assert max_abs_diff(o_chk, o_rec) <= TOL and max_abs_diff(S_chk, S_rec) <= TOL


def test_bad_inputs_raise_clear_errors():
    q, k, v, g, beta, _ = make_inputs(T=4)
    with pytest.raises(ValueError, match="value heads"):
        chunk_gated_delta_rule(q, k, v[:, :, :3], g[..., :3], beta[..., :3])
    with pytest.raises(ValueError, match="^k:"):
        chunk_gated_delta_rule(q, k[..., :4], v, g, beta)
    with pytest.raises(ValueError, match="^beta:"):
        recurrent_gated_delta_rule(q, k, v, g, beta[:, :3])
    with pytest.raises(ValueError, match="initial_state"):
        chunk_gated_delta_rule(q, k, v, g, beta, initial_state=torch.zeros(2, 4, 6, 8))
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=0)
    with pytest.raises(ValueError, match="^q:"):
        chunk_gated_delta_rule(q[0], k, v, g, beta)


# ------------------------------------------------------------------------------ causal conv


def test_single_step_matches_the_loop_and_updates_the_state_in_place():
    """``recurrent_gated_delta_step`` is one iteration of ``recurrent_gated_delta_rule`` (with
    L2-normalised q and k), Hv a multiple of Hk, writing the new state into the tensor it was given."""
    from qwen3next.delta_rule import recurrent_gated_delta_step

    torch.manual_seed(0)
    B, Hk, Hv, Dk, Dv = 2, 2, 4, 8, 6
    q, k = torch.randn(B, 1, Hk, Dk), torch.randn(B, 1, Hk, Dk)
    v = torch.randn(B, 1, Hv, Dv)
    g, beta = -torch.rand(B, 1, Hv), torch.rand(B, 1, Hv)
    h0 = torch.randn(B, Hv, Dk, Dv)
    o_loop, h_loop = recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                                use_qk_l2norm_in_kernel=True)
    h = h0.clone()
    o = recurrent_gated_delta_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], h)
    assert o.shape == (B, Hv, Dv)
    assert (o - o_loop[:, 0]).abs().max() <= 1e-5 and (h - h_loop).abs().max() <= 1e-5


def test_single_step_takes_broadcast_gates_and_names_a_bad_state():
    """Gates expanded from one value (not contiguous) are fine; a state that cannot be updated in place is
    refused by name."""
    from qwen3next.delta_rule import recurrent_gated_delta_step

    q, k, v, g, beta, _ = make_inputs(B=3, T=1, Hk=2, Hv=4)
    h = torch.zeros(3, 4, 8, 6)
    g_b, beta_b = g[:1, 0, :1].expand(3, 4), beta[:1, 0, :1].expand(3, 4)  # one value for every row and head
    o = recurrent_gated_delta_step(q[:, 0], k[:, 0], v[:, 0], g_b, beta_b, h.clone())
    o_ref = recurrent_gated_delta_step(q[:, 0], k[:, 0], v[:, 0], g_b.contiguous(), beta_b.contiguous(), h.clone())
    assert torch.equal(o, o_ref)
    with pytest.raises(ValueError, match="h: expected a contiguous float32"):
        recurrent_gated_delta_step(q[:, 0], k[:, 0], v[:, 0], g_b, beta_b, h.transpose(2, 3))
