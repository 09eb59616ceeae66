"""The gated delta rule: the fast-weight memory at the heart of a Gated DeltaNet layer, in three forms.

Papers: Schlag, Irie & Schmidhuber, "Linear Transformers Are Secretly Fast Weight Programmers" (2021)
for the delta rule; Yang, Wang, Zhang, Shen & Kim, "Parallelizing Linear Transformers with the Delta
Rule over Sequence Length" (2024) for the chunked (WY / UT transform) form; Yang, Kautz & Hatamizadeh,
"Gated Delta Networks: Improving Mamba2 with Delta Rule" (2025) for the decay gate.
Mirrors ``torch_chunk_gated_delta_rule`` and ``torch_recurrent_gated_delta_rule`` in
``transformers/models/qwen3_next``. Chapter 05 builds it; :mod:`qwen3next.deltanet` (chapter 06) wraps it
into the layer.

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

Under ``torch.autocast`` all three stay in float32 (:mod:`qwen3next.precision`).

Leaves out: the fused Triton / CUDA kernels of flash-linear-attention (plain PyTorch only) and
variable-length packing (``cu_seqlens``).
"""

from __future__ import annotations

import math

import torch

from .precision import float32_inside_autocast

__all__ = [
    "l2_normalize",
    "recurrent_gated_delta_rule",
    "recurrent_gated_delta_step",
    "chunk_gated_delta_rule",
    "scan_chunks",
    "unit_lower_inverse",
    "attention_form_gated_delta_rule",
    "delta_rule_mixing_matrix",
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
@float32_inside_autocast
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
        # (B, Hv, Dv): what h recalls for k_t
        prediction = (k_t.unsqueeze(-2) @ h).squeeze(-2)
        # (B, Hv, Dv): the correction to write
        delta = beta[:, :, t, None] * (v_t - prediction)
        h = h + k_t.unsqueeze(-1) * delta.unsqueeze(-2)  # rank-1 update k_t delta^T
        # (B, Hv, Dv): read with q_t
        outputs.append((q_t.unsqueeze(-2) @ h).squeeze(-2))
    o = torch.stack(outputs, dim=1) if T else v.new_zeros(B, 0, Hv, Dv)  # (B, T, Hv, Dv)
    return o.to(out_dtype), h if output_final_state else None


@float32_inside_autocast
def recurrent_gated_delta_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, h: torch.Tensor
) -> torch.Tensor:
    """One token of :func:`recurrent_gated_delta_rule` (L2-normalised q and k), updating ``h`` in place.

    q, k: (B, Hk, Dk); v: (B, Hv, Dv); g, beta: (B, Hv); h: (B, Hv, Dk, Dv) float32, contiguous.
    Returns o (B, Hv, Dv) in v's dtype. The decoding path: no time axis, no copy of the state, q and k
    normalised together, and every product one batched matrix product over the B * Hv heads.
    """
    B, Hk, Dk = q.shape
    Hv, Dv = v.shape[1], v.shape[2]
    if h.dtype != torch.float32 or not h.is_contiguous():  # updated in place through a view
        raise ValueError(f"h: expected a contiguous float32 state, found {h.dtype}, contiguous={h.is_contiguous()}")
    qk = l2_normalize(torch.stack([q, k]).float())  # (2, B, Hk, Dk)
    qk[0].mul_(Dk**-0.5)  # in place (``qk[0] *= ...`` would copy the result back in once more)
    qk = qk.repeat_interleave(Hv // Hk, dim=2).view(2, B * Hv, 1, Dk)  # value head i * r + j reads key head i
    q, k = qk[0], qk[1]  # (B Hv, 1, Dk)
    S = h.view(B * Hv, Dk, Dv)
    S.mul_(g.float().exp().reshape(B * Hv, 1, 1))  # forget
    delta = v.float().reshape(B * Hv, 1, Dv) - torch.bmm(k, S)  # what the memory gets wrong for k
    delta.mul_(beta.float().reshape(B * Hv, 1, 1))  # corrected by the write strength
    S.baddbmm_(k.transpose(1, 2), delta)  # rank-1 update k delta^T
    return torch.bmm(q, S).view(B, Hv, Dv).to(v.dtype)  # read with q


# --------------------------------------------------------------------------------- chunked form
@float32_inside_autocast
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
    ``(I + A)^-1`` is built from matrix products (:func:`unit_lower_inverse`), and the inverse and the
    scan over chunks carry hand-derived gradients, so training runs at the speed of inference.
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
    A = (k @ k.transpose(-1, -2) * Gamma
         * beta.unsqueeze(-1)).tril(-1)  # (N, B, Hk, r, C, C)
    T_inv = unit_lower_inverse(A)
    # T diag(beta) V and T diag(beta exp(gamma)) K: scaling the columns of T (C x C) is
    # cheaper than the rows of V and K (C x D); and the r value heads of a key head
    # share K, so W is one product per key head
    U = (T_inv * beta.unsqueeze(-2)) @ v  # (N, B, Hk, r, C, Dv)
    beta_decay = beta * gamma.exp()
    # (N, B, Hk, rC, Dk)
    W = (T_inv * beta_decay.unsqueeze(-2)).reshape(N, B, Hk, r * C, C) @ k.squeeze(3)

    P = q @ k.transpose(-1, -2) * Gamma  # (N, B, Hk, r, C, C) intra-chunk "attention", lower triangular
    q_in = q * gamma.exp().unsqueeze(-1)  # (N, B, Hk, r, C, Dk) reads the state carried into the chunk
    k_out = k * (gamma[..., -1:] - gamma).exp().unsqueeze(-1)  # (N, B, Hk, r, C, Dk) writes the state
    chunk_decay = gamma[..., -1].exp()  # (N, B, Hk, r)

    BH = B * Hv
    U, W, P, q_in, k_out = (x.reshape(N, BH, C, x.shape[-1]) for x in (U, W, P, q_in, k_out))
    o, h = scan_chunks(U, W, P, q_in, k_out, chunk_decay.reshape(N, BH, 1, 1), h.reshape(BH, Dk, Dv))

    o = o.view(N, B, Hv, C, Dv).permute(1, 0, 3, 2, 4).reshape(B, N * C, Hv, Dv)[:, :T]  # (B, T, Hv, Dv)
    return o.to(out_dtype), h.reshape(B, Hv, Dk, Dv) if output_final_state else None


def scan_chunks(U, W, P, q_in, k_out, decay, h):
    """The sequential part of the chunked form: chunk by chunk, read and update the state ``h``.

    U, P, q_in, k_out, W: (N, BH, C, .) for N chunks of BH heads; decay (N, BH, 1, 1); h (BH, Dk, Dv).
    Returns o (N, BH, C, Dv) and the final state. For each chunk n::

        V' = U_n - W_n h      o_n = q_in_n h + P_n V'      h <- decay_n h + k_out_n^T V'

    With gradients on, the states before each chunk are kept for the backward pass (:class:`_ChunkScan`).
    """
    if torch.is_grad_enabled() and any(x.requires_grad for x in (U, W, P, q_in, k_out, decay, h)):
        return _ChunkScan.apply(U, W, P, q_in, k_out, decay, h)
    return _scan_forward(U, W, P, q_in, k_out, decay, h, keep=False)[:2]


def _scan_forward(U, W, P, q_in, k_out, decay, h, keep: bool):
    """The loop of :func:`scan_chunks`; with ``keep`` also the states before each chunk and each V'.

    Every step writes into memory allocated once: fresh multi-megabyte tensors per step would cost a
    page fault per page each time, which on a CPU is as slow as the products themselves.
    """
    N = U.shape[0]
    o = torch.empty_like(U)  # (N, BH, C, Dv)
    if keep:  # every state and every V' stay for the backward pass
        H, V = h.new_empty((N + 1, *h.shape)), torch.empty_like(U)
        H[0] = h
    else:  # one state updated in place, one V' buffer reused
        H, V = h.clone().unsqueeze(0), torch.empty_like(U[:1])
    for n in range(N):
        h, v_new = H[n if keep else 0], V[n if keep else 0]
        torch.baddbmm(U[n], W[n], h, alpha=-1, out=v_new)  # (BH, C, Dv) = U - W h
        torch.bmm(q_in[n], h, out=o[n]).baddbmm_(P[n], v_new)  # (BH, C, Dv)
        h_next = torch.mul(h, decay[n], out=H[n + 1]) if keep else h.mul_(decay[n])
        h_next.baddbmm_(k_out[n].transpose(-1, -2), v_new)  # (BH, Dk, Dv)
    if keep:  # the final state is the caller's to change: its own memory, not a view of the saved states
        return o, H[-1].clone(), (H[:-1], V)
    return o, H[0], None


class _ChunkScan(torch.autograd.Function):
    """:func:`scan_chunks` with its backward pass written out.

    Going back over the chunks, with ``G`` the gradient of the state after chunk n (``dh`` at the end)::

        dV' = P_n^T do_n + k_out_n G                 (V' feeds o_n and the next state)
        G   <- q_in_n^T do_n + decay_n G - W_n^T dV'  (the gradient of the state before chunk n)

    Only these two products wait for the previous step; everything else (dU = dV', dW, dP, dq_in,
    dk_out, ddecay) is one batched product over all chunks afterwards. Autograd on the loop instead
    saves and re-indexes every step and costs several times the forward pass.
    """

    @staticmethod
    def forward(ctx, U, W, P, q_in, k_out, decay, h):
        o, h, (H, V) = _scan_forward(U, W, P, q_in, k_out, decay, h, keep=True)
        ctx.save_for_backward(W, P, q_in, k_out, decay, H, V)
        return o, h

    @staticmethod
    def backward(ctx, do, dh):
        W, P, q_in, k_out, decay, H, V = ctx.saved_tensors  # H (N, BH, Dk, Dv): states; V (N, BH, C, Dv): V'
        N = W.shape[0]
        dV = P.transpose(-1, -2) @ do  # (N, BH, C, Dv): the parts that need no later gradient, all at once
        dH_read = q_in.transpose(-1, -2) @ do  # (N, BH, Dk, Dv)
        G = torch.empty_like(H)  # G[n]: gradient of the state after chunk n
        G[-1] = dh
        dh0 = torch.empty_like(dh)
        for n in reversed(range(N)):
            dV[n].baddbmm_(k_out[n], G[n])
            before = G[n - 1] if n else dh0
            torch.addcmul(dH_read[n], G[n], decay[n], out=before).baddbmm_(W[n].transpose(-1, -2), dV[n], alpha=-1)
        dW = -(dV @ H.transpose(-1, -2))  # (N, BH, C, Dk)
        dP = do @ V.transpose(-1, -2)  # (N, BH, C, C)
        dq_in = do @ H.transpose(-1, -2)  # (N, BH, C, Dk)
        dk_out = V @ G.transpose(-1, -2)  # (N, BH, C, Dk)
        ddecay = (H * G).sum((-2, -1), keepdim=True)  # (N, BH, 1, 1)
        return dV, dW, dP, dq_in, dk_out, ddecay, dh0


def unit_lower_inverse(A: torch.Tensor) -> torch.Tensor:
    """``(I + A)^-1`` for strictly lower-triangular ``A`` (..., n, n), from matrix products only.

    ``A`` is nilpotent (``A^n = 0``), so on small blocks ``(I + A)^-1 = I - A + A^2 - ... =
    (I - A)(I + A^2)(I + A^4)...`` (a few squarings); larger matrices are split in halves,
    ``[[L11, 0], [L21, L22]]^-1 = [[X11, 0], [-X22 L21 X11, X22]]``. Its gradient is written out:
    ``dA = -strictly_lower(Y^T dY Y^T)`` with ``Y`` the inverse.
    """
    if torch.is_grad_enabled() and A.requires_grad:
        return _UnitLowerInverse.apply(A)
    return _invert_unit_lower(A)


def _invert_unit_lower(A: torch.Tensor, block: int = 16) -> torch.Tensor:
    n = A.shape[-1]
    if n <= block:  # doubling products of the nilpotent part
        X, power, span = torch.eye(n, dtype=A.dtype, device=A.device) - A, A, 2
        while span < n:
            power = power @ power  # A^span
            X = X + X @ power  # now sums the powers below 2 span
            span *= 2
        return X
    h = n // 2
    X11, X22 = (_invert_unit_lower(A[..., :h, :h], block),
                _invert_unit_lower(A[..., h:, h:], block))
    X = torch.zeros_like(A)
    X[..., :h, :h], X[..., h:, h:] = X11, X22
    X[..., h:, :h] = -(X22 @ A[..., h:, :h]) @ X11
    return X


class _UnitLowerInverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, A):
        Y = _invert_unit_lower(A)
        ctx.save_for_backward(Y)
        return Y

    @staticmethod
    def backward(ctx, dY):
        (Y,) = ctx.saved_tensors
        return -(Y.transpose(-1, -2) @ dY @ Y.transpose(-1, -2)).tril(-1)


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
    T_inv = unit_lower_inverse(A)  # (I + A)^-1
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


@float32_inside_autocast
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
