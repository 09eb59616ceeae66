"""Undoing rejected drafts: how a hybrid cache goes back to the last accepted token.

A verification forward of speculative decoding (:mod:`qwen3next.speculative`) appends ``T = k + 1``
tokens to every layer's cache, of which row ``b`` keeps the first ``keep[b]``. The two kinds of layer
forget differently:

* an attention layer's ``KVCache`` is a list of keys and values: cut it (:func:`truncate_attention`). In
  a batch whose rows keep different counts, the cache is cut to the longest and the others' rejected
  slots are marked as padding in the running mask (holes, never attended; positions count real tokens);
* a Gated DeltaNet layer's state has *absorbed* every token: no slice of it is "the state before the
  last two tokens". It must be rebuilt, by one of two strategies:

  - :class:`Replay`: copy each state before verifying, put the copy back afterwards and run the layer
    again on its own inputs for the accepted tokens (kept from the verification pass: a layer's input at
    an accepted position does not depend on the rejected tokens after it);
  - :class:`Checkpoints`: let the verification pass keep the state after every token
    (``DeltaNetState.keep_steps``) and pick, per row, the one after the last accepted token. vLLM's
    kernels do this (one state slot per draft position, selected by the number of accepted tokens).

Replay pays a second (small) pass over the accepted tokens; checkpoints pay ``T`` copies of the state
in memory, and their DeltaNet layers read the verified tokens one at a time. Both end in the state plain decoding
would have reached (``tests/test_speculative_rollback.py``). Leaves out: lazy selection at the next step
and state slots shared across requests (the engines' paged state pools).
"""

from __future__ import annotations

import torch

from .cache import HybridCache
from .deltanet import DeltaNetState, GatedDeltaNet

__all__ = ["Rollback", "Replay", "Checkpoints", "ROLLBACKS", "make_rollback", "truncate_attention",
           "deltanet_layers"]


def deltanet_layers(model, cache: HybridCache) -> list[tuple[int, GatedDeltaNet, DeltaNetState]]:
    """``(layer index, mixer, state)`` of every Gated DeltaNet layer of ``model`` and ``cache``."""
    return [(i, layer.linear_attn, cache[i]) for i, layer in enumerate(model.model.layers)
            if layer.layer_type == "linear_attention"]


def truncate_attention(cache: HybridCache, start: int, keep: torch.Tensor) -> None:
    """Cut the attention layers after a verification step that appended tokens at slot ``start``.

    ``keep (B,)``: how many of the new tokens each row keeps. The caches keep ``start + max(keep)`` slots;
    a row that keeps fewer gets holes (mask 0) in the slots after its last kept token.
    """
    longest = int(keep.max())
    end = start + longest
    for kind, layer in zip(cache.layer_types, cache.layers, strict=True):
        if kind == "full_attention" and layer.length > end:
            layer.crop(end)
    holes = torch.arange(longest, device=keep.device)[None, :] >= keep[:, None]  # (B, longest)
    if cache.attention_mask is None and bool(holes.any()):
        cache.attention_mask = torch.ones(cache.batch_size, cache.seq_len, dtype=torch.long, device=keep.device)
    if cache.attention_mask is not None:
        mask = cache.attention_mask[:, :end].clone()
        mask[:, start:end] = mask[:, start:end].masked_fill(holes.to(mask.device), 0)
        cache.attention_mask = mask
    cache.seq_len = end


class Rollback:
    """A strategy for the DeltaNet states: ``before_verify`` prepares, ``after_verify`` rolls back."""

    name = "none"

    def before_verify(self, model, cache: HybridCache) -> None:
        """Called just before the verification forward."""

    def after_verify(self, model, cache: HybridCache, keep: torch.Tensor) -> None:
        """Leave every DeltaNet state as it was after the first ``keep[b]`` new tokens of row ``b``."""
        raise NotImplementedError


class Replay(Rollback):
    """Snapshot the states, verify, restore the snapshot, run the DeltaNet layers again on the accepted part."""

    name = "replay"

    def __init__(self):
        self._snapshots: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._inputs: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._hooks = []

    def before_verify(self, model, cache: HybridCache) -> None:
        self._inputs.clear()
        for i, layer, state in deltanet_layers(model, cache):
            self._snapshots[i] = (state.conv_state.clone(), state.recurrent_state.clone())
            # keep the layer's input (after input_layernorm): the replay reads it instead of redoing the stack
            hook = layer.register_forward_pre_hook(self._recorder(i), with_kwargs=True)
            self._hooks.append(hook)

    def _recorder(self, i: int):
        def record(module, args, kwargs):
            x = args[0] if args else kwargs["x"]
            self._inputs[i] = (x, kwargs.get("attention_mask"))
        return record

    def after_verify(self, model, cache: HybridCache, keep: torch.Tensor) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for i, layer, state in deltanet_layers(model, cache):
            conv, recurrent = self._snapshots.pop(i)
            x, mask = self._inputs.pop(i)
            _replay(layer, state, conv, recurrent, x, mask, keep)


