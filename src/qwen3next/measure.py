"""Measuring what loading a checkpoint costs: resident memory, its peak, load time and decoding speed.

Memory once used by a process blurs what a later measurement in it sees, so each loading mode is measured
in a fresh process (:func:`measure_modes_in_subprocess`, Linux ``/proc`` for the memory). Chapter 09 and
``benchmarks/bench_weights.py`` use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

__all__ = ["memory_status", "reset_peak_memory", "measure_modes_in_subprocess", "measure_in_subprocess"]


def memory_status() -> dict[str, int] | None:
    """This process's resident size and its high-water mark, in bytes (Linux ``/proc``; else None)."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return None
    return {"rss": int(fields["VmRSS"].split()[0]) * 1024, "peak": int(fields["VmHWM"].split()[0]) * 1024}


def reset_peak_memory() -> bool:
    """Reset the high-water mark to the current resident size (``/proc/self/clear_refs``); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _warm_up() -> None:
    """Pay the lazy imports (building on the meta device pulls in sympy) before anything is measured."""
    from .config import Qwen3NextConfig
    from .model import Qwen3NextForCausalLM

    torch.manual_seed(0)
    with torch.no_grad():
        Qwen3NextForCausalLM(Qwen3NextConfig.tiny(num_hidden_layers=4))(torch.arange(4)[None])
        with torch.device("meta"):
            Qwen3NextForCausalLM(Qwen3NextConfig.tiny(num_hidden_layers=4))


def _measure(path: str, offload: bool, cache: int | None, new_tokens: int, prompt_len: int) -> dict:
    """Load, then decode greedily; memory counted from just before loading (run in a fresh process)."""
    import time

    from .generate import generate
    from .model import Qwen3NextForCausalLM

    reset_peak_memory()
    before = memory_status()
    t0 = time.perf_counter()
    model = Qwen3NextForCausalLM.from_pretrained(path, offload_experts=offload, expert_cache_size=cache)
    load_s = time.perf_counter() - t0
    loaded = memory_status()
    ids = torch.arange(prompt_len)[None] % model.config.vocab_size
    t1 = time.perf_counter()
    with torch.no_grad():
        out = generate(model, ids, new_tokens)
    gen_s = time.perf_counter() - t1
    end = memory_status()
    result = {"load_s": load_s, "tokens_per_s": new_tokens / gen_s, "tokens": out[0, prompt_len:].tolist(),
              "resident": None if before is None else loaded["rss"] - before["rss"],
              "peak": None if before is None else end["peak"] - before["rss"]}
    store = getattr(model, "expert_store", None)
    if store is not None:
        result.update(store.stats())
    return result


_MEASURE_MAIN = """
import json, os, sys, torch
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
from qwen3next.measure import _measure, _warm_up
_warm_up()
results = {}
for name, (offload, cache) in spec["runs"].items():
    args = (spec["path"], offload, cache, spec["new_tokens"], spec["prompt_len"])
    if not hasattr(os, "fork"):
        results[name] = _measure(*args)  # no fork: one process measures all (less exact)
        continue
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a child per mode: the same warm process, memory counted from the fork
        os.close(r)
        try:
            _warm_up()  # a forked child faults the library code pages in again: not weights, so before the count
            out = {"ok": _measure(*args)}
        except BaseException as err:
            out = {"error": repr(err)}
        with os.fdopen(w, "w") as f:
            f.write(json.dumps(out))
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = json.loads(f.read() or '{"error": "the measuring process died"}')
    os.waitpid(pid, 0)
    if "error" in out:
        raise RuntimeError(name + ": " + out["error"])
    results[name] = out["ok"]
print(json.dumps(results))
"""


def measure_modes_in_subprocess(path: str | Path, runs: dict[str, tuple[bool, int | None]], new_tokens: int = 8,
                                prompt_len: int = 16, threads: int = 1) -> dict[str, dict]:
    """Measure several loading modes of a checkpoint, each in a fresh process (Linux for the memory).

    ``runs`` maps a label to ``(offload_experts, expert_cache_size)``. One helper process does the
    imports once, then forks a child per mode, which loads the checkpoint and decodes ``new_tokens``
    greedily after a ``prompt_len``-token prompt. Each result has ``load_s``, ``resident`` (bytes added
    by loading), ``peak`` (high-water mark above the start, decoding included), ``tokens_per_s`` and the
    greedy ``tokens``; with offloading also the cache statistics. Fresh processes, because memory once
    used by a process blurs what a later measurement in it sees.
    """
    import subprocess
    import sys

    spec = {"path": str(path), "runs": {k: [bool(o), c] for k, (o, c) in runs.items()}, "new_tokens": new_tokens,
            "prompt_len": prompt_len, "threads": int(threads)}
    env = {**os.environ, "OMP_NUM_THREADS": str(int(threads))}
    res = subprocess.run([sys.executable, "-c", _MEASURE_MAIN, json.dumps(spec)], capture_output=True, text=True,
                         env=env)
    if res.returncode != 0:
        raise RuntimeError(f"measurement of {path} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure_in_subprocess(path: str | Path, offload_experts: bool = False, expert_cache_size: int | None = None,
                          new_tokens: int = 8, prompt_len: int = 16, threads: int = 1) -> dict:
    """One loading mode of :func:`measure_modes_in_subprocess`."""
    runs = {"run": (offload_experts, expert_cache_size)}
    return measure_modes_in_subprocess(path, runs, new_tokens, prompt_len, threads)["run"]
