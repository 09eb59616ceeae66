"""Decoding at the real width against the memory-bandwidth limit, and with the routed experts on disk.

The slice: every real dimension of Qwen3-Next-80B-A3B (hidden 2048; 512 experts of width 512, top 10, plus
the shared expert; attention 16 query / 2 KV heads of 256; DeltaNet 16 key / 32 value heads of 128) but
two layers, one DeltaNet and one gated attention (the real pattern has three DeltaNet layers per attention
layer; two layers of 512 bf16 experts are already 6.4 GB), and a vocabulary of 8192 (the head's matrix
at the real 151,936 rows is timed on its own). Random bf16 weights, written in a temporary directory with
the package's own Hub layout (``checkpoint.hub_layout``, ``Qwen3NextConfig.to_json``), loaded with
``Qwen3NextForCausalLM.from_pretrained``; never kept.

1. This machine's memory bandwidth, in the same run: copying 1 GiB (bytes read + written per second) and
   reading it (a sum), on one thread and on every core.
2. Decoding with everything in memory: the time of one step (median of the steps) and of each layer
   type; the bytes one step must read (weights and state); achieved bandwidth and its fraction of the
   copy bandwidth. Rounds alternate with the same steps on PyTorch's own bf16 kernels instead of oneDNN's
   (``generate(..., cpu_kernels="native")``): what a faster kernel for one bf16 row reaches on the same
   weights.
3. The full 48-layer model in bf16 and FP8 on this machine: tokens per second extrapolated from the
   measured layers on both kernel choices, and the limit (bytes per token / bandwidth).
4. Experts on disk (the checkpoint's pages dropped from the page cache before each run), each run a fresh
   process: tokens per second, bytes read per token and cache hit rate for several cache sizes, reading on
   demand, with background reader threads, and with next-layer lookahead (``offload.enable_prefetch``).
   Random weights route almost uniformly, so these hit rates are the pessimistic end.
5. Peak resident memory of the full model with offloading, from the slice's measured overhead.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_real_width.py`` (``--steps``, ``--runs``,
``--caches``); about 7 GB of memory and 7 GB of temporary disk.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from timing import Split, Timing, measure, race, ratio, setup, timed

from qwen3next.config import Qwen3NextConfig
from qwen3next.fp8 import fp8_candidate
from qwen3next.hub_layout import hub_layout

GB = 1e9
SLICE = dict(num_hidden_layers=2, full_attention_interval=2, vocab_size=8192, bos_token_id=None, eos_token_id=None)
PROMPT = 16


# ------------------------------------------------------------------------------------ the checkpoint
def write_slice(path: str, cfg: Qwen3NextConfig, shard_bytes: int = 1 << 30, seed: int = 0) -> int:
    """Random bf16 weights in the Hub layout, in shards of about ``shard_bytes``; returns the bytes written.

    Windows of one random pool at random offsets (``N(0, 0.02)``): drawing 3.4B normal numbers would take
    a minute, and every tensor still gets its own memory and values.
    """
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    pool = (torch.randn(1 << 24, generator=gen) * 0.02).to(torch.bfloat16)
    weight_map, shard, size, total = {}, {}, 0, 0

    def flush():
        nonlocal shard, size
        name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, os.path.join(path, name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        shard, size = {}, 0

    for name, expected in hub_layout(cfg).items():
        n = math.prod(expected.shape)
        start = int(torch.randint(0, pool.numel() - n, (1,), generator=gen)) if n < pool.numel() else 0
        flat = pool[start:start + n] if n < pool.numel() else pool.repeat(-(-n // pool.numel()))[:n]
        shard[name] = flat.clone().view(expected.shape)
        size += 2 * n
        total += 2 * n
        if size >= shard_bytes:
            flush()
    if shard:
        flush()
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    cfg.to_json(os.path.join(path, "config.json"))
    return total


def evict(path: str) -> None:
    """Drop the checkpoint's pages from the page cache (this file only), so reads go to the disk."""
    for name in os.listdir(path):
        fd = os.open(os.path.join(path, name), os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------- bandwidth
def bandwidth(threads: int, repeats: int = 9) -> dict[str, float]:
    """GB/s of copying 1 GiB (read + write) and of reading it (a sum) on ``threads`` threads: the median
    of ``repeats`` runs (and in ``*_range`` the slowest and fastest). One thread is timed by its CPU time
    like the decode steps; several threads by the wall clock (their CPU times add up)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a = torch.ones(1 << 28, dtype=torch.float32)  # 1 GiB
    b = torch.empty_like(a)
    clock = "cpu" if threads == 1 else "wall"
    out = {}
    for name, fn, nbytes in (("copy", lambda: b.copy_(a), 2 * a.nbytes), ("read", lambda: a.sum(), a.nbytes)):
        times = getattr(measure(fn, repeats), clock)
        out[name] = nbytes / statistics.median(times) / GB
        out[f"{name}_range"] = (nbytes / max(times) / GB, nbytes / min(times) / GB)
    torch.set_num_threads(before)
    return out


def describe_bandwidth(bw: dict) -> str:
    return ", ".join(f"{name} {bw[name]:.1f} GB/s [{bw[name + '_range'][0]:.1f}-{bw[name + '_range'][1]:.1f}]"
                     for name in ("copy", "read"))


# ------------------------------------------------------------------------------ decode in memory
def param_bytes(module: torch.nn.Module, skip: str = ".experts.") -> int:
    return sum(p.numel() * p.element_size() for n, p in module.named_parameters() if skip not in f".{n}")


def step_bytes(model, cfg: Qwen3NextConfig, context: int) -> dict[str, int]:
    """Bytes one decode step reads at ``context`` cached tokens: per layer type (weights + state), head."""
    expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size * 2  # bf16
    out = {}
    for layer in model.model.layers:
        weights = param_bytes(layer) + cfg.num_experts_per_tok * expert  # 10 distinct experts for one token
        if layer.layer_type == "linear_attention":  # fp32 recurrent state and the conv window, read and written
            state = 2 * (cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim * 4
                         + cfg.linear_conv_dim * cfg.linear_conv_kernel_dim * 2)
        else:  # the K and V cache of ``context`` tokens (bf16), read once
            state = 2 * cfg.num_key_value_heads * cfg.head_dim * context * 2
        out[layer.layer_type] = weights + state
    out["head"] = cfg.hidden_size * 2 * (cfg.vocab_size + 2)  # lm_head, final norm, one embedding row
    return out


def layer_clock(model, now: dict) -> dict[tuple[str, str], Timing]:
    """Forward hooks that record each decoder layer's CPU and wall time, per (``now["kernels"]``, layer type)."""
    times: dict[tuple[str, str], Timing] = {}
    for layer in model.model.layers:
        def pre(m, _a):
            m._t0 = time.process_time(), time.perf_counter()

        def post(m, _a, _o):
            cpu, wall = m._t0
            key = (now["kernels"], m.layer_type)
            times.setdefault(key, Timing()).add(Split(time.process_time() - cpu, time.perf_counter() - wall))

        layer.register_forward_pre_hook(pre)
        layer.register_forward_hook(post)
    return times


def token_stream(vocab: int, n: int) -> torch.Tensor:
    """The decode inputs: seeded random tokens (the model's own greedy choice would repeat itself, and
    with it the router's, making every cache look better than on text)."""
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(1))