def _replay(layer: GatedDeltaNet, state: DeltaNetState, conv: torch.Tensor, recurrent: torch.Tensor,
            x: torch.Tensor, mask: torch.Tensor | None, keep: torch.Tensor) -> None:
    """Continue ``(conv, recurrent)`` over the first ``keep[b]`` inputs ``x (B, T, H)`` of each row ``b``."""
    lengths = keep.tolist()
    if len(set(lengths)) == 1:  # every row keeps as many tokens: one call, the snapshot continued in place
        n = lengths[0]
        restored = DeltaNetState(conv, recurrent)
        layer(x[:, :n], attention_mask=None if mask is None else mask[:, :n], cache=restored)
        state.conv_state, state.recurrent_state = restored.conv_state, restored.recurrent_state
        return
    new_conv, new_recurrent = conv.clone(), recurrent.clone()
    for n in sorted(set(lengths)):  # rows that keep n tokens, together
        rows = (keep == n).nonzero().squeeze(-1)
        part = DeltaNetState(conv[rows], recurrent[rows])
        layer(x[rows, :n], attention_mask=None if mask is None else mask[rows, :n], cache=part)
        new_conv[rows], new_recurrent[rows] = part.conv_state.to(conv.dtype), part.recurrent_state
    state.conv_state, state.recurrent_state = new_conv, new_recurrent


class Checkpoints(Rollback):
    """Keep the state after every verified token and select, per row, the one after its last accepted token."""

    name = "checkpoints"

    def before_verify(self, model, cache: HybridCache) -> None:
        for _, _, state in deltanet_layers(model, cache):
            state.keep_steps = True

    def after_verify(self, model, cache: HybridCache, keep: torch.Tensor) -> None:
        for _, _, state in deltanet_layers(model, cache):
            rows = torch.arange(keep.numel(), device=state.conv_steps.device)
            last = (keep - 1).to(rows.device)  # each row's last kept token
            state.conv_state = state.conv_steps[rows, last]  # (B, conv_dim, K), a copy
            state.recurrent_state = state.recurrent_steps[rows, last]  # (B, Hv, Dk, Dv)
            state.keep_steps = False
            state.conv_steps = state.recurrent_steps = None


ROLLBACKS = {"replay": Replay, "checkpoints": Checkpoints}


def make_rollback(rollback: str | Rollback) -> Rollback:
    """A strategy from its name (``"replay"`` or ``"checkpoints"``), or the given :class:`Rollback` itself."""
    if isinstance(rollback, Rollback):
        return rollback
    if rollback not in ROLLBACKS:
        raise ValueError(f"rollback: expected one of {sorted(ROLLBACKS)} or a Rollback, found {rollback!r}")
    return ROLLBACKS[rollback]()


# ------------------------------------------------------------------------------------ checking
class PlainDecoding:
    """Each row of a speculative batch decoded alone, one token at a time: the caches a rollback must
    reproduce. :meth:`differences` catches up with a :class:`~qwen3next.speculative.SpeculativeDecoder`
    (feeding each row the tokens its trunk has read since) and compares every cache."""

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        self.model, self.rows = model, []
        for b in range(input_ids.shape[0]):
            prompt = input_ids[b] if attention_mask is None else input_ids[b][attention_mask[b].bool()]
            cache = model.new_cache(1)
            hidden = model.model(prompt[None], cache=cache)[0][0]  # (T, H) post-norm
            self.rows.append({"prompt": len(prompt), "tokens": prompt.tolist(), "cache": cache,
                              "hidden": list(hidden)})

    def _catch_up(self, decoder, b: int, real: int) -> None:
        row = self.rows[b]
        while len(row["tokens"]) < real:  # plain decoding: one token per forward
            t = decoder.emitted[b][len(row["tokens"]) - row["prompt"]]
            row["tokens"].append(t)
            row["hidden"].append(self.model.model(torch.tensor([[t]]), cache=row["cache"])[0][0, 0])

    @torch.no_grad()
    def differences(self, decoder) -> dict[str, float]:
        """Largest ``|speculative - plain|`` per cache kind over the rows still generating (``"tokens"``:
        how many rows hold a different count of tokens, trunk or head)."""
        from .mtp import mtp_forward, new_mtp_cache

        out = dict.fromkeys(("kv", "conv", "recurrent", "mtp_kv", "tokens"), 0.0)
        cache, mask = decoder.cache, decoder.cache.attention_mask
        active = decoder.active.tolist()
        for b, row in enumerate(self.rows):
            if not active[b]:  # a finished row's trunk may read tokens it will never emit
                continue
            real = torch.ones(cache.seq_len, dtype=torch.bool) if mask is None else mask[b].bool().cpu()
            self._catch_up(decoder, b, int(real.sum()))
            plain = row["cache"]
            for kind, mine, theirs in zip(cache.layer_types, cache.layers, plain.layers, strict=True):
                if kind == "full_attention":
                    d = max(_diff(mine.key[b][:, real], theirs.key[0]), _diff(mine.value[b][:, real], theirs.value[0]))
                    out["kv"] = max(out["kv"], d)
                else:
                    out["conv"] = max(out["conv"], _diff(mine.conv_state[b], theirs.conv_state[0]))
                    out["recurrent"] = max(out["recurrent"], _diff(mine.recurrent_state[b], theirs.recurrent_state[0]))
            head = decoder.mtp_cache
            read = real[: head.length]  # the head's slots are the trunk's; it has read the pairs up to here
            n = int(read.sum())
            tokens = row["tokens"] + decoder.emitted[b][len(row["tokens"]) - row["prompt"]:]
            fresh = new_mtp_cache()  # the head reading every pair (x_{t+1}, h_t) of plain decoding at once
            if n:
                mtp_forward(self.model, torch.tensor([tokens[1: n + 1]]), torch.stack(row["hidden"][:n])[None],
                            cache=fresh)
                out["mtp_kv"] = max(out["mtp_kv"], _diff(head.key[b][:, read], fresh.key[0]),
                                    _diff(head.value[b][:, read], fresh.value[0]))
            out["tokens"] += float(len(row["tokens"]) != plain.seq_len or fresh.length != n)
        return out


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
