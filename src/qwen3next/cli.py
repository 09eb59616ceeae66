"""The command line: ``python -m qwen3next inspect DIR`` and ``python -m qwen3next generate ...``.

``inspect`` reads only the safetensors headers, so it answers in seconds even for the 163 GB release:
tensors, parameters and bytes by component, dtypes, and the memory each loading mode needs.
``generate`` loads a checkpoint (optionally with the routed experts left on disk), streams the new
text as it is produced and reports prefill time and decoding speed in tokens per second.

Mirrors the ``transformers`` ``TextStreamer`` + ``generate`` workflow; leaves out batching and serving.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qwen3next", description="Qwen3-Next from scratch: "
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
    g.add_argument("--tokenizer", type=Path, default=None,
                   help="tokenizer directory (default: the model directory, else the bundled Qwen3 tokenizer)")
    from .chat_cli import add_parser as add_chat_parser

    add_chat_parser(sub)
    return parser


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

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens: expected a positive number, found {args.max_new_tokens}")
    tok = _tokenizer(args, err)
    text = args.prompt
    if args.chat:
        text = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True)
    ids = tok.encode(text)
    if not ids:
        raise ValueError("--prompt: the prompt encodes to no tokens")

    t0 = time.perf_counter()
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = Qwen3NextForCausalLM.from_pretrained(args.model, dtype=dtype, device=args.device,
                                                 offload_experts=args.offload_experts,
                                                 expert_cache_size=args.expert_cache)
    load_s = time.perf_counter() - t0
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
    with torch.no_grad():
        result = generate(model, input_ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, eos_token_id=sorted(stop) or None, seed=args.seed, streamer=printer)
    printer.finish()
    new = result.shape[1] - len(ids)
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
    from .checkpoint import CheckpointError

    out, err = out or sys.stdout, err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        if args.command == "inspect":
            return cmd_inspect(args, out)
        if args.command == "chat":
            from .chat_cli import cmd_chat

            return cmd_chat(args, out, err, load_tokenizer=_tokenizer)
        return cmd_generate(args, out, err)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=err)
        return 2