def decode(model, steps: int, on_step=None, kernels: str = "onednn") -> list[int]:
    """Prefill ``PROMPT`` tokens, then ``steps`` single-token steps fed from :func:`token_stream`, each on
    ``kernels`` (``use_cpu_kernels``, as ``generate(..., cpu_kernels=...)`` runs them); returns the greedy
    prediction of every step. ``on_step(fn)`` runs each step (to time it)."""
    from qwen3next.linear import use_cpu_kernels

    ids = token_stream(model.config.vocab_size, PROMPT + steps)
    cache = model.new_cache(1)
    predicted = []

    def step(t):
        with use_cpu_kernels(kernels):
            logits = model(ids[:, t:t + 1], cache=cache).logits
        predicted.append(int(logits[0, -1].argmax()))

    with torch.no_grad():
        model(ids[:, :PROMPT], cache=cache, logits_to_keep=1)
        for t in range(PROMPT, PROMPT + steps):
            (on_step or (lambda fn: fn()))(lambda t=t: step(t))
    return predicted


def decode_in_memory(path: str, steps: int, rounds: int) -> dict[str, dict]:
    """Load the slice (6.6 GB) and decode in a fresh process: memory freed by a process is not always
    handed back to the system (glibc keeps small blocks), so the offloading runs would see it.
    ``{kernels: measured}`` for both CPU kernel choices, decoded in alternating rounds on the same weights."""
    res = _run_worker("memory", path, steps, rounds)
    out = {}
    for kernels, r in res["kernels"].items():
        out[kernels] = {"steps": Timing(*r["steps"]), "rounds": Timing(*r["rounds"]), "tokens": r["tokens"],
                        "layers": {kind: Timing(*t) for kind, t in r["layers"].items()}, "bytes": res["bytes"]}
    return out


