"""Benchmark: our delta-rule kernels against the reference's, on one CPU thread.

1. ``chunk_gated_delta_rule`` against transformers' ``torch_chunk_gated_delta_rule`` at T = 4096 with the
   real head sizes of Qwen3-Next (B = 1, 16 key heads, 32 value heads, Dk = Dv = 128), both with the
   in-kernel q/k L2 norm as the model calls them. Same inputs, outputs compared, ratio printed.
2. The recurrent / chunked crossover: for growing T, the time of the token loop against the chunked form
   (ours, and the reference's pair), and the first length at which chunking wins.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_delta_rule.py [--T 4096] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from qwen3next.delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule  # noqa: E402


def inputs(T, B=1, Hk=16, Hv=32, Dk=128, Dv=128, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, Hk, Dk, generator=gen)
    k = torch.randn(B, T, Hk, Dk, generator=gen)
    v = torch.randn(B, T, Hv, Dv, generator=gen)
    g = -torch.rand(B, T, Hv, generator=gen) * 0.5
    beta = torch.rand(B, T, Hv, generator=gen)
    return q, k, v, g, beta


def best_time(fn, repeats, clock=time.process_time):
    """Smallest time of ``repeats`` runs after one warm-up (the least disturbed run).

    The default clock is this process's CPU time: with one thread it is the compute time, and unlike
    wall time it does not count the moments a busy machine gives the CPU to someone else.
    """
    fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers
    from transformers.models.qwen3_next import modeling_qwen3_next as ref

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}")
    kw = dict(output_final_state=True, use_qk_l2norm_in_kernel=True)
    with torch.no_grad():
        # 1. chunked kernels at the real head sizes
        x = inputs(args.T)
        o, S = chunk_gated_delta_rule(*x, **kw)
        o_ref, S_ref = ref.torch_chunk_gated_delta_rule(*x, **kw)
        diff = max((o - o_ref).abs().max().item(), (S - S_ref).abs().max().item())
        # alternate the two so that a busy spell of the machine hits both alike; keep each one's best run
        best = {}
        for clock in (time.process_time, time.perf_counter):
            t_ours = t_ref = float("inf")
            for _ in range(args.repeats):
                t_ours = min(t_ours, best_time(lambda: chunk_gated_delta_rule(*x, **kw), 1, clock))
                t_ref = min(t_ref, best_time(lambda: ref.torch_chunk_gated_delta_rule(*x, **kw), 1, clock))
            best[clock.__name__] = t_ours, t_ref
        print(f"\nchunked, B=1 T={args.T} Hk=16 Hv=32 Dk=Dv=128 chunk=64 (max |diff| vs reference {diff:.2e})")
        for name, (t_ours, t_ref) in best.items():
            what = "CPU time " if name == "process_time" else "wall time"
            print(f"  {what}: ours {t_ours * 1e3:8.1f} ms, reference {t_ref * 1e3:8.1f} ms, "
                  f"ratio reference / ours = {t_ref / t_ours:.2f}x ({'not slower' if t_ours <= t_ref else 'SLOWER'})")

        # 2. crossover between the token loop and the chunked form
        print("\nrecurrent vs chunked, same sizes (ms of CPU time)")
        print(f"  {'T':>5} {'ours rec':>9} {'ours chunk':>10} {'ref rec':>9} {'ref chunk':>9}")
        lengths = (1, 2, 4, 8, 16, 32, 64, 128, 256)
        table = []
        for T in lengths:
            x = inputs(T)
            r = max(args.repeats, 10 if T <= 32 else 1)  # short runs are cheap: more repeats, less noise
            times = [best_time(lambda f=f, x=x: f(*x, **kw), r) * 1e3 for f in
                     (recurrent_gated_delta_rule, chunk_gated_delta_rule,
                      ref.torch_recurrent_gated_delta_rule, ref.torch_chunk_gated_delta_rule)]
            table.append(times)
            print(f"  {T:>5} {times[0]:9.2f} {times[1]:10.2f} {times[2]:9.2f} {times[3]:9.2f}")

        def crossover(rec, chk):
            """Smallest T from which the chunked form is faster at every longer length measured."""
            wins = [table[i][chk] < table[i][rec] for i in range(len(lengths))]
            for i in range(len(lengths)):
                if all(wins[i:]):
                    return lengths[i]
            return None

        print(f"  chunked beats the token loop from T = {crossover(0, 1)} (ours), T = {crossover(2, 3)} (reference)")


if __name__ == "__main__":
    main()
