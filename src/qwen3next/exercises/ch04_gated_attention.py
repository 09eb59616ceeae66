"""Checks for the exercises of chapter 04, "Gated attention"."""

from __future__ import annotations

import torch

from ..attention import GatedAttention
from ..config import Qwen3NextConfig
from ..rope import RotaryEmbedding
from . import UNANSWERED, check_equal, report


def check_gate_rows(answer) -> bool:
    """``(start, stop)`` of the rows of the released ``q_proj.weight`` that make head 3's output gate."""
    cfg = Qwen3NextConfig.full()
    with torch.device("meta"):
        attn = GatedAttention(cfg, 3)
    rows = attn.q_proj.weight.shape[0] // cfg.num_attention_heads  # 2 * head_dim rows per head
    expected = (3 * rows + cfg.head_dim, 4 * rows)
    if answer is not Ellipsis:
        try:
            answer = tuple(int(a) for a in answer)
        except (TypeError, ValueError):
            answer = None
    return check_equal(answer, expected, "each head owns 2 * head_dim consecutive rows: its query first, "
                       "then its gate; heads count from 0.")


def check_attention_params(answer: int) -> bool:
    """Parameters of one gated-attention mixer of the release (projections and q/k norms)."""
    with torch.device("meta"):
        attn = GatedAttention(Qwen3NextConfig.full(), 3)
    expected = sum(p.numel() for p in attn.parameters())
    return check_equal(answer, expected, "q_proj is twice as wide as the query (it carries the gate); add "
                       "k_proj, v_proj, o_proj and the two per-head norms of 256.")


# (query heads, key/value heads, head size, tokens): GQA 2:1 as in tiny(), 4:1, and one shared KV head
GQA_CASES = ((4, 2, 16, 7), (8, 2, 8, 5), (4, 1, 16, 6))


def _gqa_case(H: int, Hkv: int, D: int, T: int, seed: int):
    """A layer whose ``o_proj`` is the identity, its inputs ``q, k, v, gate`` and its output."""
    cfg = Qwen3NextConfig.tiny(num_attention_heads=H, num_key_value_heads=Hkv, head_dim=D, hidden_size=H * D)
    torch.manual_seed(seed)
    attn = GatedAttention(cfg, 3, implementation="eager")
    x = torch.randn(2, T, cfg.hidden_size)
    cos, sin = RotaryEmbedding(cfg)(torch.arange(T)[None])
    with torch.no_grad():
        attn.o_proj.weight.copy_(torch.eye(H * D))  # the layer's output is then the gated attention itself
        q, k, v, gate = attn.project(x, cos, sin)
        return (q, k, v, gate), attn(x, cos, sin)


def check_gated_gqa(fn) -> bool:
    """``fn(q, k, v, gate)`` -> the gated attention output before ``o_proj``, ``(B, T, H * D)``.

    ``q (B, H, T, D)`` and ``k, v (B, Hkv, T, D)`` come normed and rotated; ``gate (B, T, H * D)``.
    """
    hint = ("query head h reads key/value head h // (H / Hkv) (repeat_interleave the KV heads); causal "
            "softmax of q k^T / sqrt(D); move heads next to D and flatten to (B, T, H * D); then multiply "
            "by sigmoid(gate) elementwise.")
    if fn is Ellipsis:
        return report(False, f"{UNANSWERED} {hint}")
    for seed, (H, Hkv, D, T) in enumerate(GQA_CASES):
        inputs, expected = _gqa_case(H, Hkv, D, T, seed)
        try:
            with torch.no_grad():
                answer = fn(*(t.clone() for t in inputs))
        except Exception as err:  # a reader's function may fail in any way: report it as a hint
            return report(False, f"your function raised {type(err).__name__}: {err}. {hint}")
        if not isinstance(answer, torch.Tensor) or tuple(answer.shape) != tuple(expected.shape):
            found = tuple(answer.shape) if isinstance(answer, torch.Tensor) else type(answer).__name__
            return report(False, f"with H = {H}, Hkv = {Hkv}: expected shape {tuple(expected.shape)}, "
                          f"found {found}. {hint}")
        if not (answer.float() - expected).abs().max() <= 1e-5:
            return report(False, f"wrong values with H = {H} query heads and Hkv = {Hkv}. {hint}")
    return report(True, hint)
