"""A small serving engine: continuous batching of requests over a paged KV cache and a state pool.

Requests arrive at any time and finish at different times. A static batch would wait for its
longest member; a *continuous* batch (Yu et al., "Orca", OSDI 2022) re-forms itself at every step:

1. **admit** waiting requests while there is a free state slot and room in the block pool for the
   whole request (prompt plus new tokens, reserved at once, so no request is ever preempted); with
   prefix caching, the longest cached prefix is adopted first and its DeltaNet snapshot restored;
2. **schedule** under a token budget: one token for every request that is decoding, then prompt
   chunks (*chunked prefill*, Agrawal et al., "Sarathi-Serve", 2024) for requests still reading their
   prompt; a long prompt is cut into chunks over several steps and continued through the saved
   DeltaNet state and the KV blocks written so far;
3. **run** all of it as one packed forward pass (:mod:`qwen3next.packed_step`), prefill and decode
   mixed;
4. **advance**: sample a token for every request that finished its prompt or decoded, retire the
   finished ones (their slot and blocks go back; with prefix caching their full blocks stay cached).

Every request's output is the same as running it alone (:func:`run_alone`): greedy tokens identical,
float32 logits equal to rounding (``tests/test_engine.py`` checks it for random arrival orders and
lengths). :attr:`Engine.records` keeps what each step did, for the timeline figure of chapter 12.

Mirrors the scheduler of vLLM (``vllm/v1/core/sched/scheduler.py``: token budget, decode first,
chunked prefill, block-aligned chunks for hybrid prefix caching); leaves out preemption and swapping,
priorities, speculative decoding and streaming to clients.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from .generate import next_token
from .packed_step import PackedRunner, Segment, Sequence
from .paged_kv import BlockPool, BlockTable
from .prefix_cache import MODES, Hit, PrefixCache, cdiv
from .state_pool import StatePool, copy_slot


@dataclass
class Request:
    """A prompt to complete, and (filled in by the engine) what became of it."""

    prompt: list[int]
    max_new_tokens: int = 16
    request_id: Any = None
    arrival: int = 0  # the engine step at which it arrives (used by Engine.run)
    eos_token_id: int | list[int] | None = None
    temperature: float = 0.0  # 0 is greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    # results
    output: list[int] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)  # (vocab,) per new token, if recorded
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache
    status: str = "waiting"  # waiting -> prefill -> decode -> finished
    admitted_step: int | None = None
    first_token_step: int | None = None
    finished_step: int | None = None
    times: dict[str, float] = field(default_factory=dict)  # perf_counter at arrival, first token, end
    seq: Sequence | None = field(default=None, repr=False)
    _generator: torch.Generator | None = field(default=None, repr=False)
    _snapshots: dict[int, int] = field(default_factory=dict, repr=False)  # position -> snapshot slot

    @property
    def total_tokens(self) -> int:
        """Tokens that will go through the model: the prompt and every new token but the last."""
        return len(self.prompt) + self.max_new_tokens - 1

    def stops(self, token: int) -> bool:
        eos = self.eos_token_id
        ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        return token in ids or len(self.output) >= self.max_new_tokens


@dataclass
class StepRecord:
    """What one engine step did: ``work`` lists ``(request_id, "prefill" | "decode", tokens)``."""

    step: int
    work: list[tuple[Any, str, int]]
    waiting: list[Any]
    finished: list[Any]


class Engine:
    """Continuous batching for one model: ``add`` requests, call ``step`` (or ``run`` a whole workload).

    ``max_running``: requests held at once (state slots); ``max_tokens_per_step``: the token budget of
    a step; ``num_blocks`` x ``block_size``: the KV pool; ``prefix_caching``: None, ``"align"`` or
    ``"all"`` (see :mod:`qwen3next.prefix_cache`); ``snapshot_slots``: snapshots the prefix cache keeps;
    ``state_dtype``: the recurrent state's dtype (float32; 16-bit types lose accuracy);
    ``record_logits``: keep every new token's logits on its request (tests compare them).
    """

    def __init__(self, model, max_running: int = 8, max_tokens_per_step: int = 64, block_size: int = 16,
                 num_blocks: int | None = None, max_model_len: int = 1024, prefix_caching: str | None = None,
                 snapshot_slots: int = 64, state_dtype: torch.dtype = torch.float32, record_logits: bool = False):
        if prefix_caching is not None and prefix_caching not in MODES:
            raise ValueError(f"prefix_caching: expected None or one of {MODES}, found {prefix_caching!r}")
        floor = max_running + (block_size - 1 if prefix_caching else 0)  # every request can move each step
        if max_tokens_per_step < floor:
            raise ValueError(f"max_tokens_per_step: expected at least {floor} (one token per running request"
                             f"{' plus a block' if prefix_caching else ''}), found {max_tokens_per_step}")
        cfg = model.config
        p = model.lm_head.weight
        self.model, self.max_running, self.budget = model, max_running, max_tokens_per_step
        self.max_model_len, self.record_logits = max_model_len, record_logits
        self.block_size = block_size
        num_blocks = num_blocks or max_running * cdiv(max_model_len, block_size)
        self.kv = BlockPool.for_config(cfg, num_blocks, block_size, dtype=p.dtype, device=p.device)
        self.states = StatePool.for_config(cfg, max_running, dtype=p.dtype, state_dtype=state_dtype, device=p.device)
        self.cache = None
        if prefix_caching:
            snaps = StatePool.for_config(cfg, snapshot_slots, dtype=p.dtype, state_dtype=state_dtype, device=p.device)
            self.cache = PrefixCache(self.kv, snaps, prefix_caching)
        self.runner = PackedRunner(model, self.kv, self.states)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.steps = 0
        self.records: list[StepRecord] = []

    # ------------------------------------------------------------------------------- requests
    def add(self, request: Request) -> Request:
        vocab = self.model.config.vocab_size
        if not request.prompt:
            raise ValueError(f"request {request.request_id!r}: the prompt is empty")
        if min(request.prompt) < 0 or max(request.prompt) >= vocab:
            raise ValueError(f"request {request.request_id!r}: token ids must be in 0..{vocab - 1}")
        if request.max_new_tokens < 1:
            raise ValueError(f"request {request.request_id!r}: max_new_tokens must be >= 1")
        if request.total_tokens > self.max_model_len:
            raise ValueError(f"request {request.request_id!r}: {len(request.prompt)} prompt + "
                             f"{request.max_new_tokens} new tokens exceed max_model_len={self.max_model_len}")
        if request.temperature > 0:
            request._generator = torch.Generator().manual_seed(0 if request.seed is None else request.seed)
        request.times["arrival"] = time.perf_counter()
        self.waiting.append(request)
        return request

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def run(self, requests: list[Request], max_steps: int = 100_000) -> list[Request]:
        """Feed ``requests`` in at their ``arrival`` steps and step until all are finished."""
        pending = deque(sorted(requests, key=lambda r: r.arrival))
        while pending or self.has_work:
            while pending and pending[0].arrival <= self.steps:
                self.add(pending.popleft())
            self.step()
            if self.steps > max_steps:
                raise RuntimeError(f"run: not finished after {max_steps} steps")
        return requests

    # ------------------------------------------------------------------------------------ step
    def step(self) -> StepRecord:
        """Admit, schedule, run one packed forward pass, advance."""
        self._admit()
        segments, owners = self._schedule()
        logits = self.runner.step(segments) if segments else None
        finished = self._advance(segments, owners, logits)
        record = StepRecord(self.steps, _work(segments, owners), [r.request_id for r in self.waiting], finished)
        self.records.append(record)
        self.steps += 1
        return record

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.max_running:
            req = self.waiting[0]
            needed = cdiv(req.total_tokens, self.block_size)
            spare = self.kv.num_free + (self.cache.evictable() if self.cache else 0)
            if spare < needed:
                return  # first come, first served: later requests wait too
            self.waiting.popleft()
            hit = self.cache.lookup(req.prompt) if self.cache else Hit([], 0, None)
            table = BlockTable(self.kv)
            if hit.blocks:
                table.adopt(hit.blocks, hit.num_tokens)
            if self.cache:
                self.cache.make_room(table.blocks_needed(req.total_tokens))
            table.reserve(req.total_tokens)
            slot = self.states.allocate()
            if hit.snapshot is not None:  # resume the DeltaNet layers exactly where the cached prefix ends
                copy_slot(self.cache.snapshots, hit.snapshot, self.states, slot)
            req.seq = Sequence(list(req.prompt), table, slot, num_computed=hit.num_tokens)
            req.cached_tokens, req.status, req.admitted_step = hit.num_tokens, "prefill", self.steps
            self.running.append(req)

    def _schedule(self) -> tuple[list[Segment], list[Request]]:
        budget, segments, owners = self.budget, [], []
        for req in self.running:  # decoding requests first: one token each
            if req.status == "decode" and budget > 0:
                n = req.seq.num_computed
                segments.append(self._segment(req, n, n + 1, logits=True))
                owners.append(req)
                budget -= 1
        for req in self.running:  # then prompt chunks, oldest request first
            if req.status != "prefill" or budget <= 0:
                continue
            start = req.seq.num_computed
            end = start + self._chunk(len(req.prompt), start, budget)
            if end == start:
                continue
            for a, b in self._pieces(start, end):
                segments.append(self._segment(req, a, b, logits=b == len(req.prompt)))
                owners.append(req)
            budget -= end - start
        return segments, owners

    def _chunk(self, prompt_len: int, start: int, budget: int) -> int:
        """Prompt tokens to run now; in "align" mode cut at a block boundary, as vLLM does, so that the
        state at the chunk's end can be kept (and the last full block always gets its snapshot)."""
        n = min(prompt_len - start, budget)
        if self.cache is None or self.cache.mode != "align":
            return n
        last = prompt_len // self.block_size * self.block_size  # the last boundary inside the prompt
        if start + n < last:
            return n // self.block_size * self.block_size
        if start < last < start + n:
            return last - start
        return n

    def _pieces(self, start: int, end: int) -> list[tuple[int, int]]:
        """A chunk as segments; in "all" mode split at every block boundary (a snapshot at each)."""
        if self.cache is None or self.cache.mode != "all":
            return [(start, end)]
        cuts = [start] + [p for p in range(start + 1, end) if p % self.block_size == 0] + [end]
        return list(zip(cuts[:-1], cuts[1:], strict=True))

    def _segment(self, req: Request, start: int, end: int, logits: bool) -> Segment:
        seg = Segment(req.seq, start, end, logits=logits)
        if self.cache is not None and self.cache.wants_snapshot(req.seq.tokens, end):
            slot = self.cache.new_snapshot_slot()
            if slot is not None:
                seg.snapshot = (self.cache.snapshots, slot)
                req._snapshots[end] = slot
        return seg

    def _advance(self, segments, owners, logits) -> list[Any]:
        finished, row = [], 0
        for seg, req in zip(segments, owners, strict=True):
            if not seg.logits:
                continue
            self._emit(req, logits[row])
            row += 1
        for req in {id(r): r for r in owners}.values():
            full_block = req.seq.num_computed % self.block_size == 0
            if self.cache is not None and (req._snapshots or full_block or req.status == "finished"):
                self.cache.insert(req.seq.tokens, req.seq.table.blocks, req.seq.num_computed, req._snapshots)
                req._snapshots = {}
            if req.status == "finished":
                self._retire(req)
                finished.append(req.request_id)
        return finished

    def _emit(self, req: Request, logits: torch.Tensor) -> None:
        token = int(next_token(logits[None].float(), req.temperature, req.top_k, req.top_p,
                               generator=req._generator)[0])
        req.output.append(token)
        req.seq.tokens.append(token)
        if self.record_logits:
            req.logits.append(logits.float())
        if req.first_token_step is None:
            req.first_token_step, req.times["first_token"] = self.steps, time.perf_counter()
        req.status = "finished" if req.stops(token) else "decode"

    def _retire(self, req: Request) -> None:
        self.running.remove(req)
        self.states.free(req.seq.slot)
        req.seq.table.free()  # blocks the prefix cache holds stay alive
        req.finished_step, req.times["finished"] = self.steps, time.perf_counter()


