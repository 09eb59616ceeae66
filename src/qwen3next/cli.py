"""The command line: ``python -m qwen3next inspect DIR`` and ``python -m qwen3next generate ...``.

``inspect`` reads only the safetensors headers, so it answers in seconds even for the 163 GB release:
tensors, parameters and bytes by component, dtypes, and the memory each loading mode needs.
``generate`` loads a checkpoint (optionally with the routed experts left on disk), streams the new
text as it is produced and reports prefill time and decoding speed in tokens per second. With
``--speculative K`` it also loads the checkpoint's MTP head, drafts K tokens per trunk forward
(:mod:`qwen3next.speculative`), prints the text at the end and reports how many drafts were accepted.

Mirrors the ``transformers`` ``TextStreamer`` + ``generate`` workflow; leaves out batching and serving.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path


class UsageError(ValueError):
    """A command-line argument that cannot work; printed as one ``error:`` line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints the usage block and exits; we want one line
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m qwen3next", description="Qwen3-Next from scratch: "
                     "look inside a checkpoint, or generate text with it.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="what a checkpoint holds and what it would cost to load")
    p.add_argument("directory", type=Path, help="checkpoint directory (config.json + safetensors)")

    g = sub.add_parser("generate", help="stream a continuation of a prompt")
    g.add_argument("--model", type=Path, required=True, help="checkpoint directory")
    g.add_argument("--prompt", required=True, help="the prompt text")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template (Instruct models)")
    g.add_argument("--max-new-tokens", type=int, default=128, help="at most this many new tokens (default 128)")
    g.add_argument("--offload-experts", action="store_true", help="keep the routed experts on disk, read on demand")
    g.add_argument("--expert-cache", type=int, default=None, help="experts kept in memory when offloading "
                   "(default: num_experts_per_tok x MoE layers)")
    g.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="compute dtype (default: the checkpoint's)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ... (default cpu)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--speculative", type=int, default=0, metavar="K",
                   help="draft K tokens per step with the checkpoint's MTP head (mtp.*) and report acceptance")
    g.add_argument("--compile", action="store_true", help="run the one-token decoding steps through torch.compile "
                   "(the first steps then take seconds; needs a C++ compiler on a CPU)")
    g.add_argument("--cpu-kernels", default="onednn", choices=["onednn", "native"],
                   help="who runs the products of each decoding step on a CPU: oneDNN (default) or PyTorch's own "
                   "kernels, often faster for a bfloat16 model (not with --speculative)")
    g.add_argument("--tokenizer", type=Path, default=None,
                   help="tokenizer directory (default: the model directory, else the bundled Qwen3 tokenizer)")
    from .chat_cli import add_parser as add_chat_parser

    add_chat_parser(sub)
    return parser


def check_args(args) -> None:
    """Every argument checked before anything is loaded: paths that exist, numbers in range, a real device."""
    if args.command == "inspect":
        if not args.directory.is_dir():
            raise UsageError(f"{args.directory}: no such checkpoint directory")
        return
    if args.command == "generate":  # chat's --model may also be a Hub id: chat_cli resolves it
        if not args.model.is_dir():
            raise UsageError(f"--model {args.model}: no such checkpoint directory")
        if args.tokenizer is not None and not args.tokenizer.is_dir():
            raise UsageError(f"--tokenizer {args.tokenizer}: no such tokenizer directory")
        if args.cpu_kernels != "onednn" and args.speculative:
            raise UsageError("--cpu-kernels: applies to one-token decoding steps; --speculative verifies "
                             "several tokens a step (leave --cpu-kernels at onednn)")
    if getattr(args, "tools", None) is not None and not args.tools.is_file():
        raise UsageError(f"--tools {args.tools}: no such file")
    expert_cache, max_len = getattr(args, "expert_cache", None), getattr(args, "max_len", None)
    checks = [
        ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 1, "a positive integer"),
        ("--temperature", args.temperature, math.isfinite(args.temperature) and args.temperature >= 0,
         "a finite number >= 0 (0 is greedy)"),
        ("--top-k", args.top_k, args.top_k >= 0, "an integer >= 0 (0 keeps every token)"),
        ("--top-p", args.top_p, 0 < args.top_p <= 1, "a number in (0, 1]"),
        ("--seed", args.seed, args.seed is None or 0 <= args.seed < 2**64, "an integer in 0 .. 2**64 - 1"),
        ("--expert-cache", expert_cache, expert_cache is None or expert_cache >= 1, "a positive number of experts"),
        ("--max-len", max_len, max_len is None or max_len >= 1, "a positive number of tokens"),
    ]
    for flag, value, ok, expected in checks:
        if not ok:
            raise UsageError(f"{flag}: expected {expected}, found {value}")
    from .weights import checked_device

    try:
        checked_device(args.device)
    except ValueError as err:
        raise UsageError(f"--device: {str(err).removeprefix('device: ')}") from None


def cmd_inspect(args, out) -> int:
    from .inspection import describe, format_summary

    print(format_summary(describe(args.directory)), file=out)
    return 0


def _tokenizer(args, err):
    from .tokenizer import Tokenizer

    directory = args.tokenizer or args.model
    if any((directory / n).is_file() for n in ("tokenizer.json", "vocab.json")):
        return Tokenizer.from_pretrained(directory)
    if args.tokenizer is not None:
        raise FileNotFoundError(f"--tokenizer {directory}: no tokenizer.json or vocab.json there")
    print(f"[no tokenizer files in {directory}: using the bundled Qwen3 tokenizer]", file=err)
    return Tokenizer.qwen3()


