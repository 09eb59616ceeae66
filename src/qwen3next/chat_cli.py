"""``python -m qwen3next chat --model DIR_OR_HUB_ID``: a conversation in the terminal (chapter 12).

One line of input is one user message; the reply streams as it is generated, its reasoning folded
into one line (or in full with ``--show-thinking``), its tool calls reported, and a line of figures
per turn says how much of the conversation came from the cache. ``/regenerate`` answers the last
message again from the states saved before the reply, ``/reset`` starts over.

``--model`` takes a checkpoint directory, a Hub id (``owner/name``) or a short name of
:data:`qwen3next.hub.REPOS` (``instruct``, ``thinking``, ``instruct-fp8``, ``thinking-fp8``); a Hub
model not on disk yet is downloaded by :func:`qwen3next.hub.download` with progress bars, and
without a network the command says so in one line. The conversation logic is
:class:`qwen3next.chat.ChatSession`; this module only reads, prints and loads (lazily, so that
``--help`` stays fast).
"""

from __future__ import annotations

import json
from pathlib import Path

HELP = "/regenerate answers the last message again, /reset starts over, /quit (or Ctrl-D) ends"


def add_parser(sub) -> None:
    """The ``chat`` subcommand's options (registered by :mod:`qwen3next.cli`)."""
    from .hub import REPOS

    c = sub.add_parser("chat", help="a conversation that keeps its cache between turns")
    c.add_argument("--model", required=True,
                   help=f"checkpoint directory, Hub id (owner/name) or one of: {', '.join(REPOS)}")
    c.add_argument("--system", default=None, help="system prompt")
    c.add_argument("--tools", type=Path, default=None, help="JSON file: a list of tool schemas for the template")
    c.add_argument("--show-thinking", action="store_true", help="print the reasoning block in full "
                   "(default: one folded line)")
    c.add_argument("--no-reuse", action="store_true", help="prefill the whole conversation every turn")
    c.add_argument("--max-new-tokens", type=int, default=512)
    c.add_argument("--max-len", type=int, default=8192, help="longest conversation in tokens (default 8192)")
    c.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    c.add_argument("--top-k", type=int, default=0)
    c.add_argument("--top-p", type=float, default=1.0)
    c.add_argument("--seed", type=int, default=None)
    c.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"])
    c.add_argument("--device", default="cpu")
    c.add_argument("--offload-experts", action="store_true", help="keep the routed experts on disk")
    c.add_argument("--cpu-kernels", default="onednn", choices=["onednn", "native"],
                   help="who runs the products of each decoding step on a CPU: oneDNN (default) or PyTorch's own "
                   "kernels, often faster for a bfloat16 model")


def resolve_model(name: str, err) -> Path:
    """A checkpoint directory for ``--model``: the directory itself, or a Hub download (with progress)."""
    from .hub import REPOS, download

    path = Path(name).expanduser()
    if path.is_dir():
        return path
    repo = REPOS.get(name, name)
    if repo.count("/") != 1 or path.exists():
        raise FileNotFoundError(f"--model {name}: not a checkpoint directory, nor a Hub id (owner/name), "
                                f"nor one of {', '.join(REPOS)}")
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        print(f"[{repo}: fetching from the Hugging Face Hub (resumes, skips files already cached)]", file=err)
    try:
        return download(repo)
    except Exception as e:  # offline, no network, no such repository: one line that says which
        raise FileNotFoundError(f"--model {name}: {_download_problem(repo, e)}") from None


def _download_problem(repo: str, e: Exception) -> str:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return (f"{repo} is not in the local Hugging Face cache and downloads are off (HF_HUB_OFFLINE=1); "
                f"unset it on a machine with a network, or pass a checkpoint directory")
    text = str(e)
    if "ConnectError" in text or "internet connection" in text or "ConnectionError" in type(e).__name__:
        return f"cannot reach the Hugging Face Hub to download {repo} (no network?); pass a checkpoint directory"
    return f"downloading {repo} failed: {type(e).__name__}: {text.splitlines()[0] if text else ''}"


def cmd_chat(args, out, err, load_tokenizer, lines=None) -> int:
    """The read-answer loop: one line of input is one user message; replies stream as they come.

    ``load_tokenizer(args, err)`` is the command line's own choice of tokenizer (the model
    directory's files, else the bundled Qwen3 one); ``lines`` replace standard input."""
    import sys

    import torch

    from .chat import ChatSession
    from .model import Qwen3NextForCausalLM

    args.model = resolve_model(str(args.model), err)
    args.tokenizer = None
    tok = load_tokenizer(args, err)
    tools = json.loads(args.tools.read_text()) if args.tools else None
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = Qwen3NextForCausalLM.from_pretrained(args.model, dtype=dtype, device=args.device,
                                                 offload_experts=args.offload_experts)
    session = ChatSession(model, tok, system=args.system, tools=tools, max_len=args.max_len,
                          reuse=not args.no_reuse, cpu_kernels=args.cpu_kernels)
    sampling = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, seed=args.seed)
    print(f"[{args.model}: {'thinking' if session.thinking else 'instruct'} template; {HELP}]", file=err)
    for line in lines if lines is not None else sys.stdin:
        text = line.rstrip("\n")
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            session.reset()
            print("[conversation cleared]", file=err)
            continue
        if not text.strip():
            continue
        printer = _Printer(out, args.show_thinking)
        reply = (session.regenerate(on_text=printer, **sampling) if text == "/regenerate"
                 else session.send(text, on_text=printer, **sampling))
        printer.close()
        for call in reply.tool_calls:
            print(f"[tool call: {call}]", file=err)
        print(f"[turn {len(session.messages) // 2}: {reply.reused_tokens} tokens reused, {reply.prefilled_tokens} "
              f"prefilled; first token after {reply.time_to_first_token:.2f} s; {len(reply.tokens)} new tokens in "
              f"{reply.seconds:.2f} s]", file=err)
    return 0


class _Printer:
    """Streams the content; the reasoning in full (``--show-thinking``) or folded into one line."""

    def __init__(self, out, show_thinking: bool):
        self.out, self.show = out, show_thinking
        self.thought = 0  # characters of reasoning seen
        self.closed = False  # the reasoning block has been closed on screen

    def __call__(self, kind: str, text: str) -> None:
        if kind == "reasoning":
            if self.show:
                self._write(("" if self.thought else "<think>\n") + text)
            self.thought += len(text)
            return
        self._close_reasoning()
        self._write(text)

    def _close_reasoning(self) -> None:
        if self.thought and not self.closed:
            self.closed = True
            self._write("\n</think>\n\n" if self.show else
                        f"[thought for {self.thought} characters; --show-thinking shows it]\n")

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def close(self) -> None:
        self._close_reasoning()
        self._write("\n")
