"""Benchmark of qwen3next.weights: load time, peak resident memory and decoding speed.

Writes a synthetic checkpoint with the reference (``save_pretrained``: real Hub layout) at the real
width (hidden 2048, experts of width 512) but few layers and experts, then loads it in fresh
processes three ways and prints one row each, with ratios:

* ``reference``: ``transformers.Qwen3NextForCausalLM.from_pretrained`` + its ``generate``
* ``ours``: ``Qwen3NextForCausalLM.from_pretrained`` (everything in memory) + ``qwen3next.generate``
* ``ours offload``: the routed experts left on disk, read on demand through the LRU cache

Peak memory is the process's own high-water mark (``VmHWM`` after resetting it through
``/proc/self/clear_refs``), measured from just before loading to the end of decoding, so imports do
not count. Each mode runs ``--runs`` times in fresh processes, the modes taking turns; times are the
median [range] (``benchmarks/timing.py``), threads from ``OMP_NUM_THREADS``. Linux only.
Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_weights.py`` (options: ``--layers``,
``--experts``, ``--tokens``, ``--runs``, ``--keep DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def worker(mode: str, path: str, n_new: int, cache: int) -> None:
    """One load + greedy decode in this (fresh) process; prints a JSON line of what it measured."""
    import torch
    import transformers
    from timing import setup, timed

    from qwen3next.config import Qwen3NextConfig
    from qwen3next.generate import generate
    from qwen3next.model import Qwen3NextForCausalLM

    setup()
    with torch.no_grad():  # warm up lazy imports so that they do not count as weights
        Qwen3NextForCausalLM(Qwen3NextConfig.tiny())(torch.arange(4)[None])

    def status(key):
        return int(next(line for line in open("/proc/self/status") if line.startswith(key + ":")).split()[1]) * 1024

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark
    base = status("VmRSS")
    loaded = {}

    def load():
        if mode == "reference":
            loaded["model"] = transformers.Qwen3NextForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
        else:
            loaded["model"] = Qwen3NextForCausalLM.from_pretrained(path, offload_experts=mode == "offload",
                                                                   expert_cache_size=cache)

    load_t = timed(load)
    model = loaded["model"]
    resident = status("VmRSS") - base
    ids = torch.arange(16)[None] % model.config.vocab_size
    out = {}

    def decode():
        if mode == "reference":
            out["ids"] = model.generate(ids, max_new_tokens=n_new, do_sample=False, min_new_tokens=n_new)
        else:
            out["ids"] = generate(model, ids, n_new)

    with torch.no_grad():
        gen_t = timed(decode)
    print(json.dumps({"load": [load_t.cpu, load_t.wall], "decode": [gen_t.cpu, gen_t.wall], "resident": resident,
                      "peak": status("VmHWM") - base, "tokens": out["ids"][0, 16:].tolist()}))


def _s(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} s [{min(xs):.2f}-{max(xs):.2f}]"


def describe_full() -> dict[str, int]:
    """Weight memory of the released model in each mode, from its config alone."""
    import math

    from qwen3next.config import Qwen3NextConfig
    from qwen3next.hub_layout import component_of, hub_layout

    layout = hub_layout(Qwen3NextConfig.full())
    total = sum(math.prod(e.shape) for e in layout.values())
    experts = sum(math.prod(e.shape) for k, e in layout.items() if component_of(k) == "routed experts")
    return {"load everything": 2 * total, "non-expert weights": 2 * (total - experts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=8, help="new tokens to decode")
    parser.add_argument("--cache", type=int, default=20, help="experts in the offload cache")
    parser.add_argument("--keep", default=None, help="write the checkpoint here and keep it")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per mode")
    parser.add_argument("--worker", nargs=4, metavar=("MODE", "PATH", "TOKENS", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, path, n_new, cache = args.worker
        return worker(mode, path, int(n_new), int(cache))

    import torch
    import transformers
    from timing import Timing, ratio

    from qwen3next.config import Qwen3NextConfig
    from qwen3next.inspection import describe, human_bytes
    from qwen3next.reference import reference_config

    cfg = Qwen3NextConfig.full().replace(num_hidden_layers=args.layers, num_experts=args.experts, vocab_size=8192,
                                         full_attention_interval=2, bos_token_id=None, eos_token_id=None)
    tmp = None
    path = args.keep
    if path is None:
        tmp = tempfile.TemporaryDirectory()
        path = tmp.name
    if not os.path.exists(os.path.join(path, "config.json")):
        t = time.perf_counter()
        torch.manual_seed(0)  # parameters created directly in bf16: half the memory of a float32 model
        ref = transformers.Qwen3NextForCausalLM._from_config(reference_config(cfg), dtype=torch.bfloat16)
        ref.save_pretrained(path, max_shard_size="200MB")
        del ref
        print(f"wrote {path} in {time.perf_counter() - t:.1f} s")
    s = describe(path)
    print(f"checkpoint: {args.layers} layers, {args.experts} experts of width 512 at hidden 2048; "
          f"{s.model_params:,} parameters ({s.expert_params:,} in routed experts), {human_bytes(s.file_bytes)}")

    runs = {mode: [] for mode in ("reference", "ours", "offload")}
    for _ in range(args.runs):  # the modes take turns, each run in a fresh process
        for mode, results in runs.items():
            res = subprocess.run([sys.executable, __file__, "--worker", mode, path, str(args.tokens), str(args.cache)],
                                 capture_output=True, text=True, timeout=1800)
            if res.returncode != 0:
                raise SystemExit(f"{mode} failed:\n{res.stderr[-3000:]}")
            results.append(json.loads(res.stdout.strip().splitlines()[-1]))
    load = {mode: Timing([r["load"][0] for r in rs], [r["load"][1] for r in rs]) for mode, rs in runs.items()}
    decode = {mode: Timing([r["decode"][0] for r in rs], [r["decode"][1] for r in rs]) for mode, rs in runs.items()}
    rows = {mode: {k: statistics.median(r[k] for r in rs) for k in ("resident", "peak")} | {"tokens": rs[0]["tokens"]}
            for mode, rs in runs.items()}
    ref = rows["reference"]
    print(f"\n{args.runs} run(s) per mode; load and decode: wall time, median [range]; ratios to the reference")
    for mode, r in rows.items():
        print(f"{mode:<10} load {_s(load[mode].wall)} ({ratio(load[mode], load['reference'], 'wall')}), "
              f"decode {args.tokens / decode[mode].median('wall'):.2f} tokens/s "
              f"(time {ratio(decode[mode], decode['reference'], 'wall')}); after load {human_bytes(r['resident'])} "
              f"({r['resident'] / ref['resident']:.2f}), peak {human_bytes(r['peak'])} ({r['peak'] / ref['peak']:.2f})")
    print(f"\nsame greedy tokens: ours == reference {rows['ours']['tokens'] == ref['tokens']}, "
          f"offload == ours {rows['offload']['tokens'] == rows['ours']['tokens']}")
    print(f"offload / in-memory: resident after load {rows['offload']['resident'] / rows['ours']['resident']:.2f}, "
          f"peak {rows['offload']['peak'] / rows['ours']['peak']:.2f} "
          f"(expected weights: {human_bytes(2 * (s.model_params - s.expert_params))} non-expert + "
          f"{args.cache} cached experts of {human_bytes(2 * 3 * 2048 * 512)} vs {human_bytes(2 * s.model_params)})")
    full = describe_full()
    print(f"the real model (bf16): load everything {human_bytes(full['load everything'])}, offload experts "
          f"{human_bytes(full['non-expert weights'])} + the cache")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
