"""Checks for the exercises of chapter 04, "Gated attention"."""

from __future__ import annotations

import torch

from ..attention import GatedAttention, KVCache
from ..config import Qwen3NextConfig
from . import check_equal


def check_kv_bytes_per_token(answer: int) -> bool:
    """Bytes of KV cache one token adds across all attention layers of the release, in bfloat16."""
    cfg = Qwen3NextConfig.full()
    cache = KVCache()
    kv = torch.zeros(1, cfg.num_key_value_heads, 1, cfg.head_dim, dtype=torch.bfloat16)
    cache.update(kv, kv)
    expected = cache.nbytes() * cfg.layer_types.count("full_attention")
    return check_equal(answer, expected, "per layer: K and V, num_key_value_heads x head_dim numbers each, "
                       "2 bytes per bfloat16; only the full-attention layers keep one.")


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
