"""Multi-turn chat that keeps the cache between turns, exactly.

Every turn, the chat template renders the *whole* conversation again, and a server that started from
nothing each time would re-read all of it. A session keeps its KV blocks and DeltaNet states instead
and prefills only what is new. Two things make that subtle for Qwen3-Next:

* **The new rendering is not the old tokens plus more.** The tokens in the cache are the last prompt
  followed by the reply *as sampled*; the template re-renders that reply from its text, and Qwen3's
  templates drop the reasoning (``<think> ... </think>``) of earlier turns. The reusable part is the
  longest common prefix of the cached token ids and the new ones, and nothing after it.
* **A hybrid cannot be cut at an arbitrary position.** Attention keys and values can be truncated
  anywhere, but a DeltaNet state has absorbed every token. So the session keeps *snapshots* of its
  states at the positions where a new rendering may diverge: the start of every message (each
  ``<|im_start|>``) and the end of every prompt. A turn resumes from the latest snapshot at or before
  the common prefix and prefills from there.

The result is the same as a cold prefill of the whole conversation (``tests/test_chat.py``).
``regenerate`` restores the snapshot taken at the end of the last prompt and answers again.

Replies are split into the reasoning (shown folded, or in full with ``--show-thinking``), the
content, and the tool calls the template defines (``<tool_call>{"name": ..., "arguments": ...}
</tool_call>``), which are parsed and reported.

The command line ``python -m qwen3next chat --model DIR_OR_HUB_ID`` lives in :mod:`qwen3next.chat_cli`.

Mirrors what vLLM's prefix cache does for a chat client (automatic reuse of the common prefix), with
the exact positions a hybrid needs; leaves out running tools, images and several sessions at once.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

import torch

from .generate import next_token
from .linear import check_cpu_kernels, use_cpu_kernels
from .packed_step import PackedRunner, Segment, Sequence
from .paged_kv import BlockPool, BlockTable
from .prefix_cache import cdiv
from .state_pool import StatePool, copy_slot

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


# ------------------------------------------------------------------------------------ replies
@dataclass
class ToolCall:
    name: str | None
    arguments: dict | None
    raw: str
    error: str | None = None  # why the JSON could not be read, if it could not

    def __str__(self) -> str:
        if self.error:
            return f"malformed tool call ({self.error}): {self.raw!r}"
        return f"{self.name}({json.dumps(self.arguments, ensure_ascii=False)})"


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """The text before the first ``<tool_call>`` and every call's JSON, parsed."""
    calls = []
    for match in TOOL_CALL.finditer(text):
        raw = match.group(1)
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
                raise ValueError('expected {"name": ..., "arguments": {...}}')
            args = obj.get("arguments", {})
            if isinstance(args, str):
                args = json.loads(args)
            calls.append(ToolCall(obj["name"], args, raw))
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            calls.append(ToolCall(None, None, raw, error=str(e).splitlines()[0]))
    first = TOOL_CALL.search(text)
    return (text[:first.start()] if first else text).strip(), calls


def split_reasoning(text: str, opened: bool) -> tuple[str | None, str, bool]:
    """``(reasoning, content, still_thinking)`` of a reply; ``opened``: the prompt ended inside a
    ``<think>`` block (the Thinking template opens it for the model)."""
    body = text
    if not opened:
        stripped = text.lstrip()
        if not stripped.startswith(THINK_OPEN):
            return None, text, False
        body = stripped[len(THINK_OPEN):]
    if THINK_CLOSE not in body:
        return body.strip("\n"), "", True
    reasoning, content = body.split(THINK_CLOSE, 1)
    return reasoning.strip("\n"), content.lstrip("\n"), False


@dataclass
class Reply:
    """One assistant turn, with what it cost."""

    text: str  # everything generated, decoded
    content: str
    reasoning: str | None
    tool_calls: list[ToolCall]
    tokens: list[int]
    prompt_tokens: int  # the whole rendered conversation
    reused_tokens: int  # taken from the cache
    time_to_first_token: float  # seconds (wall clock), from the call to the first new token
    seconds: float
    cpu_time_to_first_token: float = 0.0  # the same in CPU time (this process)
    logits: list[torch.Tensor] = field(default_factory=list, repr=False)  # if the session records them

    @property
    def prefilled_tokens(self) -> int:
        return self.prompt_tokens - self.reused_tokens


