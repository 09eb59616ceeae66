"""Norms, rotary embedding and gated attention at the real width: ours against the reference, one thread.

Real shapes (hidden 2048, 16 / 2 heads of 256, 64 rotated dims), float32, random weights:

* RMSNorm over (1, T, 2048) and the gated RMSNorm over (1, T, 32, 128);
* RotaryEmbedding + rotation of q (1, 16, T, 256) and k (1, 2, T, 256);
* one gated-attention layer: a prefill of T tokens, and one decode step over a cache of T tokens
  (our ``KVCache`` against the reference's ``DynamicCache``), with our "sdpa" and "eager" kernels
  against the reference's eager attention.

Prints the fastest of several alternating calls (ms), the ratio ours / reference (below 1 = we are
faster) and the largest difference between the two outputs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_attention.py [T]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from transformers import DynamicCache  # noqa: E402
from transformers.models.qwen3_next.modeling_qwen3_next import (  # noqa: E402
    Qwen3NextAttention,
    Qwen3NextRMSNorm,
    Qwen3NextRMSNormGated,
    Qwen3NextRotaryEmbedding,
    apply_rotary_pos_emb,
)

from qwen3next.attention import GatedAttention, KVCache  # noqa: E402
from qwen3next.config import Qwen3NextConfig  # noqa: E402
from qwen3next.norms import RMSNorm, RMSNormGated  # noqa: E402
from qwen3next.reference import max_abs_diff, reference_config  # noqa: E402
from qwen3next.rope import RotaryEmbedding, apply_rotary  # noqa: E402


def race(ours, ref, repeats):
    """Alternate the two calls and keep each one's fastest time (robust on a busy machine).

    Each callable returns ``(seconds, output)`` so that set-up work can stay outside the timing.
    """
    best_ours = best_ref = float("inf")
    for _ in range(repeats + 1):  # the first round warms up too
        t, out_ours = ours()
        best_ours = min(best_ours, t)
        t, out_ref = ref()
        best_ref = min(best_ref, t)
    return best_ours * 1e3, best_ref * 1e3, max_abs_diff(out_ours, out_ref)


def clock(fn):
    """Wrap a plain call as ``() -> (seconds, output)``."""

    def run():
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out

    return run


def row(name, result):
    ours, ref, diff = result
    print(f"{name:34s} ours {ours:9.3f} ms  reference {ref:9.3f} ms  ratio {ours / ref:5.2f}  max|diff| {diff:.1e}")


@torch.no_grad()
def main(T: int = 512, repeats: int = 5) -> None:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    torch.manual_seed(0)
    cfg = Qwen3NextConfig.full()
    ref_cfg = reference_config(cfg)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), T = {T}, float32")

    x = torch.randn(1, T, cfg.hidden_size)
    norm, ref_norm = RMSNorm(cfg.hidden_size), Qwen3NextRMSNorm(cfg.hidden_size)
    row("RMSNorm (1, T, 2048)", race(clock(lambda: norm(x)), clock(lambda: ref_norm(x)), repeats * 4))

    o, z = torch.randn(1, T, 32, 128), torch.randn(1, T, 32, 128)
    gnorm, ref_gnorm = RMSNormGated(128), Qwen3NextRMSNormGated(128)
    row("RMSNormGated (1, T, 32, 128)", race(clock(lambda: gnorm(o, z)), clock(lambda: ref_gnorm(o, z)), repeats * 4))

    rope, ref_rope = RotaryEmbedding(cfg), Qwen3NextRotaryEmbedding(ref_cfg)
    pos = torch.arange(T)[None]
    q, k = torch.randn(1, 16, T, 256), torch.randn(1, 2, T, 256)

    def ours_rope():
        cos, sin = rope(pos)
        return torch.cat([apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)], dim=1)

    def ref_rope_fn():
        cos, sin = ref_rope(x, pos)
        return torch.cat(apply_rotary_pos_emb(q, k, cos, sin), dim=1)

    row("RoPE tables + rotate q, k", race(clock(ours_rope), clock(ref_rope_fn), repeats * 4))

    ours = GatedAttention(cfg, 3)
    ref = Qwen3NextAttention(ref_cfg, 3)
    ref.load_state_dict(ours.state_dict())
    cos, sin = rope(pos)
    causal = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)[None, None]
    for impl in ("sdpa", "eager"):
        ours.implementation = impl
        result = race(clock(lambda: ours(x, cos, sin)), clock(lambda: ref(x, (cos, sin), causal)[0]), repeats)
        row(f"attention prefill, {impl}", result)

    # one decode step over T cached tokens (filling the caches stays outside the timing)
    x1 = torch.randn(1, 1, cfg.hidden_size)
    cos1, sin1 = rope(torch.tensor([[T]]))
    ref_mask = torch.zeros(1, 1, 1, T + 1)

    def ref_step():
        cache = DynamicCache(config=ref_cfg)
        ref(x, (cos, sin), causal, cache=cache)
        start = time.perf_counter()
        y = ref(x1, (cos1, sin1), ref_mask, cache=cache)[0]
        return time.perf_counter() - start, y

    def our_step():
        cache = KVCache()
        ours(x, cos, sin, cache=cache)
        start = time.perf_counter()
        y = ours(x1, cos1, sin1, cache=cache)
        return time.perf_counter() - start, y

    for impl in ("sdpa", "eager"):
        ours.implementation = impl
        row(f"attention decode 1 over T, {impl}", race(our_step, ref_step, repeats))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 512)
