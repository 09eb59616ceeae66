"""The Gated DeltaNet: delta-rule kernels, the short causal convolution, and the full layer with its state.

Papers: Schlag, Irie & Schmidhuber, "Linear Transformers Are Secretly Fast Weight Programmers" (2021)
for the delta rule; Yang, Wang, Zhang, Shen & Kim, "Parallelizing Linear Transformers with the Delta
Rule over Sequence Length" (2024) for the chunked (WY / UT transform) form; Yang, Kautz & Hatamizadeh,
"Gated Delta Networks: Improving Mamba2 with Delta Rule" (2025) for the decay gate.
Mirrors ``Qwen3NextGatedDeltaNet``, ``torch_chunk_gated_delta_rule``, ``torch_recurrent_gated_delta_rule``,
``causal_conv1d_fn`` and ``causal_conv1d_update`` in ``transformers/models/qwen3_next``.

The recurrence, per value head, with the state kept in float32 as ``h = S^T`` of shape ``(Dk, Dv)``
(``S`` is the book's ``d_v x d_k`` memory, ``o_t = S_t q_t``; ``h`` lets the token-per-row ``K`` and
``V`` of a sequence multiply it directly)::

    h_t = exp(g_t) h_{t-1}                                  # forget (gate, g_t <= 0)
    h_t = h_t + k_t (beta_t (v_t - h_t^T k_t))^T            # delta rule: correct what h predicts for k_t
    o_t = h_t^T q_t

Three ways to compute it, all with the reference's arguments and shapes:

* :func:`recurrent_gated_delta_rule`: the loop above, one token at a time (decoding);
  :func:`recurrent_gated_delta_step` is its body for a single token, updating a cached state in place;
* :func:`chunk_gated_delta_rule`: the chunked form; inside a chunk the sequential updates are folded
  into matrix products by the UT transform, across chunks the state is carried (prefill, training);
* :func:`attention_form_gated_delta_rule`: one ``(T, T)`` token-mixing matrix, like softmax attention
  without the softmax (quadratic; for teaching and tests). :func:`delta_rule_mixing_matrix` returns it.

Then :func:`causal_conv1d` (depthwise, causal, with a state of the last ``K`` inputs),
:class:`DeltaNetState` (one layer's cache) and :class:`GatedDeltaNet` (the layer).

Leaves out: the fused Triton / CUDA kernels of flash-linear-attention and causal-conv1d (plain
PyTorch only), variable-length packing (``cu_seqlens``) and the reference's "record past" cache mode
used for speculative-decoding rollbacks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import Qwen3NextConfig
from .norms import RMSNormGated

__all__ = [
    "l2_normalize",
    "recurrent_gated_delta_rule",
    "chunk_gated_delta_rule",
    "attention_form_gated_delta_rule",
    "delta_rule_mixing_matrix",
    "causal_conv1d",
    "causal_conv1d_step",
    "recurrent_gated_delta_step",
    "DeltaNetState",
    "GatedDeltaNet",
]


# ------------------------------------------------------------------------------------------ inputs
def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(sum(x^2) + eps)`` over the last dimension (the reference's ``l2norm``)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_inputs(q, k, v, g, beta, initial_state) -> tuple[int, int, int, int, int, int]:
    """Validate the kernel arguments; return ``B, T, Hk, Hv, Dk, Dv``."""
    for name, t, nd in (("q", q, 4), ("k", k, 4), ("v", v, 4), ("g", g, 3), ("beta", beta, 3)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, found {type(t).__name__}")
        if t.dim() != nd:
            raise ValueError(f"{name}: expected {nd} dimensions, found shape {_shape(t)}")
    B, T, Hk, Dk = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k: expected the shape of q {_shape(q)} (B, T, Hk, Dk), found {_shape(k)}")
    if v.shape[:2] != (B, T):
        raise ValueError(f"v: expected (B, T) = {(B, T)} in front, found shape {_shape(v)}")
    Hv, Dv = v.shape[2], v.shape[3]
    if Hv % Hk:
        raise ValueError(f"v: {Hv} value heads cannot share {Hk} key heads evenly (Hv must be a multiple of Hk)")
    for name, t in (("g", g), ("beta", beta)):
        if t.shape != (B, T, Hv):
            raise ValueError(f"{name}: expected shape (B, T, Hv) = {(B, T, Hv)}, found {_shape(t)}")
    if initial_state is not None and initial_state.shape != (B, Hv, Dk, Dv):
        raise ValueError(
            f"initial_state: expected shape (B, Hv, Dk, Dv) = {(B, Hv, Dk, Dv)}, found {_shape(initial_state)}"
        )
    return B, T, Hk, Hv, Dk, Dv


def _to_heads_first(q, k, v, g, beta, use_qk_l2norm: bool):
    """fp32, heads before time, q/k repeated to the value heads, normalised and q scaled by 1/sqrt(Dk)."""
    Hk, Hv = q.shape[2], v.shape[2]
    q, k, v = (x.transpose(1, 2).float() for x in (q, k, v))  # (B, H, T, D)
    g, beta = (x.transpose(1, 2).float() for x in (g, beta))  # (B, Hv, T)
    if use_qk_l2norm:  # normalise before repeating: the same numbers, half the work
        q, k = l2_normalize(q), l2_normalize(k)
    if Hv != Hk:  # value head j reads key head j // (Hv / Hk)
        q, k = (x.repeat_interleave(Hv // Hk, dim=1) for x in (q, k))
    q = q * q.shape[-1] ** -0.5
    return q, k, v, g, beta


def _initial_state(initial_state, shape, device) -> torch.Tensor:
    if initial_state is None:
        return torch.zeros(shape, dtype=torch.float32, device=device)
    return initial_state.to(device=device, dtype=torch.float32)


# ------------------------------------------------------------------------------- recurrent form
def recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gated delta rule one token at a time.

    q, k: (B, T, Hk, Dk); v: (B, T, Hv, Dv) with Hv a multiple of Hk; g (log decay, <= 0) and beta:
    (B, T, Hv); initial_state: (B, Hv, Dk, Dv). Returns o (B, T, Hv, Dv) in v's dtype and the final
    state (B, Hv, Dk, Dv) in float32 if ``output_final_state`` else None.
    """
    B, T, Hk, Hv, Dk, Dv = _check_inputs(q, k, v, g, beta, initial_state)
    out_dtype = v.dtype
    q, k, v, g, beta = _to_heads_first(q, k, v, g, beta, use_qk_l2norm_in_kernel)
    h = _initial_state(initial_state, (B, Hv, Dk, Dv), v.device)  # (B, Hv, Dk, Dv)
    alpha = g.exp()  # (B, Hv, T) per-step decay in (0, 1]
    outputs = []
    for t in range(T):
        q_t, k_t, v_t = q[:, :, t], k[:, :, t], v[:, :, t]  # (B, Hv, D)
        h = h * alpha[:, :, t, None, None]  # forget
        prediction = (k_t.unsqueeze(-2) @ h).squeeze(-2)  # (B, Hv, Dv): what h recalls for k_t
        delta = beta[:, :, t, None] * (v_t - prediction)  # (B, Hv, Dv): the correction to write
        h = h + k_t.unsqueeze(-1) * delta.unsqueeze(-2)  # rank-1 update k_t delta^T
        outputs.append((q_t.unsqueeze(-2) @ h).squeeze(-2))  # (B, Hv, Dv): read with q_t
    o = torch.stack(outputs, dim=1) if T else v.new_zeros(B, 0, Hv, Dv)  # (B, T, Hv, Dv)
    return o.to(out_dtype), h if output_final_state else None


