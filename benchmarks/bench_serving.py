"""Benchmark: what continuous batching and prefix reuse buy, on one CPU thread.

The medium config of ``bench_model.py`` (hidden 256, 8 layers in the 3:1 DeltaNet/attention pattern,
32 experts, 4 active, plus the shared expert; the real vocabulary for the chat part). Three
measurements, each side run in turn with the other (``--repeats`` rounds) and reported as median
[min - max]:

1. **throughput**: ``N`` requests (prompts of 48-112 tokens, 32 new tokens each) served together by
   the engine, against the same requests one at a time (the engine holding one request; and the
   plain model with its ``HybridCache``, the reference point). New tokens per second, and the ratio.
2. **time to first token with prefix reuse**: a request whose first 512 tokens (a long system
   prompt) another request has left in the prefix cache (snapshots at every block boundary), against
   the same request on a cold engine.
3. **time to first token of chat turn N**: a conversation of short turns, the session keeping its
   cache (reuse) against prefilling the whole conversation every turn.

Greedy outputs are checked equal between the sides before anything is timed. Wall time and CPU time
are both taken (one thread: they agree on an idle machine); the figures are CPU time.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_serving.py [--repeats 3] [--requests 8]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from bench_model import MEDIUM  # noqa: E402  (the medium config the model benchmark times)

from qwen3next.chat import ChatSession  # noqa: E402
from qwen3next.config import Qwen3NextConfig  # noqa: E402
from qwen3next.engine import Engine, Request, run_alone  # noqa: E402
from qwen3next.model import Qwen3NextForCausalLM  # noqa: E402


def rounds(fns: dict, repeats: int) -> dict[str, list[float]]:
    """CPU seconds of each function per round, the functions taking turns (one warm-up each)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.process_time()
            inner = fn()
            times[name].append(inner if isinstance(inner, float) else time.process_time() - t0)
    return times


def spread(values: list[float], scale: float = 1.0, fmt: str = "{:.3f}") -> str:
    v = [x * scale for x in values]
    return f"{fmt.format(statistics.median(v))} [{fmt.format(min(v))} - {fmt.format(max(v))}]"


def requests(n: int, vocab: int, new: int, seed: int = 0) -> list[Request]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(48, 113, (n,), generator=g).tolist()
    return [Request(torch.randint(0, vocab, (L,), generator=g).tolist(), new, request_id=i)
            for i, L in enumerate(lengths)]


def throughput(model, n: int, new: int, repeats: int) -> None:
    work = requests(n, model.config.vocab_size, new)

    def engine(max_running):
        def run():
            batch = [Request(r.prompt, r.max_new_tokens, request_id=r.request_id) for r in work]
            Engine(model, max_running=max_running, max_tokens_per_step=256, block_size=16, max_model_len=160).run(batch)
            return batch
        return run

    def alone():
        return [run_alone(model, r.prompt, r.max_new_tokens)[0] for r in work]

    together = engine(n)()
    assert [r.output for r in together] == alone(), "the engine must give every request its alone output"
    times = rounds({f"engine, {n} at once": engine(n), "engine, one at a time": engine(1), "model alone": alone},
                   repeats)
    total = n * new
    print(f"\n1. throughput: {n} requests, prompts of {min(len(r.prompt) for r in work)}-"
          f"{max(len(r.prompt) for r in work)} tokens, {new} new tokens each (new tokens per second)")
    for name, t in times.items():
        print(f"   {name:24s} {spread([total / x for x in t], fmt='{:.1f}')}")
    ratio = [b / a for a, b in zip(times[f"engine, {n} at once"], times["engine, one at a time"], strict=True)]
    ratio_alone = [b / a for a, b in zip(times[f"engine, {n} at once"], times["model alone"], strict=True)]
    print(f"   speed-up of {n} at once: {spread(ratio, fmt='{:.2f}')}x over the engine one at a time, "
          f"{spread(ratio_alone, fmt='{:.2f}')}x over the model alone")


