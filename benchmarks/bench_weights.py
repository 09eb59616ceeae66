"""Benchmark of qwen3next.weights: load time, peak resident memory and decoding speed.

Writes a synthetic checkpoint with the reference (``save_pretrained``: real Hub layout) at the real
width (hidden 2048, experts of width 512) but few layers and experts, then loads it in fresh
processes three ways and prints one row each, with ratios:

* ``reference``: ``transformers.Qwen3NextForCausalLM.from_pretrained`` + its ``generate``
* ``ours``: ``Qwen3NextForCausalLM.from_pretrained`` (everything in memory) + ``qwen3next.generate``
* ``ours offload``: the routed experts left on disk, read on demand through the LRU cache

Peak memory is the process's own high-water mark (``VmHWM`` after resetting it through
``/proc/self/clear_refs``), measured from just before loading to the end of decoding, so imports do
not count. Linux only. Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_weights.py``
(options: ``--layers``, ``--experts``, ``--tokens``, ``--keep DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

WORKER = r"""
import json, sys, time, torch
torch.set_num_threads(1)
mode, path, n_new, cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
from qwen3next.config import Qwen3NextConfig
from qwen3next.model import Qwen3NextForCausalLM
from qwen3next.generate import generate
import transformers
with torch.no_grad():  # warm up lazy imports so that they do not count as weights
    Qwen3NextForCausalLM(Qwen3NextConfig.tiny())(torch.arange(4)[None])

def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key + ":")).split()[1]) * 1024

open("/proc/self/clear_refs", "w").write("5")
base = status("VmRSS")
t0 = time.perf_counter()
if mode == "reference":
    model = transformers.Qwen3NextForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
else:
    model = Qwen3NextForCausalLM.from_pretrained(path, offload_experts=mode == "offload", expert_cache_size=cache)
load_s = time.perf_counter() - t0
resident = status("VmRSS") - base
ids = torch.arange(16)[None] % model.config.vocab_size
with torch.no_grad():
    t1 = time.perf_counter()
    if mode == "reference":
        out = model.generate(ids, max_new_tokens=n_new, do_sample=False, min_new_tokens=n_new)
    else:
        out = generate(model, ids, n_new)
    gen_s = time.perf_counter() - t1
print(json.dumps({"load_s": load_s, "resident": resident, "peak": status("VmHWM") - base, "tok_s": n_new / gen_s,
                  "tokens": out[0, 16:].tolist()}))
"""


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
    args = parser.parse_args()

    import torch
    import transformers

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

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = {}
    for mode in ("reference", "ours", "offload"):
        res = subprocess.run([sys.executable, "-c", WORKER, mode, path, str(args.tokens), str(args.cache)],
                             capture_output=True, text=True, env=env, timeout=1800)
        if res.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{res.stderr[-3000:]}")
        rows[mode] = json.loads(res.stdout.strip().splitlines()[-1])

    ref = rows["reference"]
    print(f"\n{'mode':<11}{'load s':>8}{'after load':>14}{'peak':>14}{'tokens/s':>10}"
          f"   vs reference: load  after  peak  speed")
    for mode, r in rows.items():
        print(f"{mode:<11}{r['load_s']:>8.2f}{human_bytes(r['resident']):>14}{human_bytes(r['peak']):>14}"
              f"{r['tok_s']:>10.2f}   {'':>13}{r['load_s'] / ref['load_s']:>5.2f} "
              f"{r['resident'] / ref['resident']:>6.2f} {r['peak'] / ref['peak']:>5.2f} "
              f"{r['tok_s'] / ref['tok_s']:>6.2f}")
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
