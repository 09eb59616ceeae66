"""Gated attention: the 12 full-attention layers of Qwen3-Next, and their KV cache.

Scaled dot-product attention: Vaswani et al., "Attention Is All You Need" (2017); grouped-query
attention (GQA): Ainslie et al. (2023); the sigmoid output gate: Qiu et al., "Gated Attention for Large
Language Models: Non-linearity, Sparsity, and Attention-Sink-Free" (2025). Mirrors ``Qwen3NextAttention``
(with ``eager_attention_forward``) in ``transformers/models/qwen3_next``.

For ``x (B, T, hidden)`` with ``H`` query heads, ``Hkv`` key/value heads of size ``D``:

1. ``q_proj`` gives ``2 H D`` features, interleaved per head: head ``h`` owns rows ``[2hD, 2hD + D)`` for
   its query and ``[2hD + D, 2(h+1)D)`` for its output gate.
2. ``q_norm`` / ``k_norm``: a zero-centred RMSNorm over each head's ``D`` dims (before RoPE).
3. Partial RoPE on the first ``rotary_dim`` dims of ``q`` and ``k`` (:mod:`qwen3next.rope`).
4. Causal softmax attention in float32 with scale ``1/sqrt(D)``; query head ``h`` reads key/value head
   ``h // (H / Hkv)`` (GQA).
5. ``out = attn * sigmoid(gate)`` elementwise (``H D`` features per token), then ``o_proj``.

Two interchangeable kernels compute step 4 (``GatedAttention.implementation``):

* ``"eager"``: the readable one: ``softmax(q k^T / sqrt(D) + mask) v`` written out, like the reference's
  eager path (and bit-for-bit equal to it).
* ``"sdpa"`` (default): ``torch.nn.functional.scaled_dot_product_attention`` with a boolean mask:
  the same numbers up to float rounding, faster, and no ``(T, S)`` score matrix kept per head.

Padding rows that can see no key at all (a left-padded query) would divide 0 by 0; both kernels let
such rows attend to every key instead, so their (meaningless) output stays finite.

Leaves out: attention dropout (0 in the release), sliding windows, flash/paged kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .linear import Linear
from .norms import RMSNorm
from .rope import apply_rotary

IMPLEMENTATIONS = ("eager", "sdpa")


class KVCache:
    """The keys and values one attention layer has seen so far; grows by appending.

    ``key`` / ``value``: ``(B, Hkv, S, D)`` after RoPE (``None`` while empty). Memory grows linearly with
    the number of cached tokens ``S``: ``2 * B * Hkv * S * D`` elements per layer.

    Appending one token with ``torch.cat`` would copy all ``S`` cached tokens at every decoding step.
    Instead, once tokens are appended to a non-empty cache, the keys and values live in buffers with
    room to spare (half as many tokens again, at least 64), and ``key`` / ``value`` are views of their
    first ``S`` slots: a step writes one slot, and the buffers are reallocated only when full.
    """

    def __init__(self) -> None:
        self._key: torch.Tensor | None = None  # (B, Hkv, capacity, D)
        self._value: torch.Tensor | None = None
        self._length = 0

    @property
    def key(self) -> torch.Tensor | None:
        return None if self._key is None else self._key[:, :, : self._length]

    @property
    def value(self) -> torch.Tensor | None:
        return None if self._value is None else self._value[:, :, : self._length]

    @property
    def length(self) -> int:
        """How many tokens are cached."""
        return self._length

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``k, v (B, Hkv, T, D)``; return all keys and values ``(B, Hkv, S + T, D)``."""
        self._check_update_inputs(k, v)
        if self._key is None:  # the prompt: keep the tensors as they are, no spare room yet
            self._key, self._value, self._length = k, v, k.shape[2]
            return self.key, self.value
        S, T = self._length, k.shape[2]
        if S + T > self._key.shape[2]:  # full: move to buffers with room for more tokens
            self._key, self._value = (self._grow(buf, S + T)
                                      for buf in (self._key, self._value))
        # (B, Hkv, T, D) written in place, cast to the cache's dtype
        self._key[:, :, S : S + T] = k
        self._value[:, :, S : S + T] = v
        self._length = S + T
        return self.key, self.value

    def _check_update_inputs(self, k: torch.Tensor, v: torch.Tensor) -> None:
        if k.dim() != 4 or k.shape != v.shape:
            raise ValueError(
                f"k, v: expected two (B, Hkv, T, D) tensors of one shape, found {tuple(k.shape)} and {tuple(v.shape)}"
            )
        if self._key is not None and (k.shape[:2] != self._key.shape[:2] or k.shape[3] != self._key.shape[3]):
            raise ValueError(
                f"k: cache holds (B, Hkv, *, D) = {tuple(self.key.shape)}, cannot append {tuple(k.shape)}"
            )

    def _grow(self, buf: torch.Tensor, needed: int) -> torch.Tensor:
        """A copy of the cached tokens of ``buf`` in a buffer of ``needed`` slots plus spare room."""
        B, Hkv, _, D = buf.shape
        capacity = needed + max(64, needed // 2)  # geometric growth: O(1) copying per token on average
        new = buf.new_empty(B, Hkv, capacity, D)
        new[:, :, : self._length] = buf[:, :, : self._length]
        return new

    def reorder(self, index: torch.Tensor) -> None:
        """The batch becomes rows ``index`` (a 1-D LongTensor, repeats allowed) of the old one, in place."""
        if self._key is not None:
            index = index.to(self._key.device)
            self._key = self.key.index_select(0, index)
            self._value = self.value.index_select(0, index)

    def crop(self, length: int) -> None:
        """Forget every token after the first ``length`` (e.g. rejected speculative tokens)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"length: expected 0..{self.length} (tokens cached), found {length}")
        if self._key is not None:
            if length == 0:
                self._key = self._value = None
            else:
                # drop the spare room too: the next append then cannot overwrite tensors handed out before
                self._key, self._value = self._key[:, :, :length], self._value[:, :, :length]
            self._length = length

    def nbytes(self) -> int:
        """Bytes held by the cached keys and values (the ``S`` tokens; not the spare room of the buffers)."""
        if self._key is None:
            return 0
        return self.key.numel() * self.key.element_size() + self.value.numel() * self.value.element_size()

    def __repr__(self) -> str:
        shape = None if self._key is None else tuple(self.key.shape)
        return f"KVCache(length={self.length}, key_shape={shape})"


def allowed_positions(
    attention_mask: torch.Tensor | None, batch: int, past: int, new: int, device: torch.device
) -> torch.Tensor:
    """Which keys each new query may read: ``(B or 1, 1, T, past + T)`` booleans, True = allowed.

    Causal: new token ``i`` sits at cache index ``past + i`` and sees keys ``0 .. past + i``. Padding:
    key ``j`` is hidden when ``attention_mask[b, j] == 0``. A row left with no key at all (a padding
    query before any real token) is opened up completely, so that softmax stays finite.
    """
    _check_padding_mask(attention_mask, batch, past, new)
    total = past + new
    query_index = torch.arange(past, total, device=device)[:, None]  # (T, 1)
    key_index = torch.arange(total, device=device)[None, :]  # (1, S)
    allowed = (key_index <= query_index)[None, None]  # (1, 1, T, S)
    if attention_mask is None:
        return allowed
    allowed = allowed & attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]  # (B, 1, T, S)
    return allowed | ~allowed.any(dim=-1, keepdim=True)


def _check_padding_mask(attention_mask: torch.Tensor | None, batch: int, past: int, new: int) -> None:
    if attention_mask is not None and attention_mask.shape != (batch, past + new):
        raise ValueError(
            f"attention_mask: expected the 2-D padding mask (B, past + T) = ({batch}, {past + new}) covering "
            f"{past} cached and {new} new tokens, found {tuple(attention_mask.shape)}"
        )


def attention_weights(q: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(D))`` over the allowed keys, in float32: ``(B, H, T, S)``, rows sum to 1.

    ``q (B, H, T, D)``, ``k (B, Hkv, S, D)``, ``allowed (B or 1, 1, T, S)``. Chapters use it to draw
    attention maps; :func:`eager_attention` builds on it.
    """
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)  # (B, H, S, D): query head h reads kv head h // groups
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)  # (B, H, T, S)
    # the most negative finite number, not -inf: exp() gives exactly 0, and a fully hidden row stays finite
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1, dtype=torch.float32)


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The readable kernel: ``softmax(q k^T / sqrt(D), masked) v`` with the softmax in float32.

    ``q (B, H, T, D)``, ``k, v (B, Hkv, S, D)``, ``allowed (B or 1, 1, T, S)`` -> ``(B, H, T, D)``.
    """
    weights = attention_weights(q, k, allowed).to(q.dtype)  # (B, H, T, S), like the reference: probs in q's dtype
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)  # (B, H, S, D)
    return torch.matmul(weights, v)  # (B, H, T, D)


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None
) -> torch.Tensor:
    """The fast kernel: PyTorch's fused scaled-dot-product attention, same arguments as :func:`eager_attention`.

    ``allowed=None`` means causal with no padding: the kernel then needs no mask tensor at all (one new
    token sees every key; a prompt with nothing cached uses the kernel's own causal masking, which also
    skips the blocks above the diagonal).
    """
    # enable_gqa: each group of H / Hkv query heads reads its kv head without copying it H / Hkv times
    gqa = q.shape[1] != k.shape[1]
    T, S = q.shape[2], k.shape[2]
    causal = False
    if allowed is None and T > 1:
        if T == S:
            causal = True
        else:  # a chunk of several new tokens after a cached prefix: spell the causal mask out
            allowed = allowed_positions(None, q.shape[0], S - T, T, q.device)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=allowed, is_causal=causal, scale=q.shape[-1] ** -0.5, enable_gqa=gqa
    )


KERNELS = {"eager": eager_attention, "sdpa": sdpa_attention}


class GatedAttention(nn.Module):
    """One gated-attention mixer (``model.layers.{i}.self_attn``)."""

    def __init__(self, config, layer_idx: int, implementation: str = "sdpa"):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads  # H
        self.num_kv_heads = config.num_key_value_heads  # Hkv
        self.head_dim = config.head_dim  # D
        self.implementation = implementation
        hidden, H, Hkv, D = config.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        self.q_proj = Linear(hidden, H * 2 * D, bias=False)  # per head: [query D | gate D]
        self.k_proj = Linear(hidden, Hkv * D, bias=False)
        self.v_proj = Linear(hidden, Hkv * D, bias=False)
        self.o_proj = Linear(H * D, hidden, bias=False)
        self.q_norm = RMSNorm(D, eps=config.rms_norm_eps)
        self.k_norm = RMSNorm(D, eps=config.rms_norm_eps)

    @property
    def implementation(self) -> str:
        """Which attention kernel runs: ``"sdpa"`` (fused, default) or ``"eager"`` (written out)."""
        return self._implementation

    @implementation.setter
    def implementation(self, name: str) -> None:
        if name not in IMPLEMENTATIONS:
            raise ValueError(f"implementation: expected one of {IMPLEMENTATIONS}, found {name!r}")
        self._implementation = name

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """``x (B, T, hidden)`` -> ``q (B, H, T, D)``, ``k, v (B, Hkv, T, D)``, ``gate (B, T, H D)``.

        ``q`` and ``k`` come out normed and rotated, ready for attention."""
        B, T, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        # (B, T, H, D) each
        q, gate = self.q_proj(x).view(B, T, H, 2 * D).split(D, dim=-1)
        gate = gate.reshape(B, T, H * D)
        q = self.q_norm(q).transpose(1, 2)  # (B, H, T, D)
        # (B, Hkv, T, D)
        k = self.k_norm(self.k_proj(x).view(B, T, Hkv, D)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v, gate

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """``x (B, T, hidden)``; ``cos, sin (B, T, rotary_dim)`` for the new tokens' positions;
        ``attention_mask (B, past + T)`` 1 = real token, 0 = padding, or None; ``cache`` is appended to."""
        self._check_forward_inputs(x)
        B, T, _ = x.shape
        q, k, v, gate = self.project(x, cos, sin)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(k, v)  # (B, Hkv, past + T, D)
        if attention_mask is None and self.implementation == "sdpa":
            allowed = None  # causal and unpadded: the fused kernel masks by itself, no mask tensor to build
        else:
            allowed = allowed_positions(attention_mask, B, past, T, x.device)  # (B or 1, 1, T, past + T)
        out = KERNELS[self.implementation](q, k, v, allowed)  # (B, H, T, D)
        out = out.transpose(1, 2).reshape(B, T, -1)  # (B, T, H D)
        # each feature of each head has its own gate in (0, 1)
        out = out * torch.sigmoid(gate)
        return self.o_proj(out)  # (B, T, hidden)

    @staticmethod
    def _check_forward_inputs(x: torch.Tensor) -> None:
        if x.dim() != 3:
            raise ValueError(f"x: expected shape (B, T, hidden), found {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
            f"implementation={self.implementation!r}"
        )
