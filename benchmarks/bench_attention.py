"""Norms, rotary embedding and gated attention at the real width: ours against the reference, one thread.

Real shapes (hidden 2048, 16 / 2 heads of 256, 64 rotated dims), float32, random weights:

* RMSNorm over (1, T, 2048) and the gated RMSNorm over (1, T, 32, 128);
* RotaryEmbedding + rotation of q (1, 16, T, 256) and k (1, 2, T, 256);
* one gated-attention layer: a prefill of T tokens, and one decode step over a cache of T tokens
  (our ``KVCache`` against the reference's ``DynamicCache``), with our "sdpa" and "eager" kernels
  against the reference's eager attention.

Prints, per operation, the median [range] of alternating calls (ms of CPU time), the ratio ours /
reference (below 1 = we are faster) and the largest difference between the two outputs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_attention.py [T]
"""

from __future__ import annotations

import sys

import torch
from timing import race, report, setup, timed
from transformers import DynamicCache
from transformers.models.qwen3_next.modeling_qwen3_next import (
    Qwen3NextAttention,
    Qwen3NextRMSNorm,
    Qwen3NextRMSNormGated,
    Qwen3NextRotaryEmbedding,
    apply_rotary_pos_emb,
)

from qwen3next.attention import GatedAttention, KVCache
from qwen3next.config import Qwen3NextConfig
from qwen3next.norms import RMSNorm, RMSNormGated
from qwen3next.reference import max_abs_diff, reference_config
from qwen3next.rope import RotaryEmbedding, apply_rotary


def row(name, ours, ref, repeats, diff=None, number=1):
    """Race the two calls and print the times; ``diff``: the outputs' difference (default: from a call each)."""
    diff = max_abs_diff(ours(), ref()) if diff is None else diff
    times = race({"ours": ours, "reference": ref}, repeats, number=number)
    report(name, times["ours"], times["reference"], f" (max |diff| {diff:.1e})")


@torch.no_grad()
def main(T: int = 512, repeats: int = 5) -> None:
    setup()
    torch.manual_seed(0)
    cfg = Qwen3NextConfig.full()
    ref_cfg = reference_config(cfg)
    print(f"T = {T}, float32")

    x = torch.randn(1, T, cfg.hidden_size)
    norm, ref_norm = RMSNorm(cfg.hidden_size), Qwen3NextRMSNorm(cfg.hidden_size)
    row("RMSNorm (1, T, 2048)", lambda: norm(x), lambda: ref_norm(x), repeats, number=20)

    o, z = torch.randn(1, T, 32, 128), torch.randn(1, T, 32, 128)
    gnorm, ref_gnorm = RMSNormGated(128), Qwen3NextRMSNormGated(128)
    row("RMSNormGated (1, T, 32, 128)", lambda: gnorm(o, z), lambda: ref_gnorm(o, z), repeats, number=20)

    rope, ref_rope = RotaryEmbedding(cfg), Qwen3NextRotaryEmbedding(ref_cfg)
    pos = torch.arange(T)[None]
    q, k = torch.randn(1, 16, T, 256), torch.randn(1, 2, T, 256)

    def ours_rope():
        cos, sin = rope(pos)
        return torch.cat([apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)], dim=1)

    def ref_rope_fn():
        cos, sin = ref_rope(x, pos)
        return torch.cat(apply_rotary_pos_emb(q, k, cos, sin), dim=1)

    row("RoPE tables + rotate q, k", ours_rope, ref_rope_fn, repeats, number=20)

    ours = GatedAttention(cfg, 3)
    ref = Qwen3NextAttention(ref_cfg, 3)
    ref.load_state_dict(ours.state_dict())
    cos, sin = rope(pos)
    causal = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)[None, None]
    for impl in ("sdpa", "eager"):
        ours.implementation = impl
        row(f"attention prefill, {impl}", lambda: ours(x, cos, sin), lambda: ref(x, (cos, sin), causal)[0], repeats)

    # one decode step over T cached tokens (filling the caches stays outside the timing)
    x1 = torch.randn(1, 1, cfg.hidden_size)
    cos1, sin1 = rope(torch.tensor([[T]]))
    ref_mask = torch.zeros(1, 1, 1, T + 1)

    def ref_step():  # fill a cache (not timed), return the timed step
        cache = DynamicCache(config=ref_cfg)
        ref(x, (cos, sin), causal, cache=cache)
        return lambda: ref(x1, (cos1, sin1), ref_mask, cache=cache)[0]

    def our_step():
        cache = KVCache()
        ours(x, cos, sin, cache=cache)
        return lambda: ours(x1, cos1, sin1, cache=cache)

    for impl in ("sdpa", "eager"):
        ours.implementation = impl
        diff = max_abs_diff(our_step()(), ref_step()())
        row(f"attention decode 1 over T, {impl}", lambda: timed(our_step()), lambda: timed(ref_step()), repeats, diff)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 512)