def recurrent_gated_delta_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, h: torch.Tensor
) -> torch.Tensor:
    """One token of :func:`recurrent_gated_delta_rule` (L2-normalised q and k), updating ``h`` in place.

    q, k: (B, Hk, Dk); v: (B, Hv, Dv); g, beta: (B, Hv); h: (B, Hv, Dk, Dv) float32, contiguous.
    Returns o (B, Hv, Dv) in v's dtype. The decoding path: no time axis, no copy of the state, and the
    r = Hv / Hk value heads of a key head read its q and k by broadcasting instead of repeating them.
    """
    B, Hk, Dk = q.shape
    Hv, Dv = v.shape[1], v.shape[2]
    r = Hv // Hk
    q = l2_normalize(q.float()) * Dk**-0.5  # (B, Hk, Dk)
    k = l2_normalize(k.float())
    h_grouped = h.view(B, Hk, r, Dk, Dv)  # value head j of key head i is row i * r + j
    h_grouped.mul_(g.float().exp().view(B, Hk, r, 1, 1))  # forget
    k_row = k.view(B, Hk, 1, 1, Dk)
    prediction = k_row @ h_grouped  # (B, Hk, r, 1, Dv): what h recalls for k
    delta = beta.float().view(B, Hk, r, 1, 1) * (v.float().view(B, Hk, r, 1, Dv) - prediction)  # (B, Hk, r, 1, Dv)
    h_grouped.add_(k.view(B, Hk, 1, Dk, 1) * delta)  # rank-1 update k delta^T
    o = q.view(B, Hk, 1, 1, Dk) @ h_grouped  # (B, Hk, r, 1, Dv): read with q
    return o.view(B, Hv, Dv).to(v.dtype)