def prefix_ttft(model, repeats: int, system_len: int = 512, question: int = 16) -> None:
    g = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    system = torch.randint(0, vocab, (system_len,), generator=g).tolist()
    first = system + torch.randint(0, vocab, (question,), generator=g).tolist()
    second = system + torch.randint(0, vocab, (question,), generator=g).tolist()

    def second_request(prefix_caching):
        def run():
            engine = Engine(model, max_running=2, max_tokens_per_step=1024, block_size=16, max_model_len=600,
                            prefix_caching=prefix_caching)
            engine.run([Request(first, 1)])
            req = engine.add(Request(second, 1))
            t0 = time.process_time()
            while req.first_token_step is None:
                engine.step()
            return time.process_time() - t0, req
        return run

    hit, cold, align = second_request("all")(), second_request(None)(), second_request("align")()
    assert hit[1].output == cold[1].output == align[1].output and hit[1].cached_tokens == system_len
    times = rounds({"reuse": lambda: second_request("all")()[0], "cold": lambda: second_request(None)()[0]},
                   repeats)
    print(f"\n2. time to first token, {system_len}-token shared prefix + {question}-token question (ms)")
    for name, t in times.items():
        print(f"   {name:6s} {spread(t, 1000, '{:.1f}')}")
    ratio = [c / r for r, c in zip(times["reuse"], times["cold"], strict=True)]
    print(f"   speed-up {spread(ratio, fmt='{:.1f}')}x ({hit[1].cached_tokens} of {len(second)} tokens from the cache "
          f"with a snapshot at every block boundary; {align[1].cached_tokens} in \"align\" mode, which keeps the "
          f"state only where the first request's step ended, at token {len(first)})")


def chat_ttft(model, tok, repeats: int, turns: int = 6) -> None:
    questions = [f"Question number {i}: tell me one more thing about hybrid models, please." for i in range(turns)]

    def conversation(reuse):
        def run():
            session = ChatSession(model, tok, system="You are a helpful assistant. " * 20, reuse=reuse)
            return [session.send(q, max_new_tokens=24) for q in questions]
        return run

    a, b = conversation(True)(), conversation(False)()
    assert [r.tokens for r in a] == [r.tokens for r in b]
    per_turn = {True: [[] for _ in questions], False: [[] for _ in questions]}

    def record(reuse):
        def run():
            for i, reply in enumerate(conversation(reuse)()):
                per_turn[reuse][i].append(reply.cpu_time_to_first_token)
        return run

    rounds({"reuse": record(True), "cold": record(False)}, repeats)
    print(f"\n3. chat: time to first token of turn N (ms), {turns} turns of ~20 tokens, 24-token replies")
    print("   turn  prompt tokens  reused  with reuse            without               speed-up")
    for i, reply in enumerate(a):
        w, wo = per_turn[True][i][1:], per_turn[False][i][1:]  # the warm-up round is left out
        print(f"   {i + 1:4d}  {reply.prompt_tokens:13d}  {reply.reused_tokens:6d}  {spread(w, 1000, '{:.1f}'):20s}  "
              f"{spread(wo, 1000, '{:.1f}'):20s}  {statistics.median(wo) / statistics.median(w):.1f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Qwen3NextForCausalLM(Qwen3NextConfig.tiny(**MEDIUM)).eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; medium config, "
          f"{n_params / 1e6:.1f}M parameters; CPU time, median [min - max] of {args.repeats} rounds")
    with torch.no_grad():
        throughput(model, args.requests, args.new_tokens, args.repeats)
        prefix_ttft(model, args.repeats)
        from qwen3next.tokenizer import Tokenizer

        torch.manual_seed(0)
        chat_model = Qwen3NextForCausalLM(Qwen3NextConfig.tiny(**{**MEDIUM, "vocab_size": 151936})).eval()
        chat_ttft(chat_model, Tokenizer.qwen3(), args.repeats)


if __name__ == "__main__":
    main()