# ------------------------------------------------------------------------------------ session
class ChatSession:
    """A conversation with ``model``: its messages, and its cache kept between turns."""

    def __init__(self, model, tokenizer, system: str | None = None, tools: list[dict] | None = None,
                 max_len: int = 8192, block_size: int = 64, max_snapshots: int = 8, reuse: bool = True,
                 record_logits: bool = False, template_kwargs: dict | None = None, cpu_kernels: str = "onednn"):
        check_cpu_kernels(cpu_kernels)
        self.cpu_kernels = cpu_kernels  # who runs each decoding step's products on a CPU (linear.use_cpu_kernels)
        cfg, p = model.config, model.lm_head.weight
        self.model, self.tok, self.tools, self.reuse = model, tokenizer, tools, reuse
        self.record_logits, self.max_len = record_logits, max_len
        self.template_kwargs = dict(template_kwargs or {})
        self.kv = BlockPool.for_config(cfg, cdiv(max_len, block_size), block_size, dtype=p.dtype, device=p.device)
        self.states = StatePool.for_config(cfg, 1, dtype=p.dtype, device=p.device)
        self.snaps = StatePool.for_config(cfg, max_snapshots, dtype=p.dtype, device=p.device)
        self.runner = PackedRunner(model, self.kv, self.states)
        self.seq = Sequence([], BlockTable(self.kv), self.states.allocate())
        self.snapshots: dict[int, int] = {}  # position -> snapshot slot (states after that many tokens)
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.start_id = tokenizer.token_to_id("<|im_start|>")
        self.stop_ids = {i for i in (tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>"),
                                     tokenizer.eos_token_id) if i is not None}
        self._end_logits: tuple[int, torch.Tensor] | None = None  # (last prompt's length, its last logits)
        probe = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                              **self.template_kwargs)
        # the Thinking variant's generation prompt opens a <think> block for the model
        self.thinking = probe.rstrip("\n").endswith(THINK_OPEN)

    # -------------------------------------------------------------------------------- turns
    def render(self) -> list[int]:
        text = self.tok.apply_chat_template(self.messages, add_generation_prompt=True, tools=self.tools,
                                            **self.template_kwargs)
        return self.tok.encode(text)

    def send(self, text: str, role: str = "user", **sampling) -> Reply:
        """Add a message (``role`` "user", or "tool" for a tool's result) and generate the answer."""
        self.messages.append({"role": role, "content": text})
        return self._respond(**sampling)

    def regenerate(self, **sampling) -> Reply:
        """Answer the last prompt again: back to the states saved at its end, then generate anew."""
        if not self.messages or self.messages[-1]["role"] != "assistant":
            raise ValueError("regenerate: there is no reply to regenerate yet")
        self.messages.pop()
        return self._respond(**sampling)

    def reset(self) -> None:
        """Forget the conversation (keep the system prompt) and the cache."""
        self.messages = [m for m in self.messages[:1] if m["role"] == "system"]
        self._rewind(0)
        self._end_logits = None

    def _respond(self, max_new_tokens: int = 512, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int | None = None, on_text=None) -> Reply:
        t0, c0 = time.perf_counter(), time.process_time()
        ids = self.render()
        if len(ids) + max_new_tokens > self.max_len:
            raise ValueError(f"the conversation ({len(ids)} tokens) plus {max_new_tokens} new tokens exceeds "
                             f"max_len={self.max_len}; /reset to start over")
        cached = self.seq.tokens[:self.seq.num_computed]
        common = _common_prefix(cached, ids) if self.reuse else 0
        # the next token needs the last prompt token's logits: they are kept only for the last prompt's
        # end (regenerate); anywhere else at least one prompt token is computed again
        resumable = self._end_logits is not None and self._end_logits[0] == len(ids) and len(ids) in self.snapshots
        reused = self._rewind(min(common, len(ids) if resumable else len(ids) - 1))
        self.seq.tokens = self.seq.tokens[:reused] + ids[reused:]
        self.seq.table.reserve(len(ids) + max_new_tokens)
        logits = self._end_logits[1] if reused == len(ids) else self._prefill(ids, reused)
        self._end_logits = (len(ids), logits)
        generator = torch.Generator().manual_seed(seed or 0) if temperature > 0 else None
        opened = self.thinking
        new, recorded, first, cpu_first = [], [], None, None
        stream = _Stream(self.tok, opened, on_text)
        while True:
            token = int(next_token(logits[None].float(), temperature, top_k, top_p, generator=generator)[0])
            first, cpu_first = first or time.perf_counter(), cpu_first or time.process_time()
            if self.record_logits:
                recorded.append(logits.float())
            new.append(token)
            self.seq.tokens.append(token)
            if token in self.stop_ids or len(new) >= max_new_tokens:
                break
            stream.push(new)
            n = self.seq.num_computed
            with use_cpu_kernels(self.cpu_kernels):
                logits = self.runner.step([Segment(self.seq, n, n + 1, logits=True)])[0]
        text = self.tok.decode([t for t in new if t not in self.stop_ids], skip_special_tokens=True)
        stream.finish(text)
        reasoning, rest, _ = split_reasoning(text, opened)
        content, calls = parse_tool_calls(rest)
        message = {"role": "assistant", "content": content}
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        if calls:
            message["tool_calls"] = [{"name": c.name, "arguments": c.arguments} for c in calls if not c.error]
        self.messages.append(message)
        return Reply(text, content, reasoning, calls, new, len(ids), reused, first - t0,
                     time.perf_counter() - t0, cpu_first - c0, recorded)

    # ------------------------------------------------------------------------ cache positions
    def _rewind(self, position: int) -> int:
        """Go back to the latest saved state at or before ``position``; returns where the cache now ends."""
        if position >= self.seq.num_computed:
            return self.seq.num_computed
        back = max((p for p in self.snapshots if p <= position), default=0)
        if back:
            copy_slot(self.snaps, self.snapshots[back], self.states, self.seq.slot)
        else:  # nothing saved before it: start from empty states
            self.states.free(self.seq.slot)
            self.seq.slot = self.states.allocate()
        for p in [p for p in self.snapshots if p > back]:
            self.snaps.free(self.snapshots.pop(p))
        self.seq.table.truncate(back)
        self.seq.num_computed = back
        self.seq.tokens = self.seq.tokens[:back]
        return back

    def _prefill(self, ids: list[int], start: int) -> torch.Tensor:
        """Read ``ids[start:]`` in pieces that end where a snapshot is kept; the last logits."""
        cuts = sorted({p for p, t in enumerate(ids) if t == self.start_id and p > start} | {len(ids)})
        segments, a = [], start
        for b in cuts:
            seg = Segment(self.seq, a, b, logits=b == len(ids))
            seg.snapshot = self._snapshot_slot(b)
            segments.append(seg)
            a = b
        return self.runner.step(segments)[-1]

    def _snapshot_slot(self, position: int) -> tuple[StatePool, int] | None:
        if position in self.snapshots:
            return None
        if self.snaps.num_free == 0:  # forget the oldest position (the least likely to be needed)
            self.snaps.free(self.snapshots.pop(min(self.snapshots)))
        self.snapshots[position] = self.snaps.allocate()
        return self.snaps, self.snapshots[position]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class _Stream:
    """Hands reasoning and content to ``on_text(kind, text)`` as they grow (None: say nothing)."""

    def __init__(self, tok, opened: bool, on_text):
        self.tok, self.opened, self.on_text = tok, opened, on_text
        self.shown = {"reasoning": 0, "content": 0}

    def push(self, ids: list[int]) -> None:
        if self.on_text is not None:
            self._emit(self.tok.decode(ids, skip_special_tokens=True))

    def finish(self, text: str) -> None:
        if self.on_text is not None:
            self._emit(text, final=True)

    def _emit(self, text: str, final: bool = False) -> None:
        if text.endswith("\ufffd") and not final:  # half a UTF-8 character: wait for the rest
            return
        reasoning, content, _ = split_reasoning(text, self.opened)
        for kind, part in (("reasoning", reasoning or ""), ("content", content)):
            if len(part) > self.shown[kind]:
                self.on_text(kind, part[self.shown[kind]:])
                self.shown[kind] = len(part)