# --------------------------------------------------------------------------------- chunked form
def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gated delta rule in chunks of ``chunk_size`` tokens (same arguments and results as the loop).

    Inside a chunk with cumulative log decay ``gamma`` (C,), decay matrix ``Gamma_ij = exp(gamma_i -
    gamma_j)`` (i >= j) and ``A = strictly_lower(diag(beta) (K K^T * Gamma))``, the C sequential
    updates collapse into (UT transform)::

        U = (I + A)^-1 diag(beta) V                 W = (I + A)^-1 diag(beta exp(gamma)) K
        V' = U - W h                                 (what is left to write once h is accounted for)
        O = diag(exp(gamma)) Q h + tril(Q K^T * Gamma) V'
        h <- exp(gamma_C) h + (diag(exp(gamma_C - gamma)) K)^T V'

    Only the last line is sequential across chunks, and it is a matrix product, not a token loop.
    """
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer, found {chunk_size!r}")
    B, T, Hk, Hv, Dk, Dv = _check_inputs(q, k, v, g, beta, initial_state)
    out_dtype, r = v.dtype, Hv // Hk
    h = _initial_state(initial_state, (B, Hv, Dk, Dv), v.device)
    if T == 0:
        return v.new_zeros(B, 0, Hv, Dv).to(out_dtype), h if output_final_state else None
    C = min(chunk_size, T)  # a sequence shorter than a chunk is one chunk of its own length (no padding work)
    N = -(-T // C)  # chunks, the last one padded

    # One copy per input into a chunk-major fp32 layout (N, B, H, C, D): each step of the scan then reads
    # one contiguous block. Padding is k = 0, beta = 0, g = 0: it writes nothing and forgets nothing.
    q, k = _chunked(q, N, C), _chunked(k, N, C)  # (N, B, Hk, C, Dk)
    v = _chunked(v, N, C)  # (N, B, Hv, C, Dv)
    g, beta = _chunked(g.unsqueeze(-1), N, C)[..., 0], _chunked(beta.unsqueeze(-1), N, C)[..., 0]  # (N, B, Hv, C)
    if use_qk_l2norm_in_kernel:
        q, k = l2_normalize(q), l2_normalize(k)
    q = q * Dk**-0.5
    # value heads grouped under their key head: (N, B, Hk, r, ...); q and k broadcast over r, never copied
    q, k = q.unsqueeze(3), k.unsqueeze(3)  # (N, B, Hk, 1, C, Dk)
    v = v.view(N, B, Hk, r, C, Dv)
    g, beta = g.view(N, B, Hk, r, C), beta.view(N, B, Hk, r, C)

    gamma = g.cumsum(-1)  # (N, B, Hk, r, C) log decay from the chunk start to each position
    lower = torch.ones(C, C, dtype=torch.bool, device=v.device).tril()
    # Gamma_ij = exp(gamma_i - gamma_j) for i >= j; masking before exp keeps the upper half from overflowing
    Gamma = (gamma.unsqueeze(-1) - gamma.unsqueeze(-2)).masked_fill(~lower, -math.inf).exp()  # (..., r, C, C)

    # UT transform: T_inv = (I + strictly_lower(diag(beta) (K K^T * Gamma)))^-1, then U and W are products
    A = (k @ k.transpose(-1, -2) * Gamma * beta.unsqueeze(-1)).tril(-1)  # (N, B, Hk, r, C, C)
    I = torch.eye(C, dtype=A.dtype, device=A.device)
    T_inv = torch.linalg.solve_triangular(I + A, I.expand_as(A), upper=False, unitriangular=True)
    # T diag(beta) V and T diag(beta exp(gamma)) K: scaling the columns of T (C x C) is cheaper than the
    # rows of V and K (C x D); and the r value heads of a key head share K, so W is one product per key head
    U = (T_inv * beta.unsqueeze(-2)) @ v  # (N, B, Hk, r, C, Dv)
    W = (T_inv * (beta * gamma.exp()).unsqueeze(-2)).reshape(N, B, Hk, r * C, C) @ k.squeeze(3)  # (N, B, Hk, rC, Dk)

    P = q @ k.transpose(-1, -2) * Gamma  # (N, B, Hk, r, C, C) intra-chunk "attention", lower triangular
    q_in = q * gamma.exp().unsqueeze(-1)  # (N, B, Hk, r, C, Dk) reads the state carried into the chunk
    k_out = k * (gamma[..., -1:] - gamma).exp().unsqueeze(-1)  # (N, B, Hk, r, C, Dk) writes the state
    chunk_decay = gamma[..., -1].exp()  # (N, B, Hk, r)

    BH = B * Hv
    U, W, P, q_in, k_out = (x.reshape(N, BH, C, x.shape[-1]) for x in (U, W, P, q_in, k_out))
    chunk_decay = chunk_decay.reshape(N, BH, 1, 1)
    h = h.reshape(BH, Dk, Dv)
    o = U.new_empty(B, N, C, Hv, Dv)  # written chunk by chunk in the output's layout
    for n in range(N):  # the only sequential part: one state hand-over per chunk
        v_new = torch.baddbmm(U[n], W[n], h, alpha=-1)  # (BH, C, Dv) = U - W h
        o_n = torch.baddbmm(q_in[n] @ h, P[n], v_new)  # (BH, C, Dv)
        o[:, n] = o_n.view(B, Hv, C, Dv).transpose(1, 2)
        h = torch.baddbmm(h * chunk_decay[n], k_out[n].transpose(-1, -2), v_new)  # (BH, Dk, Dv)

    o = o.view(B, N * C, Hv, Dv)[:, :T].to(out_dtype)  # (B, T, Hv, Dv)
    return o, h.reshape(B, Hv, Dk, Dv) if output_final_state else None


def _chunked(x: torch.Tensor, N: int, C: int) -> torch.Tensor:
    """(B, T, H, D) -> (N, B, H, C, D) float32, zero-padded to N * C steps, in a single copy."""
    B, T, H, D = x.shape
    out = x.new_empty((N, B, H, C, D), dtype=torch.float32)
    whole, rest = divmod(T, C)
    if whole:
        out[:whole].copy_(x[:, : whole * C].reshape(B, whole, C, H, D).permute(1, 0, 3, 2, 4))
    if rest:
        out[whole, :, :, :rest].copy_(x[:, whole * C :].permute(0, 2, 1, 3))
        out[whole, :, :, rest:].zero_()
    return out


# ------------------------------------------------------------------------------ attention form
def _mixing_matrices(q, k, g, beta):
    """Heads-first inputs -> ``gamma`` (B, Hv, T), ``tril(Q K^T * Gamma)`` and ``T_inv = (I + A)^-1`` (B, Hv, T, T)."""
    T = q.shape[-2]
    gamma = g.cumsum(-1)  # (B, Hv, T)
    lower = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    Gamma = (gamma.unsqueeze(-1) - gamma.unsqueeze(-2)).masked_fill(~lower, -math.inf).exp()  # (B, Hv, T, T)
    A = (beta.unsqueeze(-1) * (k @ k.transpose(-1, -2)) * Gamma).tril(-1)  # (B, Hv, T, T)
    I = torch.eye(T, dtype=q.dtype, device=q.device)
    T_inv = torch.linalg.solve_triangular(I + A, I.expand_as(A), upper=False, unitriangular=True)
    QK = (q @ k.transpose(-1, -2)) * Gamma  # (B, Hv, T, T), lower triangular
    return gamma, QK, T_inv


def delta_rule_mixing_matrix(
    q: torch.Tensor,
    k: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    use_qk_l2norm_in_kernel: bool = False,
) -> torch.Tensor:
    """The (B, Hv, T, T) lower-triangular matrix ``M`` with ``o = M v`` when the state starts at zero.

    ``M = tril(Q K^T * Gamma) (I + strictly_lower(diag(beta) (K K^T * Gamma)))^-1 diag(beta)``:
    softmax attention's ``softmax(Q K^T)`` replaced by a decayed ``Q K^T`` times the inverse of the
    keys' own (decayed) overlaps, which is what makes the delta rule overwrite instead of pile up.
    """
    v_dummy = q.new_zeros(*g.shape, 1)  # (B, T, Hv, 1): only the head count matters here
    _check_inputs(q, k, v_dummy, g, beta, None)
    q, k, _, g, beta = _to_heads_first(q, k, v_dummy, g, beta, use_qk_l2norm_in_kernel)
    _, QK, T_inv = _mixing_matrices(q, k, g, beta)
    return QK @ T_inv * beta.unsqueeze(-2)  # (B, Hv, T, T)


def attention_form_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gated delta rule as one quadratic "attention" over the whole sequence (the chunked form
    with a single chunk, and the inverse written out). O(T^2) memory: for teaching and tests."""
    B, T, Hk, Hv, Dk, Dv = _check_inputs(q, k, v, g, beta, initial_state)
    out_dtype = v.dtype
    q, k, v, g, beta = _to_heads_first(q, k, v, g, beta, use_qk_l2norm_in_kernel)
    h0 = _initial_state(initial_state, (B, Hv, Dk, Dv), v.device)  # (B, Hv, Dk, Dv)
    gamma, QK, T_inv = _mixing_matrices(q, k, g, beta)
    decay_in = gamma.exp().unsqueeze(-1)  # (B, Hv, T, 1) decay since the start, applied to h0
    # the values still to be written once the initial state's own prediction is subtracted
    v_new = T_inv @ (beta.unsqueeze(-1) * (v - decay_in * (k @ h0)))  # (B, Hv, T, Dv)
    o = decay_in * (q @ h0) + QK @ v_new  # (B, Hv, T, Dv)
    h = None
    if output_final_state:
        decay_to_end = (gamma[..., -1:] - gamma).exp().unsqueeze(-1) if T else gamma.unsqueeze(-1)
        total = gamma[..., -1].exp()[..., None, None] if T else 1.0
        h = total * h0 + (decay_to_end * k).transpose(-1, -2) @ v_new
    return o.transpose(1, 2).contiguous().to(out_dtype), h


