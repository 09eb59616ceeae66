"""Checks for the exercises of chapter 05, "The delta rule"."""

from __future__ import annotations

import math

import torch

from ..delta_rule import chunk_gated_delta_rule, delta_rule_mixing_matrix, l2_normalize, recurrent_gated_delta_rule
from . import UNANSWERED, check_close, report

# the constant log decay of exercise 5.3
HALF_LIFE_G = -0.05


def _step_cases(n: int = 4):
    """Seeded single-head cases (h, k, v, beta, alpha) with unit-norm keys; h = S^T has shape (Dk, Dv)."""
    gen = torch.Generator().manual_seed(5)
    for _ in range(n):
        Dk, Dv = 6, 5
        S = torch.randn(Dk, Dv, generator=gen)
        k = l2_normalize(torch.randn(Dk, generator=gen))
        v = torch.randn(Dv, generator=gen)
        beta = float(torch.rand(1, generator=gen))
        alpha = float(0.5 + 0.5 * torch.rand(1, generator=gen))
        yield S, k, v, beta, alpha


def _package_step(S, k, v, beta, alpha) -> torch.Tensor:
    """One token of the package's recurrent kernel (B = H = T = 1): the state after the write."""
    q = torch.zeros(1, 1, 1, k.numel())
    g = torch.full((1, 1, 1), math.log(alpha))
    _, S_new = recurrent_gated_delta_rule(q, k.view(1, 1, 1, -1), v.view(1, 1, 1, -1), g,
                                          torch.full((1, 1, 1), beta), initial_state=S[None, None],
                                          output_final_state=True)
    return S_new[0, 0]


def check_delta_step(fn) -> bool:
    """``fn(h, k, v, beta, alpha)`` -> the state after one gated delta-rule step (h = S^T is (Dk, Dv))."""
    hint = ("first forget (multiply h by alpha), then predict v from k with h^T k (h = S^T is (Dk, Dv)), and "
            "add beta times the outer product of k with the error.")
    if fn is Ellipsis:
        return report(False, f"{UNANSWERED} {hint}")
    for S, k, v, beta, alpha in _step_cases():
        try:
            answer = fn(S.clone(), k.clone(), v.clone(), beta, alpha)
        except Exception as err:  # a student's function may fail in any way: report it as a hint
            return report(False, f"your function raised {type(err).__name__}: {err}. {hint}")
        expected = _package_step(S, k, v, beta, alpha)
        if not isinstance(answer, torch.Tensor) or tuple(answer.shape) != tuple(expected.shape):
            return report(False, f"return a tensor of shape {tuple(expected.shape)} (Dk, Dv). {hint}")
        if (answer.float() - expected).abs().max() > 1e-5:
            return report(False, hint)
    return report(True, hint)


def _diagonal_case():
    gen = torch.Generator().manual_seed(52)
    T, D = 12, 8
    q = l2_normalize(torch.randn(T, D, generator=gen))
    k = l2_normalize(torch.randn(T, D, generator=gen))
    beta = torch.rand(T, generator=gen)
    g = -torch.rand(T, generator=gen)
    return q, k, beta, g


def check_mixing_diagonal(fn) -> bool:
    """``fn(q, k, beta, g)`` (one head, q/k (T, D) unit-norm) -> the diagonal (T,) of the mixing matrix M."""
    q, k, beta, g = _diagonal_case()
    M = delta_rule_mixing_matrix(q[None, :, None], k[None, :, None], g[None, :, None], beta[None, :, None])
    expected = M[0, 0].diagonal()
    hint = ("M = tril(QK^T * Gamma) (I + A)^-1 diag(beta): both triangular factors are lower triangular and the "
            "inverse has a unit diagonal; remember the kernel scales q by 1/sqrt(D), and Gamma_tt = 1.")
    if fn is Ellipsis:
        return report(False, f"{UNANSWERED} {hint}")
    try:
        answer = fn(q.clone(), k.clone(), beta.clone(), g.clone())
    except Exception as err:
        return report(False, f"your function raised {type(err).__name__}: {err}. {hint}")
    if not isinstance(answer, torch.Tensor) or tuple(answer.shape) != tuple(expected.shape):
        return report(False, f"return a tensor of shape {tuple(expected.shape)}. {hint}")
    return report(bool((answer.float() - expected).abs().max() <= 1e-5), hint)


