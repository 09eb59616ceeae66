"""The Gated DeltaNet layer of Qwen3-Next: projections, the short causal convolution, gates, the gated
delta rule and the gated output norm, with the layer's constant-size state.

Paper: Yang, Kautz & Hatamizadeh, "Gated Delta Networks: Improving Mamba2 with Delta Rule" (2025).
Mirrors ``Qwen3NextGatedDeltaNet``, ``causal_conv1d_fn`` and ``causal_conv1d_update`` in
``transformers/models/qwen3_next``. The delta-rule kernels themselves live in :mod:`qwen3next.delta_rule`
(chapter 05); this module is chapter 06. ``chunk_gated_delta_rule`` and ``recurrent_gated_delta_rule``
are re-exported here because ``from qwen3next.deltanet import chunk_gated_delta_rule`` is public interface.

Contents: :func:`causal_conv1d` (depthwise, causal, with a state of the last ``K`` inputs) and its one-token
step, :class:`DeltaNetState` (one layer's cache) and :class:`GatedDeltaNet` (the layer).

Speculative decoding (:mod:`qwen3next.rollback`) can ask a state to keep its value after every token of a
forward pass (``DeltaNetState.keep_steps``), so that a rejected draft is undone by picking the state
after the last accepted token. Leaves out: the fused causal-conv1d CUDA kernel (plain PyTorch only) and
variable-length packing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import Qwen3NextConfig
from .delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule, recurrent_gated_delta_step
from .linear import Linear
from .norms import RMSNormGated

__all__ = [
    "causal_conv1d",
    "causal_conv1d_step",
    "DeltaNetState",
    "GatedDeltaNet",
    # the kernels, from qwen3next.delta_rule (public interface)
    "chunk_gated_delta_rule",
    "recurrent_gated_delta_rule",
]


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


# ---------------------------------------------------------------------------- causal convolution
def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal convolution of ``x`` (B, C, T) with ``weight`` (C, K), continuing from ``state``.

    ``state`` (B, C, K) holds the last K inputs seen before ``x`` (zeros, i.e. left padding, when None).
    Returns ``y`` (B, C, T) (no activation) and the new state: the last K columns of ``[state, x]``.
    ``y_t = sum_j weight_j * [state, x]_{t + j + 1}`` (what ``F.conv1d(..., groups=C)`` computes), summed in
    float32 and cast back to ``x``'s dtype.
    """
    _check_conv_inputs(x, weight, state)
    (B, C, T), K = x.shape, weight.shape[1]
    if state is None:
        state = x.new_zeros(B, C, K)
    window = torch.cat([state.to(x.dtype), x], dim=-1)  # (B, C, K + T)
    # K shifted multiply-adds summed in float32, rounded once: the sum
    # causal_conv1d_step makes per token
    taps, w = window[..., 1:].float(), weight.float()  # (B, C, K - 1 + T), (C, K)
    y = taps[..., :T] * w[:, :1]
    for j in range(1, K):
        y = y.addcmul_(taps[..., j:j + T], w[:, j:j + 1])  # (B, C, T)
    return y.to(x.dtype), window[..., -K:].clone()


def _check_conv_inputs(x: torch.Tensor, weight: torch.Tensor, state: torch.Tensor | None) -> None:
    if x.dim() != 3:
        raise ValueError(f"x: expected (B, C, T), found shape {_shape(x)}")
    B, C, _ = x.shape
    if weight.dim() != 2 or weight.shape[0] != C:
        raise ValueError(f"weight: expected (C, K) with C = {C}, found shape {_shape(weight)}")
    if state is not None and state.shape != (B, C, weight.shape[1]):
        raise ValueError(f"state: expected (B, C, K) = {(B, C, weight.shape[1])}, found shape {_shape(state)}")


