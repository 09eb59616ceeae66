"""One forward pass over a packed batch: many requests, each at its own position, prefill and decode mixed.

A serving engine does not run one request at a time, nor a rectangular ``(B, T)`` batch padded to the
longest prompt. Each step it takes a list of *segments*, a run of consecutive tokens of one request
(a prefill chunk of a prompt, or the single new token of a request that is decoding), and packs all
their tokens into one ``(1, N, hidden)`` tensor. What mixes tokens *within* a sequence is then done
per segment; what treats each token on its own is done once for the whole pack:

* token-wise, on all ``N`` tokens at once: the embedding, the two RMSNorms of every layer, the sparse
  MoE block (its experts see the tokens of every request together), the final norm and ``lm_head``;
* per segment: the Gated DeltaNet (its state comes from the request's slot in a
  :class:`qwen3next.state_pool.StatePool`) and the gated attention (its keys and values live in the
  request's blocks of a :class:`qwen3next.paged_kv.BlockPool`). The one-token segments of requests
  that are decoding run as one batch of rows, each reading its own slot and its own blocks.

The layers are the model's own modules, called through their public interfaces
(``GatedDeltaNet.forward(x, attention_mask, cache)`` with a ``DeltaNetState``, and
``GatedAttention.forward(x, cos, sin, attention_mask, cache)`` with a :class:`~qwen3next.paged_kv.PagedKV`);
only the residual wiring of ``DecoderLayer`` is repeated here, because the mixer and the MoE see
different groupings of the same tokens.

A segment may also ask for a *snapshot*: a copy of its request's DeltaNet states right after its last
token, written layer by layer into a slot of another pool (prefix caching, chat turns).

Mirrors the "varlen" packed batches of vLLM's model runner (``query_start_loc``, ``slot_mapping``,
``state_indices_tensor``); leaves out CUDA graphs and fused paged kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .deltanet import DeltaNetState
from .paged_kv import BlockPool, BlockTable, PagedKV
from .state_pool import StatePool, copy_slot


@dataclass
class Sequence:
    """The tokens of one request and where its memory lives.

    ``tokens``: every token known so far (prompt, then generated ones); ``num_computed``: how many of
    them have been through the model (their keys, values and states are cached); ``table``: its KV
    blocks; ``slot``: its DeltaNet state slot.
    """

    tokens: list[int]
    table: BlockTable
    slot: int
    num_computed: int = 0


@dataclass
class Segment:
    """Tokens ``start .. end - 1`` of ``seq``, to run in this step.

    ``logits``: return the next-token logits after the segment's last token. ``snapshot``: a
    ``(pool, slot)`` to copy the DeltaNet states into once the segment is done.
    """

    seq: Sequence
    start: int
    end: int
    logits: bool = False
    snapshot: tuple[StatePool, int] | None = None

    def __len__(self) -> int:
        return self.end - self.start


def _groups(segments: list[Segment]) -> list[tuple[list[Segment], slice]]:
    """Runs of segments that go through a mixer together, with their slice of the packed tokens.

    Consecutive one-token segments continuing a sequence form one batch (decode rows); any other
    segment (a prompt chunk, or a prompt's very first token) runs alone. A batch holds each sequence
    at most once: its rows all read their states before any row writes one back, so a second
    one-token segment of the same sequence (a prompt cut at block boundaries into pieces of one
    token) must start a new batch, to continue from the state the first one leaves.
    """
    groups: list[tuple[list[Segment], bool]] = []  # (segments, is a decode batch)
    for seg in segments:
        decode = len(seg) == 1 and seg.start > 0
        if decode and groups and groups[-1][1] and all(s.seq is not seg.seq for s in groups[-1][0]):
            groups[-1][0].append(seg)
        else:
            groups.append(([seg], decode))
    out, offset = [], 0
    for segs, _ in groups:
        n = sum(len(s) for s in segs)
        out.append((segs, slice(offset, offset + n)))
        offset += n
    return out


def _check(segments: list[Segment]) -> None:
    expected: dict[int, int] = {}  # where the next segment of each sequence must start
    for seg in segments:
        start = expected.get(id(seg.seq), seg.seq.num_computed)
        if not 0 <= seg.start < seg.end <= len(seg.seq.tokens):
            raise ValueError(f"segment {seg.start}..{seg.end}: outside the sequence's {len(seg.seq.tokens)} tokens")
        if seg.start != start:
            raise ValueError(f"segment starts at {seg.start}, but its sequence continues at {start}: "
                             f"a segment must pick up where the sequence stopped")
        if seg.seq.table.capacity < seg.end:
            raise ValueError(f"segment ends at {seg.end}, but its block table holds {seg.seq.table.capacity} tokens")
        expected[id(seg.seq)] = seg.end


class PackedRunner:
    """Runs packed steps of ``model`` against a block pool and a state pool (which it does not own)."""

    def __init__(self, model, kv_pool: BlockPool, state_pool: StatePool):
        self.model, self.kv, self.states = model, kv_pool, state_pool
        kinds = model.config.layer_types
        # each layer's index among the layers of its own kind: the row of its pool
        self.kind_index = [kinds[:i].count(kind) for i, kind in enumerate(kinds)]

    @torch.no_grad()
    def step(self, segments: list[Segment]) -> torch.Tensor:
        """Run ``segments``; returns ``(n, vocab)`` logits for the segments that asked, in order."""
        if not segments:
            raise ValueError("step: no segments to run")
        _check(segments)
        model = self.model.model
        device = self.model.lm_head.weight.device
        ids = [t for s in segments for t in s.seq.tokens[s.start:s.end]]
        positions = [p for s in segments for p in range(s.start, s.end)]
        x = model.embed_tokens(torch.tensor(ids, device=device))[None]  # (1, N, hidden)
        pos = torch.tensor([positions], device=device)
        cos, sin = model.rotary_emb(pos)  # (1, N, rotary_dim) each
        groups = _groups(segments)
        for i, layer in enumerate(model.layers):
            h = layer.input_layernorm(x)
            mixed = [self._mix(i, layer, segs, h[:, part], cos[:, part], sin[:, part])
                     for segs, part in groups]  # per prompt chunk / decode batch
            x = x + torch.cat(mixed, dim=1)
            y = layer.mlp(layer.post_attention_layernorm(x))  # all tokens at once
            x = x + (y[0] if isinstance(y, tuple) else y)
        last = torch.tensor([len(s) for s in segments]).cumsum(0) - 1  # where each ends
        want = [int(e) for e, s in zip(last, segments, strict=True) if s.logits]
        logits = self.model.lm_head(model.norm(x[0, want]))  # (n, vocab)
        for seg in segments:
            seg.seq.num_computed = seg.end
            seg.seq.table.num_tokens = max(seg.seq.table.num_tokens, seg.end)
        return logits

    def _mix(self, i: int, layer, segs: list[Segment], h, cos, sin) -> torch.Tensor:
        """Layer ``i``'s token mixer on one group: ``h (1, n, hidden)`` -> ``(1, n, hidden)``."""
        B = len(segs)
        rows = h.reshape(B, -1, h.shape[-1])  # (B, T, hidden): one row per segment
        j = self.kind_index[i]
        if layer.layer_type == "linear_attention":
            slots = [s.seq.slot for s in segs]
            fresh = B == 1 and segs[0].start == 0
            # a request's first tokens start from no state at all, exactly as when it runs alone
            state = DeltaNetState() if fresh else self.states.gather(j, slots)
            out = layer.linear_attn(rows, attention_mask=None, cache=state)
            self.states.scatter(j, slots, state)
            for seg in segs:
                if seg.snapshot is not None:
                    pool, snap = seg.snapshot
                    copy_slot(self.states, seg.seq.slot, pool, snap, layer=j)
        else:
            view = PagedKV(self.kv, j, [s.seq.table for s in segs], past=[s.start for s in segs])
            cos, sin = cos.reshape(B, -1, cos.shape[-1]), sin.reshape(B, -1, sin.shape[-1])
            out = layer.self_attn(rows, cos, sin, attention_mask=view.mask, cache=view)
        return out.reshape(1, -1, out.shape[-1])
