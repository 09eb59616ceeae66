"""Benchmark: our delta-rule kernels against the reference's (transformers' torch_*_gated_delta_rule).

1. The chunked form at T = 4096 with the real head sizes of Qwen3-Next (B = 1, 16 key heads, 32 value
   heads, Dk = Dv = 128), with the in-kernel q/k L2 norm as the model calls them: the forward pass alone
   (prefill) and forward + backward (training), chunk size 64 on both sides, plus ours at 16 and 32.
2. Forward + backward at the training shapes of the medium config (B = 8, T = 256, 4 key / 8 value heads
   of 32) for chunk sizes 16, 32, 64: which chunk size to use where.
3. The recurrent / chunked crossover (forward only): for growing T, the token loop against the chunked
   form, and the first length from which chunking wins.

Outputs and gradients are compared with the reference's before timing. Run with ``make bench`` or
``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_delta_rule.py [--T 4096] [--repeats 3]``.
"""

from __future__ import annotations

import argparse

import torch
from timing import measure, race, ratio, report, setup
from transformers.models.qwen3_next import modeling_qwen3_next as ref

from qwen3next.delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule
from qwen3next.reference import max_abs_diff

KW = dict(output_final_state=True, use_qk_l2norm_in_kernel=True)


def inputs(T, B=1, Hk=16, Hv=32, Dk=128, Dv=128, seed=0, grad=False):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, Hk, Dk, generator=gen)
    k = torch.randn(B, T, Hk, Dk, generator=gen)
    v = torch.randn(B, T, Hv, Dv, generator=gen)
    g = -torch.rand(B, T, Hv, generator=gen) * 0.5
    beta = torch.rand(B, T, Hv, generator=gen)
    return [x.requires_grad_(grad) for x in (q, k, v, g, beta)]


def train_step(fn, x, weight, chunk_size):
    """Forward + backward of a fixed weighting of the output and the final state; returns the grads."""
    for t in x:
        t.grad = None
    o, S = fn(*x, chunk_size=chunk_size, **KW)
    ((o * weight).sum() + S.sum()).backward()
    return [t.grad for t in x]


def forward_and_backward(x, chunks, repeats, label):
    weight = torch.randn(x[2].shape, generator=torch.Generator().manual_seed(1))
    g_ours = train_step(chunk_gated_delta_rule, x, weight, 64)
    g_ref = train_step(ref.torch_chunk_gated_delta_rule, x, weight, 64)
    diff = max(max_abs_diff(a, b) / (1 + b.abs().max().item()) for a, b in zip(g_ours, g_ref, strict=True))
    sides = {f"ours C={c}": (lambda c=c: train_step(chunk_gated_delta_rule, x, weight, c)) for c in chunks}
    sides["reference C=64"] = lambda: train_step(ref.torch_chunk_gated_delta_rule, x, weight, 64)
    times = race(sides, repeats)
    report(f"{label}: forward + backward, chunk 64 (gradients vs reference: max relative |diff| {diff:.1e})",
           times["ours C=64"], times["reference C=64"])
    for c in chunks:
        if c != 64:
            print(f"    ours C={c:<2}  {times[f'ours C={c}']}  ratio to reference C=64: "
                  f"{ratio(times[f'ours C={c}'], times['reference C=64'])} CPU")


def crossover_table(repeats):
    print("\nrecurrent vs chunked (forward), real head sizes, median ms of CPU time")
    print(f"  {'T':>5} {'ours rec':>9} {'ours chunk':>10} {'ref rec':>9} {'ref chunk':>9}")
    lengths = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    kernels = (recurrent_gated_delta_rule, chunk_gated_delta_rule,
               ref.torch_recurrent_gated_delta_rule, ref.torch_chunk_gated_delta_rule)
    table = []
    for T in lengths:
        x = inputs(T)
        r = max(repeats, 10 if T <= 32 else 3)  # short runs are cheap: more repeats, less noise
        times = [measure(lambda f=f, x=x: f(*x, **KW), r).median() * 1e3 for f in kernels]
        table.append(times)
        print(f"  {T:>5} " + " ".join(f"{t:9.2f}" for t in times))

    def crossover(rec, chk):
        """Smallest T from which the chunked form is faster at every longer length measured."""
        wins = [row[chk] < row[rec] for row in table]
        return next((lengths[i] for i in range(len(lengths)) if all(wins[i:])), None)

    print(f"  chunked beats the token loop from T = {crossover(0, 1)} (ours), T = {crossover(2, 3)} (reference)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    setup()

    x = inputs(args.T)
    with torch.no_grad():
        o, S = chunk_gated_delta_rule(*x, **KW)
        o_ref, S_ref = ref.torch_chunk_gated_delta_rule(*x, **KW)
        diff = max(max_abs_diff(o, o_ref), max_abs_diff(S, S_ref))
        times = race({"ours": lambda: chunk_gated_delta_rule(*x, **KW),
                      "reference": lambda: ref.torch_chunk_gated_delta_rule(*x, **KW)}, args.repeats)
    report(f"chunked forward, B=1 T={args.T} Hk=16 Hv=32 Dk=Dv=128, chunk 64 (max |diff| {diff:.1e})",
           times["ours"], times["reference"])

    forward_and_backward(inputs(args.T, grad=True), (16, 32, 64), args.repeats, f"real heads, T={args.T}")
    forward_and_backward(inputs(256, B=8, Hk=4, Hv=8, Dk=32, Dv=32, grad=True), (16, 32, 64), 4 * args.repeats,
                         "medium config, B=8 T=256 Hk=4 Hv=8 Dk=Dv=32")
    with torch.no_grad():
        crossover_table(args.repeats)


if __name__ == "__main__":
    main()