def memory_worker(path: str, steps: int, rounds: int) -> dict:
    """``rounds`` rounds of decoding ``steps`` tokens, each round once with oneDNN's kernels and once with
    PyTorch's own (``use_cpu_kernels``: only around the one-token steps, as ``generate`` does)."""
    from qwen3next.linear import CPU_KERNELS
    from qwen3next.model import Qwen3NextForCausalLM

    model = Qwen3NextForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    for kernels in CPU_KERNELS:
        decode(model, 1, kernels=kernels)  # warm-up
    now = {}
    layers = layer_clock(model, now)
    res = {k: {"steps": Timing(), "rounds": Timing()} for k in CPU_KERNELS}
    for _ in range(rounds):
        for kernels in CPU_KERNELS:
            now["kernels"], r, this_round = kernels, res[kernels], Timing()
            r["tokens"] = decode(model, steps, on_step=lambda fn, t=this_round: t.add(timed(fn)), kernels=kernels)
            r["steps"].cpu += this_round.cpu
            r["steps"].wall += this_round.wall
            r["rounds"].add(Split(sum(this_round.cpu), sum(this_round.wall)))
    return {"bytes": step_bytes(model, model.config, PROMPT + steps // 2), "kernels": {
        k: {"steps": [r["steps"].cpu, r["steps"].wall], "rounds": [r["rounds"].cpu, r["rounds"].wall],
            "tokens": r["tokens"], "layers": {kind: [t.cpu, t.wall] for (kk, kind), t in layers.items() if kk == k}}
        for k, r in res.items()}}


def _run_worker(*args) -> dict:
    res = subprocess.run([sys.executable, __file__, "--worker", *map(str, args)], capture_output=True, text=True,
                         timeout=1800)
    if res.returncode != 0:
        raise SystemExit(f"worker {args} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def head_time(cfg: Qwen3NextConfig) -> dict[str, Timing]:
    """The real-vocabulary head (151,936 x 2048 bf16) for one token, on each kernel choice."""
    from qwen3next.linear import CPU_KERNELS, use_cpu_kernels

    head = torch.nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=torch.bfloat16)
    x = torch.randn(1, 1, cfg.hidden_size, dtype=torch.bfloat16)

    def run(kernels):
        with torch.no_grad(), use_cpu_kernels(kernels):
            head(x)

    return race({k: lambda k=k: run(k) for k in CPU_KERNELS}, 5)


def report_in_memory(m: dict, bw: dict, steps: int) -> None:
    """Per layer type and per step: CPU time, bytes read, the rate, and its fraction of the copy bandwidth,
    the read bandwidth and the rate of one large bf16 matrix-vector product (the real head)."""
    head = m["head_bytes"] / m["head"].median("cpu") / GB
    limits = {"copy": bw[1]["copy"], "read": bw[1]["read"], "one big matvec": head}

    def rate(nbytes, timing):
        cpu, wall = nbytes / timing.median("cpu") / GB, nbytes / timing.median("wall") / GB
        shares = ", ".join(f"{cpu / v:.0%} of {k}" for k, v in limits.items())
        return f"{cpu:5.2f} GB/s by CPU time = {shares} (by the wall clock {wall:.2f} GB/s)"

    print(f"\n2. decode in memory, bf16, {steps} steps after a {PROMPT}-token prompt: {m['steps']} per step")
    print(f"  the real head (151,936 x 2048 bf16, {m['head_bytes'] / 1e6:.0f} MB) alone: {m['head']}: {head:.2f} GB/s")
    for kind, t in m["layers"].items():
        print(f"  {kind:<17} {t.median() * 1e3:6.2f} ms CPU ({t.median('wall') * 1e3:.2f} wall), reads "
              f"{m['bytes'][kind] / 1e6:6.1f} MB: {rate(m['bytes'][kind], t)}")
    total = sum(m["bytes"].values())
    print(f"  whole step: {total / 1e6:.1f} MB: {rate(total, m['steps'])}")