def check_half_life(answer: float) -> bool:
    """Tokens until a memory written once has shrunk to half, for constant log decay ``HALF_LIFE_G``."""
    # measured with the package: write once, then 20 steps that only forget (beta = 0)
    T = 21
    k = torch.zeros(1, T, 1, 2)
    k[0, 0, 0, 0] = 1.0
    v = torch.zeros(1, T, 1, 1)
    v[0, 0] = 1.0
    beta = torch.zeros(1, T, 1)
    beta[0, 0] = 1.0
    g = torch.full((1, T, 1), HALF_LIFE_G)
    _, S_first = recurrent_gated_delta_rule(k[:, :1], k[:, :1], v[:, :1], g[:, :1], beta[:, :1],
                                            output_final_state=True)
    _, S_last = recurrent_gated_delta_rule(k, k, v, g, beta, output_final_state=True)
    per_step = (S_last.norm() / S_first.norm()).item() ** (1 / (T - 1))
    expected = math.log(0.5) / math.log(per_step)
    return check_close(answer, expected, "each token multiplies the state by exp(g); solve exp(g)^n = 1/2 for n "
                       "(a real number, not rounded).", rel=1e-3)


# (chunk length C, key size Dk, value size Dv): the reader's one-chunk step is checked on each
CHUNK_CASES = ((8, 6, 5), (16, 8, 8), (5, 4, 7))


def _chunk_case(C: int, Dk: int, Dv: int, seed: int):
    """One head, one chunk: q, k (C, Dk) as the kernel uses them (unit rows, q also times 1/sqrt(Dk)),
    v (C, Dv), g, beta (C,), an incoming state h (Dk, Dv); and the package's o (C, Dv) and new state."""
    gen = torch.Generator().manual_seed(seed)
    q = l2_normalize(torch.randn(C, Dk, generator=gen)) * Dk**-0.5
    k = l2_normalize(torch.randn(C, Dk, generator=gen))
    v = torch.randn(C, Dv, generator=gen)
    g = -torch.rand(C, generator=gen)
    beta = torch.rand(C, generator=gen)
    h = torch.randn(Dk, Dv, generator=gen)
    # the package scales q by 1/sqrt(Dk) itself: hand it the unscaled q
    o, h_new = chunk_gated_delta_rule((q * Dk**0.5)[None, :, None], k[None, :, None], v[None, :, None],
                                      g[None, :, None], beta[None, :, None], chunk_size=C,
                                      initial_state=h[None, None], output_final_state=True)
    return (q, k, v, g, beta, h), (o[0, :, 0], h_new[0, 0])


def check_chunk_step(fn) -> bool:
    """``fn(q, k, v, g, beta, h)`` -> ``(o, h_new)``: one chunk of the chunked kernel for one head.

    ``q, k (C, Dk)`` as the kernel uses them (unit rows, ``q`` already times ``1/sqrt(Dk)``), ``v (C, Dv)``,
    ``g, beta (C,)``, ``h (Dk, Dv)`` the state carried in; ``o (C, Dv)`` and the state carried out.
    """
    hint = ("gamma = cumsum(g); Gamma_ij = exp(gamma_i - gamma_j) below and on the diagonal, 0 above; "
            "A = strictly_lower(diag(beta) (K K^T * Gamma)); T = (I + A)^-1; U = T diag(beta) V, "
            "W = T diag(beta exp(gamma)) K; V' = U - W h; O = diag(exp(gamma)) Q h + tril(Q K^T * Gamma) V'; "
            "h_new = exp(gamma_C) h + (diag(exp(gamma_C - gamma)) K)^T V'.")
    if fn is Ellipsis:
        return report(False, f"{UNANSWERED} {hint}")
    for seed, (C, Dk, Dv) in enumerate(CHUNK_CASES):
        inputs, (o, h_new) = _chunk_case(C, Dk, Dv, seed)
        try:
            answer = fn(*(t.clone() for t in inputs))
        except Exception as err:  # a reader's function may fail in any way: report it as a hint
            return report(False, f"your function raised {type(err).__name__}: {err}. {hint}")
        if not (isinstance(answer, tuple) and len(answer) == 2 and all(isinstance(t, torch.Tensor) for t in answer)
                and answer[0].shape == o.shape and answer[1].shape == h_new.shape):
            return report(False, f"return (o, h_new) of shapes {tuple(o.shape)} and {tuple(h_new.shape)}. {hint}")
        if (answer[0].float() - o).abs().max() > 1e-5:
            return report(False, f"o is off (C = {C}, Dk = {Dk}, Dv = {Dv}). {hint}")
        if (answer[1].float() - h_new).abs().max() > 1e-5:
            return report(False, f"o is right but h_new is off (C = {C}). {hint}")
    return report(True, hint)
