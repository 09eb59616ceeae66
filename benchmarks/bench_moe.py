"""Benchmark: one sparse MoE block at the released width, ours against transformers, same weights.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_moe.py [--dtype bfloat16|float32] [--tokens 1,16,256]

512 experts of width 512, hidden 2048, top 10, one shared expert: 1.61B parameters, 3.2 GB in
bfloat16 (the released dtype, the default here) or 6.4 GB in float32. The pair comes from
``qwen3next.reference.real_width_moe_pair(own_memory=True)``: the reference block's fused expert tensors
are allocated once and filled, and our block's stacked experts are the very same tensors, so both sides
read the very same memory.

Timed with ``benchmarks/timing.py`` (threads from ``OMP_NUM_THREADS``), inference mode, median of
interleaved repetitions of CPU time. Contention for memory bandwidth on a shared machine still shows
up, so compare ratios, not absolute times.
  ours:     dispatch "sorted" (the default), "loop", and "grouped" (only up to 16 tokens: it stacks
            the hit experts' weights, at 256 tokens nearly all of them, a second copy of the block)
  ref:      Qwen3NextSparseMoeBlock with experts_implementation "eager" (the reference's own loop) and
            "grouped_mm" (what from_pretrained picks by default); "batched_mm" at 1 token only (it
            gathers one weight copy per (token, expert) pair)
Ratios are ours / reference: below 1 means ours is faster.
"""

from __future__ import annotations

import argparse
import time

import torch
from timing import race, ratio, setup

from qwen3next.config import Qwen3NextConfig
from qwen3next.reference import real_width_moe_pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--tokens", default="1,16,256")
    parser.add_argument("--experts", type=int, default=512, help="fewer experts to save memory (default: 512)")
    parser.add_argument("--reps", type=int, default=0, help="repetitions (default: 20 / 8 / 4 by size)")
    args = parser.parse_args()
    setup()
    dtype = getattr(torch, args.dtype)
    cfg = Qwen3NextConfig.full().replace(num_experts=args.experts)
    t0 = time.perf_counter()
    cfg, ours, ref = real_width_moe_pair(dtype, cfg=cfg, own_memory=True)
    n_params = sum(p.numel() for p in ref.parameters())
    print(f"MoE block: {cfg.num_experts} experts x {cfg.moe_intermediate_size}, hidden {cfg.hidden_size}, "
          f"top {cfg.num_experts_per_tok}, {n_params / 1e9:.2f}B params in {args.dtype}; "
          f"built in {time.perf_counter() - t0:.1f} s")

    def reference(x, impl):
        ref.experts.config._experts_implementation = impl
        return ref(x)

    gen = torch.Generator().manual_seed(1)
    rows = []
    with torch.inference_mode():
        for n in [int(t) for t in args.tokens.split(",")]:
            x = torch.randn(1, n, cfg.hidden_size, generator=gen).to(dtype)
            fns = {
                "ours sorted": lambda x=x: ours(x, dispatch="sorted")[0],
                "ours loop": lambda x=x: ours(x, dispatch="loop")[0],
                "ref eager": lambda x=x: reference(x, "eager"),
                "ref grouped_mm": lambda x=x: reference(x, "grouped_mm"),
            }
            if n <= 16:
                fns["ours grouped"] = lambda x=x: ours(x, dispatch="grouped")[0]
            if n == 1:
                fns["ref batched_mm"] = lambda x=x: reference(x, "batched_mm")
            outs = {k: f() for k, f in fns.items()}  # warm-up, and a check that all agree
            y = outs["ref eager"].float()
            worst = max((o.float() - y).abs().max().item() for o in outs.values())
            reps = args.reps or (20 if n == 1 else 8 if n <= 16 else 4)
            times = race(fns, reps, warmup=0)  # the check above warmed every variant up
            rows.append((n, times, worst))

    names = ["ours sorted", "ours loop", "ours grouped", "ref eager", "ref grouped_mm", "ref batched_mm"]
    print("\nmedian CPU ms per call")
    print(f"{'tokens':>6} " + " ".join(f"{k:>15}" for k in names) + f" {'max|diff|':>10}")
    for n, times, worst in rows:
        cells = " ".join(f"{times[k].median() * 1e3:15.2f}" if k in times else f"{'-':>15}" for k in names)
        print(f"{n:>6} {cells} {worst:10.2e}")
    print("\nratios ours sorted / reference, run by run: median [range] (< 1: ours faster)")
    for n, times, _ in rows:
        r = [f"vs {k[4:]} {ratio(times['ours sorted'], times[k])}" for k in names if k.startswith("ref") and k in times]
        print(f"{n:>6} tokens: " + ", ".join(r) + f"; per token {times['ours sorted'].median() * 1e3 / n:.2f} ms")


if __name__ == "__main__":
    main()