def report_native_kernels(native: dict, m: dict, bw: dict) -> None:
    """The same decoding on PyTorch's own bf16 kernels (``generate(..., cpu_kernels="native")``), in the
    same process, rounds alternating with oneDNN's."""
    total = sum(native["bytes"].values())
    cpu = total / native["steps"].median("cpu") / GB
    head = native["head_bytes"] / native["head"].median("cpu") / GB
    print(f"  the real head on PyTorch's own kernels: {native['head']}: {head:.2f} GB/s; against oneDNN's "
          f"{ratio(native['head'], m['head'])}")
    print(f"  the same steps on PyTorch's own kernels (cpu_kernels=\"native\", an opt-in: a process-wide switch "
          f"while a step runs): {native['steps']} per step, {cpu:.2f} GB/s by CPU time = "
          f"{cpu / bw[1]['copy']:.0%} of copy; time per round against oneDNN's {ratio(native['rounds'], m['rounds'])}"
          f" (by the wall clock {ratio(native['rounds'], m['rounds'], 'wall')}); predictions the same: "
          f"{native['tokens'] == m['tokens']}")
    for kind, t in native["layers"].items():
        print(f"    {kind:<17} {t.median() * 1e3:6.2f} ms CPU, {native['bytes'][kind] / t.median() / GB:5.2f} GB/s")


