"""Where the time goes: torch.profiler tables for ours and the reference at the medium config of
``bench_model.py`` (one thread), for one of its three workloads.

* ``prefill``: one forward pass over ``--prefill`` tokens;
* ``decode``: ``--steps`` one-token steps after a prompt of ``--decode-prompt`` tokens (the prompt not profiled);
* ``train``: forward and backward of the training loss on a batch of ``--train-batch`` x ``--train-len``.

Prints, per side, the ``--rows`` operators with the most self CPU time and how many operators ran.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_model.py decode [--rows 25]``.
"""

from __future__ import annotations

import argparse

import torch
from bench_model import MEDIUM
from timing import setup
from torch.profiler import ProfilerActivity, profile

from qwen3next.config import Qwen3NextConfig
from qwen3next.model import Qwen3NextForCausalLM
from qwen3next.reference import moe_state_dict_to_reference, reference_config


def workloads(ours, ref, cfg, args):
    """``{side: (prepare, run)}``: ``prepare()`` (not profiled) returns what ``run`` takes."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (1, args.prefill + args.decode_prompt + args.steps), generator=g)
    train_ids = torch.randint(0, cfg.vocab_size, (args.train_batch, args.train_len), generator=g)
    prompt, steps = ids[:, :args.decode_prompt], ids[:, args.decode_prompt:args.decode_prompt + args.steps]

    def decode_ours(cache):
        for t in range(steps.shape[1]):
            ours(steps[:, t:t + 1], cache=cache)

    def decode_ref(cache):
        for t in range(steps.shape[1]):
            ref(steps[:, t:t + 1], cache=cache, use_cache=True)

    def train(model, **kwargs):
        model.zero_grad(set_to_none=True)
        model(train_ids, labels=train_ids, output_router_logits=True, **kwargs).loss.backward()

    x = ids[:, :args.prefill]
    return {
        "prefill": {"ours": (lambda: None, lambda _: ours(x, logits_to_keep=1)),
                    "ref": (lambda: None, lambda _: ref(x, logits_to_keep=1))},
        "decode": {"ours": (lambda: _prefilled_ours(ours, prompt), decode_ours),
                   "ref": (lambda: ref(prompt, use_cache=True, logits_to_keep=1).cache, decode_ref)},
        "train": {"ours": (lambda: None, lambda _: train(ours)),
                  "ref": (lambda: None, lambda _: train(ref, use_cache=False))},
    }[args.workload]


def _prefilled_ours(model, prompt):
    cache = model.new_cache(1)
    model(prompt, cache=cache, logits_to_keep=1)
    return cache


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=("prefill", "decode", "train"))
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--decode-prompt", type=int, default=256)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-len", type=int, default=256)
    parser.add_argument("--sort", default="self_cpu_time_total")
    args = parser.parse_args()
    setup()
    import transformers

    cfg = Qwen3NextConfig.tiny(**MEDIUM)
    torch.manual_seed(0)
    ours = Qwen3NextForCausalLM(cfg)
    ref = transformers.Qwen3NextForCausalLM(reference_config(cfg))
    ref.load_state_dict(moe_state_dict_to_reference(ours.state_dict()))
    train = args.workload == "train"
    ours.train(train)
    ref.train(train)
    for side, (prepare, run) in workloads(ours, ref, cfg, args).items():
        with torch.set_grad_enabled(train):
            run(prepare())  # warm-up
            state = prepare()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                run(state)
        events = prof.key_averages()
        calls = sum(e.count for e in events)
        total = sum(e.self_cpu_time_total for e in events) / 1e3
        print(f"\n=== {side}: {args.workload}; {calls} operator calls, {total:.1f} ms self CPU in operators")
        print(events.table(sort_by=args.sort, row_limit=args.rows, max_name_column_width=48))


if __name__ == "__main__":
    main()