def _work(segments: list[Segment], owners: list[Request]) -> list[tuple[Any, str, int]]:
    work: dict[Any, list] = {}
    for seg, req in zip(segments, owners, strict=True):
        kind = "decode" if len(seg) == 1 and seg.start >= len(req.prompt) else "prefill"
        entry = work.setdefault(req.request_id, [req.request_id, kind, 0])
        entry[2] += len(seg)
    return [tuple(w) for w in work.values()]


@torch.no_grad()
def run_alone(model, prompt: list[int], max_new_tokens: int, eos_token_id=None, temperature: float = 0.0,
              top_k: int = 0, top_p: float = 1.0, seed: int | None = None) -> tuple[list[int], list[torch.Tensor]]:
    """The request on its own, through the model's ordinary cache: ``(new tokens, their logits)``.

    What every engine output is compared with. Sampling draws from a generator seeded like the
    engine's, so a sampled request gives the same tokens too.
    """
    req = Request(list(prompt), max_new_tokens, eos_token_id=eos_token_id, temperature=temperature,
                  top_k=top_k, top_p=top_p, seed=seed)
    generator = torch.Generator().manual_seed(0 if seed is None else seed) if temperature > 0 else None
    device = model.lm_head.weight.device
    cache = model.new_cache(1)
    logits = model(torch.tensor([prompt], device=device), cache=cache, logits_to_keep=1).logits[0, -1]
    while True:
        token = int(next_token(logits[None].float(), temperature, top_k, top_p, generator=generator)[0])
        req.output.append(token)
        req.logits.append(logits.float())
        if req.stops(token):
            return req.output, req.logits
        logits = model(torch.tensor([[token]], device=device), cache=cache).logits[0, -1]


@dataclass(frozen=True)
class AloneComparison:
    """How the engine's outputs compare with running each request alone."""

    requests: int
    identical: int  # requests whose new tokens are all the same
    max_abs_diff: float  # largest |logit difference| over every new token of every request

    def __str__(self) -> str:
        return f"{self.identical:,} of {self.requests:,} requests identical to running alone"


def compare_with_alone(model, requests: list[Request]) -> AloneComparison:
    """Run every finished request again alone (:func:`run_alone`) and compare tokens and logits.

    The engine must have recorded logits (``record_logits=True``) for the logit comparison.
    """
    identical, worst = 0, 0.0
    for req in requests:
        tokens, logits = run_alone(model, req.prompt, req.max_new_tokens, req.eos_token_id, req.temperature,
                                   req.top_k, req.top_p, req.seed)
        identical += tokens == req.output
        for ours, alone in zip(req.logits, logits, strict=False):  # up to a differing token, if any
            worst = max(worst, float((ours - alone).abs().max()))
    return AloneComparison(len(requests), identical, worst)