def causal_conv1d_step(x_t: torch.Tensor, weight: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """One decoding step of :func:`causal_conv1d`: ``x_t`` (B, C) -> ``y_t`` (B, C); ``state`` (B, C, K)
    is shifted left by one and updated in place (a dot product of the last K inputs with the kernel).

    The K products are summed in float32 and rounded once, as the convolution of the full forward (and
    the reference's ``causal_conv1d_update``, one ``F.conv1d``) does: in bfloat16, rounding each product
    first would make cached decoding drift away from the full forward."""
    if state.shape[:2] != x_t.shape or state.shape[-1] != weight.shape[-1]:
        raise ValueError(f"state: expected (B, C, K) = {(*x_t.shape, weight.shape[-1])}, found {_shape(state)}")
    state.copy_(torch.cat([state[..., 1:], x_t.unsqueeze(-1).to(state.dtype)], dim=-1))
    acc = torch.promote_types(weight.dtype, torch.float32)  # float32, or float64 for a float64 model
    y = (state.to(weight.dtype).to(acc) * weight.to(acc)).sum(-1)  # (B, C)
    return y.to(weight.dtype).to(x_t.dtype)


# ------------------------------------------------------------------------------------- the state
class DeltaNetState:
    """One DeltaNet layer's cache: constant size whatever the sequence length.

    ``conv_state`` (B, conv_dim, K): the last K pre-convolution inputs (activation dtype);
    ``recurrent_state`` (B, Hv, Dk, Dv): the delta-rule memory, float32. Both None until the first call.

    With ``keep_steps`` set, the next forward over T tokens reads them one at a time, as decoding does, and
    leaves the state after each of them in ``conv_steps`` (B, T, conv_dim, K) and ``recurrent_steps``
    (B, T, Hv, Dk, Dv): speculative decoding's checkpoints.
    """

    def __init__(self, conv_state: torch.Tensor | None = None, recurrent_state: torch.Tensor | None = None):
        self.conv_state = conv_state
        self.recurrent_state = recurrent_state
        self.keep_steps = False
        self.conv_steps: torch.Tensor | None = None
        self.recurrent_steps: torch.Tensor | None = None

    @property
    def is_empty(self) -> bool:
        return self.conv_state is None and self.recurrent_state is None

    def reset(self) -> None:
        self.conv_state = None
        self.recurrent_state = None

    def reorder(self, batch_index) -> None:
        """The batch becomes rows ``batch_index`` (a list or 1-D LongTensor, repeats allowed), in place."""
        if self.is_empty:
            return
        index = self._check_rows(batch_index)
        for name in ("conv_state", "recurrent_state"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, index.to(t.device)))

    def _check_rows(self, batch_index) -> torch.Tensor:
        """``batch_index`` as a 1-D LongTensor of existing rows, or a clear error."""
        batch = (self.conv_state if self.conv_state is not None else self.recurrent_state).shape[0]
        index = torch.as_tensor(batch_index, dtype=torch.long)
        if index.dim() != 1:
            raise ValueError(f"batch_index: expected a 1-D list of rows, found shape {_shape(index)}")
        if index.numel() and (index.min() < 0 or index.max() >= batch):
            raise IndexError(f"batch_index: rows must be in 0..{batch - 1}, found {index.tolist()}")
        return index

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
        # chunk length of the chunked delta rule (prefill, training): the work inside a chunk grows with
        # C * (Dk + Dv + C) per token, the sequential hand-over with Dk * Dv / C; measured fastest on a CPU
        # (benchmarks/bench_delta_rule.py): 32 for the release's 128-wide heads, 16 for 32-wide ones
        self.chunk_size = max(16, min(64, self.head_k_dim // 4))

        self.in_proj_qkvz = Linear(self.hidden_size, 2 * self.key_dim + 2 * self.value_dim, bias=False)
        self.in_proj_ba = Linear(self.hidden_size, 2 * self.num_v_heads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, self.conv_kernel_size, groups=self.conv_dim,
                                padding=self.conv_kernel_size - 1, bias=False)
        self.dt_bias = nn.Parameter(torch.empty(self.num_v_heads))  # (Hv,)
        self.A_log = nn.Parameter(torch.empty(self.num_v_heads))  # (Hv,)
        self.norm = RMSNormGated(self.head_v_dim, eps=config.rms_norm_eps)
        self.out_proj = Linear(self.value_dim, self.hidden_size, bias=False)
        self.reset_parameters()  # the projections and the conv start as torch's layers do, like the reference's

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference's start for this layer's own parameters: ``dt_bias = 1`` and
        ``A = exp(A_log)`` uniform in [0.01, 16], so each head starts with its own forgetting speed
        (the lower bound keeps ``log A`` finite)."""
        self.dt_bias.fill_(1.0)
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(0.01, 16).log_())

    def split_projections(self, qkvz: torch.Tensor, ba: torch.Tensor):
        """De-interleave the fused projections (the book's reference page, "The blocks, exactly").

        ``qkvz`` (B, T, Hk * (2Dk + 2rDv)) holds, per key head, ``[q | k | v of its r value heads | z of
        them]``; ``ba`` (B, T, 2Hv) holds, per key head, ``[b of its r value heads | a of them]``.
        Returns q, k (B, T, Hk, Dk), v, z (B, T, Hv, Dv), b, a (B, T, Hv).
        """
        B, T, _ = qkvz.shape
        Hk, Hv = self.num_k_heads, self.num_v_heads
        Dk, Dv = self.head_k_dim, self.head_v_dim
        r = Hv // Hk
        qkvz = qkvz.view(B, T, Hk, 2 * Dk + 2 * r * Dv)
        q, k, v, z = torch.split(qkvz, [Dk, Dk, r * Dv, r * Dv], dim=-1)
        b, a = torch.split(ba.view(B, T, Hk, 2 * r), [r, r], dim=-1)
        # value head = key head * r + j
        v, z = v.reshape(B, T, Hv, Dv), z.reshape(B, T, Hv, Dv)
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
        self._check_forward_inputs(x, attention_mask, cache)
        if cache is not None and cache.keep_steps:
            return self._forward_keeping_steps(x, attention_mask, cache)
        if self._can_step(x, attention_mask, cache):
            return self.decode_step(x, cache)
        B, T, _ = x.shape
        if attention_mask is not None:
            x = (x * attention_mask[:, :, None]).to(x.dtype)
        q, k, v, z, b, a = self.split_projections(self.in_proj_qkvz(x), self.in_proj_ba(x))
        # (B, T, Hk, Dk), (B, T, Hk, Dk), (B, T, Hv, Dv)
        q, k, v = self.short_conv(q, k, v, cache)
        beta, g = self.gates(b, a)
        o = self.delta_rule(q, k, v, g, beta, cache)  # (B, T, Hv, Dv)
        o = self.norm(o, z)  # per value head, gated by z
        return self.out_proj(o.reshape(B, T, self.value_dim))

    def short_conv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: DeltaNetState | None):
        """The causal depthwise conv over ``[q | k | v]`` (all heads side by side), then SiLU.

        Continues from ``cache.conv_state`` and stores the new window there; returns q, k, v in heads."""
        B, T = q.shape[:2]
        flat = [q.reshape(B, T, -1), k.reshape(B, T, -1), v.reshape(B, T, -1)]
        qkv = torch.cat(flat, dim=-1).transpose(1, 2)
        weight = self.conv1d.weight.squeeze(1)  # (conv_dim, K)
        state = None if cache is None else cache.conv_state
        if state is not None and T == 1:  # decoding: slide the conv window by one, in place
            qkv = causal_conv1d_step(qkv[..., 0], weight, state).unsqueeze(-1)
        else:
            qkv, state = causal_conv1d(qkv, weight, state)  # (B, conv_dim, T)
        if cache is not None:
            cache.conv_state = state
        qkv = F.silu(qkv).transpose(1, 2)  # (B, T, conv_dim)
        q, k, v = torch.split(qkv, [self.key_dim, self.key_dim, self.value_dim], dim=-1)
        return (q.reshape(B, T, self.num_k_heads, self.head_k_dim),
                k.reshape(B, T, self.num_k_heads, self.head_k_dim),
                v.reshape(B, T, self.num_v_heads, self.head_v_dim))

    def delta_rule(self, q, k, v, g, beta, cache: DeltaNetState | None) -> torch.Tensor:
        """The gated delta rule with L2-normalised q and k: (B, T, Hv, Dv).

        Continues from ``cache.recurrent_state`` and stores the new state there (float32)."""
        h = None if cache is None else cache.recurrent_state
        # decoding: one step of the recurrence, on the cached state in place
        if h is not None and q.shape[1] == 1:
            h = (h if h.dtype == torch.float32 and h.is_contiguous()
                 else h.float().contiguous())
            o = recurrent_gated_delta_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0],
                                           beta[:, 0], h).unsqueeze(1)
        else:
            o, h = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=self.chunk_size,
                                          initial_state=h,
                                          output_final_state=cache is not None,
                                          use_qk_l2norm_in_kernel=True)
        if cache is not None:
            cache.recurrent_state = h
        return o

    # ------------------------------------------------------------------------------ decoding
    def _forward_keeping_steps(self, x, attention_mask, cache: DeltaNetState):
        """:meth:`forward` one token at a time, keeping a copy of both states after each token."""
        outputs, conv, recurrent = [], [], []
        cache.keep_steps = False  # each token takes the ordinary path
        try:
            for t in range(x.shape[1]):
                mask = None if attention_mask is None else attention_mask[:, t : t + 1]
                outputs.append(self.forward(x[:, t : t + 1], mask, cache))
                conv.append(cache.conv_state.clone())
                recurrent.append(cache.recurrent_state.clone())
        finally:
            cache.keep_steps = True
        cache.conv_steps = torch.stack(conv, 1)  # (B, T, conv_dim, K)
        cache.recurrent_steps = torch.stack(recurrent, 1)  # (B, T, Hv, Dk, Dv)
        return torch.cat(outputs, dim=1)  # (B, T, hidden)

    @staticmethod
    def _can_step(x, attention_mask, cache) -> bool:
        """One new token, no padding, a cache with both states (float32 and contiguous)."""
        if x.shape[1] != 1 or cache is None or cache.conv_state is None or cache.recurrent_state is None:
            return False
        h = cache.recurrent_state
        return (h.dtype == torch.float32 and h.is_contiguous()
                and (attention_mask is None or bool(attention_mask.all())))

    def decode_step(self, x: torch.Tensor, cache: DeltaNetState) -> torch.Tensor:
        """:meth:`forward` for one token on a filled cache, in fewer and larger operations (the same numbers
        to float32 rounding; ``tests/test_fast_paths.py``).

        The conv's channels ``[q | k | v]`` and the gate ``z`` are gathered from the interleaved ``qkvz``
        projection by one index each instead of splitting, reshaping and concatenating per head.
        """
        B = x.shape[0]
        Hk, Hv, Dk, Dv = self.num_k_heads, self.num_v_heads, self.head_k_dim, self.head_v_dim
        r = Hv // Hk
        x = x[:, 0]  # (B, hidden)
        # (B, Hk (2Dk + 2rDv)), interleaved per key head
        qkvz = F.linear(x, self.in_proj_qkvz.weight)
        ba = F.linear(x, self.in_proj_ba.weight).view(B, Hk, 2 * r)  # per key head [b | a]
        conv_index, z_index = self._step_indices(x.device)
        qkv = causal_conv1d_step(qkvz.index_select(1, conv_index),
                                 self.conv1d.weight.squeeze(1), cache.conv_state)
        # (B, .) each
        q, k, v = F.silu(qkv).split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        # (B, Hv)
        beta, g = self.gates(ba[..., :r].reshape(B, Hv), ba[..., r:].reshape(B, Hv))
        o = recurrent_gated_delta_step(q.view(B, Hk, Dk), k.view(B, Hk, Dk),
                                       v.view(B, Hv, Dv), g, beta,
                                       cache.recurrent_state)  # (B, Hv, Dv)
        o = self.norm(o, qkvz.index_select(1, z_index).view(B, Hv, Dv))
        # (B, 1, hidden)
        return F.linear(o.view(B, 1, self.value_dim), self.out_proj.weight)

    def _step_indices(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Columns of ``qkvz`` holding the conv's channels ``[q (all heads) | k | v]``, and those of ``z``."""
        cached = self.__dict__.get("_indices")
        if cached is None or cached[0].device != device:
            Dk, rDv = self.head_k_dim, self.head_v_dim * (self.num_v_heads // self.num_k_heads)
            width = 2 * Dk + 2 * rDv  # one key head's block: [q | k | v | z]
            start = torch.arange(self.num_k_heads, device=device)[:, None] * width  # (Hk, 1)
            cols = lambda offset, n: (start + offset + torch.arange(n, device=device)).reshape(-1)
            conv_index = torch.cat([cols(0, Dk), cols(Dk, Dk), cols(2 * Dk, rDv)])
            cached = self.__dict__["_indices"] = (conv_index, cols(2 * Dk + rDv, rDv))
        return cached

    def _check_forward_inputs(self, x, attention_mask, cache) -> None:
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x: expected (B, T, {self.hidden_size}), found shape {_shape(x)}")
        B, T, _ = x.shape
        if attention_mask is not None and attention_mask.shape != (B, T):
            raise ValueError(
                f"attention_mask: expected the padding mask of the new tokens (B, T) = {(B, T)}, "
                f"found shape {_shape(attention_mask)}"
            )
        if cache is not None and not isinstance(cache, DeltaNetState):
            raise TypeError(f"cache: expected a DeltaNetState, found {type(cache).__name__}")
        h = None if cache is None else cache.recurrent_state
        if h is not None and h.shape[0] != B:
            raise ValueError(f"cache: holds a batch of {h.shape[0]} sequences, x has {B}")

    def extra_repr(self) -> str:
        return (f"layer_idx={self.layer_idx}, key_heads={self.num_k_heads}x{self.head_k_dim}, "
                f"value_heads={self.num_v_heads}x{self.head_v_dim}, conv_kernel={self.conv_kernel_size}")