# ---------------------------------------------------------------------------- causal convolution
def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal convolution of ``x`` (B, C, T) with ``weight`` (C, K), continuing from ``state``.

    ``state`` (B, C, K) holds the last K inputs seen before ``x`` (zeros, i.e. left padding, when None).
    Returns ``y`` (B, C, T) (no activation) and the new state: the last K columns of ``[state, x]``.
    Computed in the weight's dtype and cast back to ``x``'s, like the reference.
    """
    if x.dim() != 3:
        raise ValueError(f"x: expected (B, C, T), found shape {_shape(x)}")
    B, C, T = x.shape
    if weight.dim() != 2 or weight.shape[0] != C:
        raise ValueError(f"weight: expected (C, K) with C = {C}, found shape {_shape(weight)}")
    K = weight.shape[1]
    if state is None:
        state = x.new_zeros(B, C, K)
    elif state.shape != (B, C, K):
        raise ValueError(f"state: expected (B, C, K) = {(B, C, K)}, found shape {_shape(state)}")
    window = torch.cat([state.to(x.dtype), x], dim=-1)  # (B, C, K + T)
    y = F.conv1d(window.to(weight.dtype), weight.unsqueeze(1), groups=C)[..., -T:]  # (B, C, T)
    return y.to(x.dtype), window[..., -K:].clone()


def causal_conv1d_step(x_t: torch.Tensor, weight: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """One decoding step of :func:`causal_conv1d`: ``x_t`` (B, C) -> ``y_t`` (B, C); ``state`` (B, C, K)
    is shifted left by one and updated in place (a dot product of the last K inputs with the kernel)."""
    if state.shape[:2] != x_t.shape or state.shape[-1] != weight.shape[-1]:
        raise ValueError(f"state: expected (B, C, K) = {(*x_t.shape, weight.shape[-1])}, found {_shape(state)}")
    state.copy_(torch.cat([state[..., 1:], x_t.unsqueeze(-1).to(state.dtype)], dim=-1))
    return (state.to(weight.dtype) * weight).sum(-1).to(x_t.dtype)  # (B, C)


# ------------------------------------------------------------------------------------- the state
class DeltaNetState:
    """One DeltaNet layer's cache: constant size whatever the sequence length.

    ``conv_state`` (B, conv_dim, K): the last K pre-convolution inputs (activation dtype);
    ``recurrent_state`` (B, Hv, Dk, Dv): the delta-rule memory, float32. Both None until the first call.
    """

    def __init__(self, conv_state: torch.Tensor | None = None, recurrent_state: torch.Tensor | None = None):
        self.conv_state = conv_state
        self.recurrent_state = recurrent_state

    @property
    def is_empty(self) -> bool:
        return self.conv_state is None and self.recurrent_state is None

    def reset(self) -> None:
        self.conv_state = None
        self.recurrent_state = None

    def select(self, batch_index) -> None:
        """Keep (and reorder) the batch rows ``batch_index`` (a list or LongTensor), in place."""
        for name in ("conv_state", "recurrent_state"):
            t = getattr(self, name)
            if t is not None:
                index = torch.as_tensor(batch_index, dtype=torch.long, device=t.device)
                if index.dim() != 1:
                    raise ValueError(f"batch_index: expected a 1-D list of rows, found shape {_shape(index)}")
                if index.numel() and (index.min() < 0 or index.max() >= t.shape[0]):
                    raise IndexError(f"batch_index: rows must be in 0..{t.shape[0] - 1}, found {index.tolist()}")
                setattr(self, name, t.index_select(0, index))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.conv_state, self.recurrent_state) if t is not None)

    def __repr__(self) -> str:
        shapes = {n: None if t is None else _shape(t) for n, t in
                  (("conv_state", self.conv_state), ("recurrent_state", self.recurrent_state))}
        return f"DeltaNetState(conv_state={shapes['conv_state']}, recurrent_state={shapes['recurrent_state']})"


# ------------------------------------------------------------------------------------- the layer
class GatedDeltaNet(nn.Module):
    """The Gated DeltaNet token mixer of Qwen3-Next (36 of the 48 layers).

    x -> in_proj_qkvz -> (q, k, v, z) and in_proj_ba -> (b, a), de-interleaved per key head;
    [q | k | v] -> causal depthwise conv (kernel K) -> SiLU; beta = sigmoid(b),
    g = -exp(A_log) softplus(a + dt_bias); gated delta rule with L2-normalised q, k;
    gated RMSNorm with z per value head; out_proj.
    """

    def __init__(self, config: Qwen3NextConfig, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.num_k_heads, self.num_v_heads = config.linear_num_key_heads, config.linear_num_value_heads
        self.head_k_dim, self.head_v_dim = config.linear_key_head_dim, config.linear_value_head_dim
        self.key_dim = self.num_k_heads * self.head_k_dim  # 2048 in the release
        self.value_dim = self.num_v_heads * self.head_v_dim  # 4096
        self.conv_dim = 2 * self.key_dim + self.value_dim  # 8192: q, k and v go through the conv
        self.conv_kernel_size = config.linear_conv_kernel_dim
        self.chunk_size = 64

        self.in_proj_qkvz = nn.Linear(self.hidden_size, 2 * self.key_dim + 2 * self.value_dim, bias=False)
        self.in_proj_ba = nn.Linear(self.hidden_size, 2 * self.num_v_heads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, self.conv_kernel_size, groups=self.conv_dim,
                                padding=self.conv_kernel_size - 1, bias=False)
        self.dt_bias = nn.Parameter(torch.ones(self.num_v_heads))  # (Hv,)
        self.A_log = nn.Parameter(torch.empty(self.num_v_heads))  # (Hv,)
        self.norm = RMSNormGated(self.head_v_dim, eps=config.rms_norm_eps)
        self.out_proj = nn.Linear(self.value_dim, self.hidden_size, bias=False)
        self.reset_parameters(config.initializer_range)

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """The reference's initialisation: N(0, std) projections and conv, dt_bias = 1,
        A = exp(A_log) uniform in [0.01, 16] (so each head starts with its own forgetting speed)."""
        if self.A_log.is_meta:  # shapes only: nothing to fill (and normal_ on meta is slow to set up)
            return
        for layer in (self.in_proj_qkvz, self.in_proj_ba, self.conv1d, self.out_proj):
            layer.weight.normal_(0.0, std)
        self.dt_bias.fill_(1.0)
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(0.01, 16).log())
        self.norm.weight.fill_(1.0)

    def split_projections(self, qkvz: torch.Tensor, ba: torch.Tensor):
        """De-interleave the fused projections (SPEC section 2).

        ``qkvz`` (B, T, Hk * (2Dk + 2rDv)) holds, per key head, ``[q | k | v of its r value heads | z of
        them]``; ``ba`` (B, T, 2Hv) holds, per key head, ``[b of its r value heads | a of them]``.
        Returns q, k (B, T, Hk, Dk), v, z (B, T, Hv, Dv), b, a (B, T, Hv).
        """
        B, T, _ = qkvz.shape
        Hk, Hv, Dk, Dv = self.num_k_heads, self.num_v_heads, self.head_k_dim, self.head_v_dim
        r = Hv // Hk
        qkvz = qkvz.view(B, T, Hk, 2 * Dk + 2 * r * Dv)
        q, k, v, z = torch.split(qkvz, [Dk, Dk, r * Dv, r * Dv], dim=-1)
        b, a = torch.split(ba.view(B, T, Hk, 2 * r), [r, r], dim=-1)
        v, z = v.reshape(B, T, Hv, Dv), z.reshape(B, T, Hv, Dv)  # value head = key head * r + j
        return q, k, v, z, b.reshape(B, T, Hv), a.reshape(B, T, Hv)

    def gates(self, b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """beta = sigmoid(b) (write strength), g = -exp(A_log) softplus(a + dt_bias) <= 0 (log decay), fp32."""
        beta = b.sigmoid()
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias.float())
        return beta, g

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: DeltaNetState | None = None,
    ) -> torch.Tensor:
        """x (B, T, hidden) -> (B, T, hidden). ``attention_mask`` (B, T): 1 = token, 0 = padding (padded
        inputs are zeroed first, as in the reference). ``cache`` is continued from and updated in place."""
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x: expected (B, T, {self.hidden_size}), found shape {_shape(x)}")
        B, T, _ = x.shape
        if attention_mask is not None:
            if attention_mask.shape != (B, T):
                raise ValueError(
                    f"attention_mask: expected the padding mask of the new tokens (B, T) = {(B, T)}, "
                    f"found shape {_shape(attention_mask)}"
                )
            x = (x * attention_mask[:, :, None]).to(x.dtype)
        if cache is not None and not isinstance(cache, DeltaNetState):
            raise TypeError(f"cache: expected a DeltaNetState, found {type(cache).__name__}")
        conv_state = cache.conv_state if cache is not None else None
        h = cache.recurrent_state if cache is not None else None
        if h is not None and h.shape[0] != B:
            raise ValueError(f"cache: holds a batch of {h.shape[0]} sequences, x has {B}")

        q, k, v, z, b, a = self.split_projections(self.in_proj_qkvz(x), self.in_proj_ba(x))
        # the short conv runs over [q | k | v] (all heads flattened), channels first
        qkv = torch.cat([q.reshape(B, T, -1), k.reshape(B, T, -1), v.reshape(B, T, -1)], dim=-1).transpose(1, 2)
        if conv_state is not None and T == 1:  # decoding: slide the conv window by one, in place
            qkv = causal_conv1d_step(qkv[..., 0], self.conv1d.weight.squeeze(1), conv_state).unsqueeze(-1)
            new_conv_state = conv_state
        else:
            qkv, new_conv_state = causal_conv1d(qkv, self.conv1d.weight.squeeze(1), conv_state)  # (B, conv_dim, T)
        qkv = F.silu(qkv).transpose(1, 2)  # (B, T, conv_dim)
        q, k, v = torch.split(qkv, [self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = q.reshape(B, T, self.num_k_heads, self.head_k_dim)
        k = k.reshape(B, T, self.num_k_heads, self.head_k_dim)
        v = v.reshape(B, T, self.num_v_heads, self.head_v_dim)
        beta, g = self.gates(b, a)

        if h is not None and T == 1:  # decoding: one step of the recurrence, on the cached state in place
            h = h if h.dtype == torch.float32 and h.is_contiguous() else h.float().contiguous()
            o = recurrent_gated_delta_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], h).unsqueeze(1)
        else:
            o, h = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=self.chunk_size, initial_state=h,
                                          output_final_state=cache is not None, use_qk_l2norm_in_kernel=True)
        if cache is not None:
            cache.conv_state, cache.recurrent_state = new_conv_state, h

        o = self.norm(o, z)  # (B, T, Hv, Dv): per value head, gated by z
        return self.out_proj(o.reshape(B, T, self.value_dim))

    def extra_repr(self) -> str:
        return (f"layer_idx={self.layer_idx}, key_heads={self.num_k_heads}x{self.head_k_dim}, "
                f"value_heads={self.num_v_heads}x{self.head_v_dim}, conv_kernel={self.conv_kernel_size}")