# ------------------------------------------------------------------------------- the full model
def full_bytes(fp8: bool) -> dict[str, int]:
    """Weight bytes one decode step of the released model reads, per layer type and for the head."""
    cfg = Qwen3NextConfig.full()
    E, k = cfg.num_experts, cfg.num_experts_per_tok

    def nbytes(name, shape):
        n = math.prod(shape)
        if fp8 and fp8_candidate(name, shape):  # e4m3 plus one fp32 scale per 128 x 128 block
            return n + 4 * math.ceil(shape[0] / 128) * math.ceil(shape[1] / 128)
        return 2 * n

    per_layer: dict[int, int] = {}
    head = 0
    for name, e in hub_layout(cfg).items():
        b = nbytes(name, e.shape)
        if name.startswith("model.layers."):
            i = int(name.split(".")[2])
            per_layer[i] = per_layer.get(i, 0) + (b * k // E if ".mlp.experts." in name else b)
        elif name.startswith("lm_head") or name == "model.norm.weight":
            head += b
    out = {kind: per_layer[cfg.layer_types.index(kind)] for kind in set(cfg.layer_types)}
    out["head"] = head + 2 * cfg.hidden_size  # and one embedding row
    return out


def extrapolate(by_kernels: dict[str, dict], bw: dict) -> dict[str, float]:
    """Print the full model's bytes, limits and our extrapolated speed on each kernel choice; return the
    seconds per token on oneDNN's."""
    cfg = Qwen3NextConfig.full()
    counts = {kind: cfg.layer_types.count(kind) for kind in set(cfg.layer_types)}
    t_full = {kernels: {clock: sum(m["layers"][k].median(clock) * n for k, n in counts.items())
                        + m["head"].median(clock) for clock in ("cpu", "wall")}
              for kernels, m in by_kernels.items()}
    bf16 = full_bytes(False)
    bf16_total = sum(bf16[k] * n for k, n in counts.items()) + bf16["head"]
    print("\n3. the full 48-layer model on this machine (one token, short context)")
    for label, b in (("bf16", bf16), ("FP8", full_bytes(True))):
        total = sum(b[k] * n for k, n in counts.items()) + b["head"]
        parts = ", ".join(f"{k} {b[k] / 1e6:.0f} MB x {n}" for k, n in counts.items())
        print(f"  {label}: {total / GB:.2f} GB of weights per token ({parts}, head {b['head'] / 1e6:.0f} MB)")
        for name, rate in (("1 thread", bw[1]), (f"{os.cpu_count()} threads", bw["all"])):
            print(f"      limit on {name}: {rate['copy'] / total * GB:.2f} tokens/s at the copy bandwidth, "
                  f"{rate['read'] / total * GB:.2f} at the read bandwidth")
        scale = total / bf16_total  # FP8 read at the bf16 kernels' bandwidth
        what = ("ours, extrapolated from the measured layers" if label == "bf16" else
                "ours: FP8 files are dequantised to bf16 when loaded, so they decode at the bf16 speed; a kernel "
                "reading e4m3 at the same bandwidth would reach")
        print(f"      {what}:")
        for kernels, t in t_full.items():
            speed = {clock: 1 / (t[clock] * scale) for clock in t}
            print(f"        on {kernels} kernels: {speed['cpu']:.2f} tokens/s by CPU time ({speed['wall']:.2f} by "
                  f"the wall clock), {total * speed['cpu'] / GB:.2f} GB/s = "
                  f"{total * speed['cpu'] / GB / bw[1]['copy']:.0%} of the 1-thread copy bandwidth")
    return t_full["onednn"]


# ------------------------------------------------------------------------------------ offloading
def offload_worker(path: str, cache: int, mode: str, steps: int) -> dict:
    """One offloaded decode in a fresh process."""
    from qwen3next.model import Qwen3NextForCausalLM
    from qwen3next.offload import enable_prefetch

    def status(key):
        return int(next(line for line in open("/proc/self/status") if line.startswith(key + ":")).split()[1]) * 1024

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status("VmRSS")
    model = Qwen3NextForCausalLM.from_pretrained(path, dtype=torch.bfloat16, offload_experts=True,
                                                 expert_cache_size=cache)
    if mode != "on demand":
        enable_prefetch(model, threads=4, lookahead=mode == "lookahead")
    store = model.expert_store
    counts = {}
    wall = []

    def on_step(fn):
        if not counts:  # the prompt is in: count from the first decode step
            counts.update(store.stats())
        wall.append(timed(fn).wall)

    tokens = decode(model, steps, on_step)
    before = counts
    after = store.stats()
    d = {k: after[k] - before[k] for k in ("hits", "misses", "bytes_read", "prefetched", "prefetch_used")}
    return {"wall": sum(wall), "peak": status("VmHWM") - base, "tokens": tokens, **d}


def offload_runs(path: str, caches: list[int], steps: int, runs: int, expected_tokens: list[int]) -> list[dict]:
    modes = ("on demand", "readers", "lookahead")
    results: dict[tuple[int, str], list[dict]] = {}
    for _ in range(runs):
        for cache in caches:
            for mode in modes:
                evict(path)
                results.setdefault((cache, mode), []).append(_run_worker("offload", path, cache, mode, steps))
    print(f"\n4. experts on disk, {steps} decode steps after a {PROMPT}-token prompt, page cache dropped before "
          f"each run; wall time (reads wait for the disk), median [range] of {runs} fresh processes")
    rows = []
    for (cache, mode), rs in results.items():
        wall = {m: Timing(*[[r["wall"] for r in results[(cache, m)]]] * 2) for m in (mode, "on demand")}
        speed = [steps / r["wall"] for r in rs]
        r0, peak = rs[0], statistics.median(r["peak"] for r in rs)
        print(f"  cache {cache:>4} experts, {mode:<9}: {statistics.median(speed):5.2f} tokens/s "
              f"[{min(speed):.2f}-{max(speed):.2f}], time vs on demand {ratio(wall[mode], wall['on demand'])}; "
              f"{r0['bytes_read'] / steps / 1e6:.1f} MB read per token, hit rate "
              f"{r0['hits'] / (r0['hits'] + r0['misses']):.0%}, read ahead {r0['prefetched']} (used "
              f"{r0['prefetch_used']}); peak {peak / GB:.2f} GB; "
              f"predictions as in memory: {all(r['tokens'] == expected_tokens for r in rs)}")
        per_token = statistics.median(r["wall"] for r in rs) / steps
        rows.append({"cache": cache, "mode": mode, "peak": peak, "wall": per_token})
    return rows


def full_offload(rows: list[dict], slice_cfg: Qwen3NextConfig, slice_step: float, full_step: float) -> None:
    """The full model with offloading: peak = its non-expert weights + the cache + the slice's measured
    overhead; time per token = in memory + 48 x the disk time the slice's layers added (wall clock)."""
    full = Qwen3NextConfig.full()
    expert = 3 * full.hidden_size * full.moe_intermediate_size * 2

    def non_expert(cfg):
        return sum(2 * math.prod(e.shape) for n, e in hub_layout(cfg).items() if ".mlp.experts." not in n)

    print("\n5. the full model with offloading (bf16), the same share of the cache per layer as the slice")
    for r in rows:
        per_layer = r["cache"] / slice_cfg.num_hidden_layers  # every layer is a MoE layer
        cache_full = per_layer * full.num_hidden_layers
        disk = max(r["wall"] - slice_step, 0.0) / slice_cfg.num_hidden_layers  # per layer and token
        speed = 1 / (full_step + full.num_hidden_layers * disk)
        line = f"  {per_layer:.0f} experts per layer ({cache_full:.0f} in all), {r['mode']:<9}: {speed:.2f} tokens/s"
        if r["mode"] == "on demand":
            overhead = r["peak"] - non_expert(slice_cfg) - r["cache"] * expert
            peak = non_expert(full) + cache_full * expert + overhead
            line += (f"; peak resident {peak / GB:.2f} GB (non-expert weights {non_expert(full) / GB:.2f} GB + cache "
                     f"{cache_full * expert / GB:.2f} GB + measured overhead {overhead / GB:.2f} GB)")
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24, help="decode steps")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per offloading setting")
    parser.add_argument("--rounds", type=int, default=3, help="in-memory decoding rounds per kernel choice")
    parser.add_argument("--caches", default="20,80,320", help="offload cache sizes (experts)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one measurement in this fresh process: print it as a JSON line
        kind, path, *rest = args.worker
        setup()
        if kind == "memory":
            out = memory_worker(path, int(rest[0]), int(rest[1]))
        else:
            out = offload_worker(path, int(rest[0]), rest[1], int(rest[2]))
        print(json.dumps(out))
        return
    setup()
    cfg = Qwen3NextConfig.full().replace(**SLICE)
    bw = {1: bandwidth(1), "all": bandwidth(os.cpu_count())}
    print(f"1. memory bandwidth, median [range] of 9 runs: 1 thread (CPU time) {describe_bandwidth(bw[1])}; "
          f"{os.cpu_count()} threads (wall) {describe_bandwidth(bw['all'])}")
    with tempfile.TemporaryDirectory(prefix="qwen3next-slice-") as path:
        t = time.perf_counter()
        total = write_slice(path, cfg)
        evict(path)
        print(f"slice: layers {cfg.layer_types}, {cfg.num_experts} experts top {cfg.num_experts_per_tok}, "
              f"vocab {cfg.vocab_size}; {total / GB:.2f} GB written in {time.perf_counter() - t:.0f} s")

        by_kernels = decode_in_memory(path, args.steps, args.rounds)
        full = Qwen3NextConfig.full()
        heads = head_time(full)
        for kernels, m in by_kernels.items():
            m["head"], m["head_bytes"] = heads[kernels], 2 * full.vocab_size * full.hidden_size
        m = by_kernels["onednn"]
        report_in_memory(m, bw, args.steps)
        report_native_kernels(by_kernels["native"], m, bw)
        t_full = extrapolate(by_kernels, bw)

        caches = [int(c) for c in args.caches.split(",")]
        rows = offload_runs(path, caches, args.steps, args.runs, m["tokens"])
        full_offload(rows, cfg, m["steps"].median("wall"), t_full["wall"])


if __name__ == "__main__":
    main()