class _Printer:
    """Prints the decoded text as tokens arrive, holding back an incomplete UTF-8 character."""

    def __init__(self, tok, stop_ids: set[int], out):
        self.tok, self.stop_ids, self.out = tok, stop_ids, out
        self.ids: list[int] = []
        self.shown = 0  # characters already printed
        self.times: list[float] = []

    def __call__(self, token) -> None:
        self.times.append(time.perf_counter())
        t = int(token[0])
        if t in self.stop_ids:
            return
        self.ids.append(t)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a multi-byte character split over tokens: wait for the rest
            return
        self.out.write(text[self.shown:])
        self.out.flush()
        self.shown = len(text)

    def finish(self) -> None:
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        self.out.write(text[self.shown:] + "\n")
        self.out.flush()


def cmd_generate(args, out, err) -> int:
    import torch

    from .generate import generate
    from .model import Qwen3NextForCausalLM

    tok = _tokenizer(args, err)
    text = args.prompt
    if args.chat:
        text = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True)
    ids = tok.encode(text)
    if not ids:
        raise ValueError("--prompt: the prompt encodes to no tokens")

    t0 = time.perf_counter()
    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.speculative < 0:
        raise ValueError(f"--speculative: expected a number of draft tokens >= 1 (0: off), found {args.speculative}")
    model = Qwen3NextForCausalLM.from_pretrained(args.model, dtype=dtype, device=args.device,
                                                 offload_experts=args.offload_experts,
                                                 expert_cache_size=args.expert_cache, mtp=args.speculative > 0)
    load_s = time.perf_counter() - t0
    if args.compile:
        model.compile_decoding()
    vocab = model.config.vocab_size
    if max(ids) >= vocab:
        raise ValueError(f"--prompt: token id {max(ids)} is outside the model's vocabulary "
                         f"(vocab_size={vocab} in {args.model / 'config.json'}); is this the right tokenizer?")
    stop = {i for i in (tok.eos_token_id, tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>"))
            if i is not None}
    eos = model.config.eos_token_id
    stop |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    print(f"[loaded {args.model} in {load_s:.1f} s; {len(ids)} prompt tokens]", file=err)

    printer = _Printer(tok, stop, out)
    input_ids = torch.tensor([ids], device=args.device)
    start = time.perf_counter()
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   eos_token_id=sorted(stop) or None, seed=args.seed)
    with torch.no_grad():
        if args.speculative:
            from .speculative import speculative_generate

            result, stats = speculative_generate(model, input_ids, args.max_new_tokens,
                                                 num_draft_tokens=args.speculative, **options)
            for token in result[:, len(ids):].unbind(1):  # printed once all is generated
                printer(token)
        else:
            result = generate(model, input_ids, args.max_new_tokens, streamer=printer,
                              cpu_kernels=args.cpu_kernels, **options)
    printer.finish()
    new = result.shape[1] - len(ids)
    if args.speculative:
        per = ", ".join(f"{a:.2f}" for a in stats.accepted_per_position)
        print(f"[{new} new tokens in {time.perf_counter() - start:.2f} s; {stats.verify_steps} trunk forwards "
              f"after the prefill, {stats.tokens_per_verify_step:.2f} tokens each; drafts accepted "
              f"{stats.acceptance_rate:.2f} (by position: {per})]", file=err)
    else:
        first = printer.times[0] - start if printer.times else float("nan")
        decode = (new - 1) / (printer.times[-1] - printer.times[0]) if new > 1 else float("nan")
        print(f"[{new} new tokens; prefill {first:.2f} s; decoding {decode:.2f} tokens/s; "
              f"overall {new / (printer.times[-1] - start):.2f} tokens/s]", file=err)
    store = getattr(model, "expert_store", None)
    if store is not None:
        s = store.stats()
        print(f"[experts: {s['misses']} read from disk, {s['hits']} cache hits, "
              f"{s['bytes_read'] / 2**20:.1f} MiB read]", file=err)
    return 0


def main(argv: list[str] | None = None, out=None, err=None) -> int:
    """Run one command; any failure prints one ``error:`` line (details indented below it) and returns
    non-zero, never a traceback (set ``QWEN3NEXT_TRACEBACK=1`` to see one)."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        args = build_parser().parse_args(argv)
        check_args(args)
        if args.command == "inspect":
            return cmd_inspect(args, out)
        if args.command == "chat":
            from .chat_cli import cmd_chat

            return cmd_chat(args, out, err, load_tokenizer=_tokenizer)
        return cmd_generate(args, out, err)
    except KeyboardInterrupt:
        print("error: interrupted", file=err)
        return 130
    except Exception as e:  # noqa: BLE001 - the command line's one job here is a readable message
        if os.environ.get("QWEN3NEXT_TRACEBACK"):
            raise
        known = isinstance(e, (ValueError, TypeError, OSError))
        first, *details = (str(e) or type(e).__name__).splitlines()
        print(f"error: {first}" if known else f"error: {type(e).__name__}: {first}", file=err)
        for line in details:
            print(f"  {line.strip()}", file=err)
        return 2
