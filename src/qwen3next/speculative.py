"""Speculative decoding with the MTP head: draft ``k`` tokens cheaply, verify them in one trunk forward.

Plain decoding runs the whole trunk once per token. Here the multi-token-prediction head
(:mod:`qwen3next.mtp`, one decoder layer) guesses the next ``k`` tokens, and one trunk forward over the
pending token and the ``k`` guesses scores all of them at once (Leviathan, Kalman & Matias, "Fast
Inference from Transformers via Speculative Decoding", 2023; Chen et al., "Accelerating Large Language
Model Decoding with Speculative Sampling", 2023). One round:

1. **draft**: the head reads the pairs ``(x_{t+1}, h_t)`` it has not seen yet (the trunk's post-norm
   hidden states from the last verification) and proposes ``d_1``; for ``j > 1`` it reads its own
   post-norm output as the next ``h`` and proposes ``d_j``, as vLLM and SGLang wire it;
2. **verify**: the trunk reads ``[x_n, d_1, ..., d_k]`` (``k + 1`` tokens) in one forward;
3. **accept** the longest prefix of drafts the trunk agrees with, plus the trunk's own next token
   (greedy: equal to its arg-max; sampling: the rejection rule, which keeps the output distribution
   exactly that of plain sampling);
4. **roll back** every cache to the accepted length (:mod:`qwen3next.rollback`): attention KV is cut,
   DeltaNet states are rebuilt by ``"replay"`` or ``"checkpoints"``, the head's own KV is cut too.

Every round emits between 1 and ``k + 1`` tokens for one trunk forward. In a batch (left padding) each
row accepts its own count; rows that accept fewer leave holes in the attention caches, masked like
padding (:func:`qwen3next.rollback.truncate_attention`), so the batch stays rectangular.

Contents: :func:`accept_greedy`, :func:`accept_sampling` (the rejection rule), :class:`SpeculativeStats`
(acceptance per draft position, tokens per verification, CPU time per phase), :class:`SpeculativeDecoder`
(the loop's state, one :meth:`~SpeculativeDecoder.step` per round), :func:`speculative_generate`;
:func:`weight_bytes_read` and :func:`head_bytes_read` (what a forward reads, for the bandwidth argument);
three wrong wirings of the head as controls. Leaves out: tree drafts (EAGLE-2, Medusa), drafting with a separate small
model, and the engines' fused kernels.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from .generate import _check_inputs, _check_integer, _eos_ids, filter_logits
from .mtp import MTPOutput, mtp_forward, new_mtp_cache
from .rollback import Rollback, make_rollback, truncate_attention

__all__ = ["accept_greedy", "accept_sampling", "residual_distribution", "SpeculativeStats",
           "SpeculativeDecoder", "speculative_generate", "weight_bytes_read", "head_bytes_read",
           "PreNormHidden", "SwappedConcat", "UnshiftedTokens"]


# ------------------------------------------------------------------------------------ acceptance
def accept_greedy(drafts: torch.Tensor, target_logits: torch.Tensor):
    """The longest prefix of ``drafts (B, k)`` equal to the trunk's arg-max, and the trunk's next token.

    ``target_logits (B, k + 1, V)``: row ``i`` predicts the token after ``drafts[:, :i]``. Returns the
    number accepted ``(B,)`` in ``0..k`` and the token that follows them ``(B,)``: the trunk's correction
    at the first mismatch, or its bonus token after ``k`` acceptances.
    """
    target = target_logits.argmax(-1)  # (B, k + 1)
    k = drafts.shape[1]
    matches = (drafts == target[:, :k]).long()  # (B, k)
    accepted = matches.cumprod(-1).sum(-1)  # (B,) the run of matches from the left
    return accepted, target.gather(1, accepted[:, None]).squeeze(1)


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``max(p - q, 0)`` normalised (..., V): what to sample from after a draft from ``q`` is rejected.

    Where ``p <= q`` everywhere (nothing left), ``p`` itself is returned (a rejection cannot happen then,
    but rounding may leave a draft with ``p(d)`` a hair below ``q(d)``).
    """
    residual = (p - q).clamp_min(0.0)
    total = residual.sum(-1, keepdim=True)
    return torch.where(total > 0, residual / total.clamp_min(torch.finfo(p.dtype).tiny), p)


def accept_sampling(drafts: torch.Tensor, q: torch.Tensor, p: torch.Tensor,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The speculative rejection rule: keep the output distribution that of sampling from ``p``.

    ``drafts (B, k)`` were drawn from ``q (B, k, V)``; ``p (B, k + 1, V)`` is the trunk's distribution at
    each position. Draft ``j`` is accepted with probability ``min(1, p_j(d_j) / q_j(d_j))``; the first
    rejected position draws from :func:`residual_distribution`, and after ``k`` acceptances a bonus token
    comes from ``p_k``. Returns the number accepted ``(B,)`` and the next token ``(B,)``.
    """
    B, k = drafts.shape
    p_d = p[:, :k].gather(-1, drafts[..., None]).squeeze(-1)  # (B, k) the trunk's
    q_d = q.gather(-1, drafts[..., None]).squeeze(-1)  # (B, k) the head's, > 0
    u = torch.rand(B, k, generator=generator, device=p.device, dtype=p.dtype)
    accepted = (u * q_d < p_d).long().cumprod(-1).sum(-1)  # u < p / q, in a row
    rows = torch.arange(B, device=p.device)
    # after k accepts there is no q: draw the bonus token from p itself
    q_next = torch.cat([q, torch.zeros_like(p[:, :1])], dim=1)[rows, accepted]
    probs = residual_distribution(p[rows, accepted], q_next)  # (B, V)
    return accepted, torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ------------------------------------------------------------------------------------ statistics
@dataclass
class SpeculativeStats:
    """Counts over the verification steps of one :func:`speculative_generate` call (rows that were still
    generating; a row's count stops once it has finished)."""

    num_draft_tokens: int
    verify_steps: int = 0  # trunk forwards after the prefill
    row_steps: int = 0  # (row, verification) pairs counted
    drafted: int = 0
    accepted: int = 0
    emitted: int = 0  # tokens the verification steps produced (accepted drafts + the trunk's token)
    drafted_at: list[int] = field(default_factory=list)  # per draft position j = 1..k
    accepted_at: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: {"draft": 0.0, "verify": 0.0, "rollback": 0.0})

    def __post_init__(self):
        self.drafted_at = self.drafted_at or [0] * self.num_draft_tokens
        self.accepted_at = self.accepted_at or [0] * self.num_draft_tokens

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafts / drafted tokens."""
        return self.accepted / self.drafted if self.drafted else float("nan")

    @property
    def accepted_per_position(self) -> list[float]:
        """For each draft position j: the share of verification steps in which draft j was accepted
        (it needs drafts 1..j-1 accepted too, so the list never grows)."""
        return [a / d if d else float("nan") for a, d in zip(self.accepted_at, self.drafted_at, strict=True)]

    @property
    def tokens_per_verify_step(self) -> float:
        """Tokens each row gains per trunk forward: 1 + the accepted drafts, on average."""
        return self.emitted / self.row_steps if self.row_steps else float("nan")

    def record(self, active: torch.Tensor, k: int, accepted: torch.Tensor) -> None:
        """Count one verification of ``k`` drafts for the ``active (B,)`` rows."""
        n = int(active.sum())
        self.verify_steps += 1
        self.row_steps += n
        self.drafted += n * k
        self.accepted += int(accepted[active].sum())
        self.emitted += int((accepted[active] + 1).sum())
        for j in range(k):
            self.drafted_at[j] += n
            self.accepted_at[j] += int((accepted[active] > j).sum())


class _Clock:
    """Adds the CPU time of a ``with`` block to ``seconds[name]``."""

    def __init__(self, seconds: dict[str, float], name: str):
        self.seconds, self.name = seconds, name

    def __enter__(self):
        self.start = time.process_time()

    def __exit__(self, *exc):
        self.seconds[self.name] += time.process_time() - self.start


# ------------------------------------------------------------------------------------- the loop
@dataclass
class Round:
    """What one verification saw and decided (for looking at a round; the decoder does not read it)."""

    read: torch.Tensor  # (B, k + 1) the pending token and the drafts
    trunk_argmax: torch.Tensor  # (B, k + 1) the trunk's arg-max after each of them
    accepted: torch.Tensor  # (B,) drafts accepted
    following: torch.Tensor  # (B,) the trunk's token kept after them


@dataclass
class _Unread:
    """The pairs ``(x_{t+1}, h_t)`` the head has not read yet, at trunk slots ``start .. start + P - 1``."""

    ids: torch.Tensor  # (B, P) the next token of each slot
    hidden: torch.Tensor  # (B, P, H) the trunk's post-norm hidden state at each slot
    last: torch.Tensor  # (B,) index of each row's last real pair: its draft is read there


class SpeculativeDecoder:
    """The state of speculative decoding for a batch: the trunk's hybrid cache, the head's KV cache,
    the pending token (chosen, not yet read by the trunk) and each row's emitted tokens.

    Built from a prompt (it runs the prefill); each :meth:`step` drafts, verifies, accepts and rolls
    back once. :func:`speculative_generate` drives it; tests drive it step by step.
    """

    def __init__(self, model, input_ids: torch.Tensor, max_new_tokens: int, num_draft_tokens: int = 2,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                 eos_token_id: int | Sequence[int] | None = None, rollback: str | Rollback = "replay",
                 attention_mask: torch.Tensor | None = None):
        _check_inputs(input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, 0.0, seed,
                      eos_token_id, None)
        _check_integer("num_draft_tokens", num_draft_tokens, 1, "a number of draft tokens >= 1")
        if getattr(model, "mtp", None) is None:
            raise ValueError("model: has no MTP head to draft with; build it with Qwen3NextForCausalLM(config, "
                             "mtp=True) or load it with from_pretrained(path, mtp=True)")
        self.model, self.k, self.max_new_tokens = model, num_draft_tokens, max_new_tokens
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.rollback = make_rollback(rollback)
        self.eos = _eos_ids(eos_token_id, input_ids.device)
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator(device=input_ids.device)
            self.generator.manual_seed(seed)
        B = input_ids.shape[0]
        self.cache, self.mtp_cache = model.new_cache(B), new_mtp_cache()
        self.emitted: list[list[int]] = [[] for _ in range(B)]
        self.finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        self.stats = SpeculativeStats(num_draft_tokens)
        self._prefill(input_ids, attention_mask)

    # ------------------------------------------------------------------------------- helpers
    def _trunk(self, tokens: torch.Tensor, attention_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The trunk on new ``tokens (B, T)`` with the cache: the hidden states ``lm_head`` reads and those
        the head reads, ``(B, T, H)`` each: both the post-norm ones."""
        hidden = self.model.model(tokens, attention_mask=attention_mask, cache=self.cache)[0]
        return hidden, hidden

    def _pair_tokens(self, tokens: torch.Tensor, next_tokens: torch.Tensor) -> torch.Tensor:
        """The token the head reads with ``h_t``: the next one, ``x_{t+1}`` (tokens shifted, positions kept)."""
        return next_tokens

    def _filtered(self, logits: torch.Tensor) -> torch.Tensor:
        return filter_logits(logits, self.temperature, self.top_k, self.top_p).softmax(-1)

    def _draw(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A draft token per row from the head's ``logits (B, V)``, and its distribution (None if greedy)."""
        if self.temperature == 0.0:
            return logits.argmax(-1), None
        q = self._filtered(logits)
        return torch.multinomial(q, 1, generator=self.generator).squeeze(-1), q

    @property
    def active(self) -> torch.Tensor:
        """Rows still generating: not finished and short of ``max_new_tokens``."""
        short = torch.tensor([len(e) < self.max_new_tokens for e in self.emitted], device=self.finished.device)
        return short & ~self.finished

    @property
    def done(self) -> bool:
        return not bool(self.active.any())

    def _emit(self, tokens: torch.Tensor, counts: torch.Tensor) -> None:
        """Append the first ``counts[b]`` of ``tokens[b]`` to each active row, stopping at an end token."""
        for b in self.active.nonzero().squeeze(-1).tolist():
            for t in tokens[b, : int(counts[b])].tolist():
                if len(self.emitted[b]) == self.max_new_tokens:
                    break
                self.emitted[b].append(t)
                if self.eos is not None and t in self.eos.tolist():
                    self.finished[b] = True
                    break

    # --------------------------------------------------------------------------------- phases
    def _prefill(self, input_ids: torch.Tensor, attention_mask) -> None:
        B, T = input_ids.shape
        hidden, for_head = self._trunk(input_ids, attention_mask)  # (B, T, H) each
        first = self._draw(self.model.lm_head(hidden[:, -1]))[0]  # (B,) the trunk's token, as a draft is drawn
        self.pending = first
        next_ids = torch.cat([input_ids[:, 1:], first[:, None]], dim=1)  # (B, T): x_{t+1} for each slot t
        self.unread = _Unread(self._pair_tokens(input_ids, next_ids), for_head,
                              torch.full((B,), T - 1, device=input_ids.device))
        self._emit(first[:, None], torch.ones(B, dtype=torch.long))

    def _head(self, next_ids, hidden, position_ids, attention_mask) -> MTPOutput:
        return mtp_forward(self.model, next_ids, hidden, position_ids=position_ids, cache=self.mtp_cache,
                           attention_mask=attention_mask)

    def draft(self, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Read the unread pairs, then propose ``k`` tokens: ``drafts (B, k)`` and their distributions
        ``(B, k, V)`` (None when greedy). Leaves the head's cache ``k - 1`` slots past the trunk's."""
        u, mask, S = self.unread, self.cache.attention_mask, self.cache.seq_len
        B, P = u.ids.shape
        positions = self.model.model._positions(mask, B, P, S - P, u.ids.device)  # the trunk's, for slots S-P..S-1
        out = self._head(u.ids, u.hidden, positions, mask)
        rows = torch.arange(B, device=u.ids.device)
        logits, h = out.logits[rows, u.last], out.hidden[rows, u.last]  # (B, V), (B, H)
        next_position = torch.full((B,), S, device=u.ids.device) if mask is None else mask.sum(-1)
        drafts, dists = [], []
        for j in range(k):
            if j:  # the head's own output stands in for h at the slot of the token it drafted before
                m = None if mask is None else torch.cat([mask, mask.new_ones(B, j)], dim=1)
                out = self._head(drafts[-1][:, None], h[:, None], (next_position + j - 1)[:, None], m)
                logits, h = out.logits[:, 0], out.hidden[:, 0]
            d, q = self._draw(logits)
            drafts.append(d)
            dists.append(q)
        ids = torch.stack(drafts, 1) if k else u.ids.new_zeros(B, 0)
        return ids, (torch.stack(dists, 1) if k and dists[0] is not None else None)

    def _accept(self, drafts, q, logits) -> tuple[torch.Tensor, torch.Tensor]:
        if self.temperature == 0.0:
            return accept_greedy(drafts, logits)
        p = self._filtered(logits.flatten(0, 1)).view(logits.shape)  # (B, k + 1, V)
        if q is None:
            q = p[:, :0]
        return accept_sampling(drafts, q, p, self.generator)

    def step(self, num_draft_tokens: int | None = None) -> torch.Tensor:
        """One round: draft, verify, accept, roll back. Returns the drafts accepted per row ``(B,)``.

        Drafts no more tokens than the longest-running row still needs (0 drafts: a plain decoding step).
        """
        active = self.active
        need = max(self.max_new_tokens - len(self.emitted[b]) for b in active.nonzero().squeeze(-1).tolist())
        k = max(0, min(self.k if num_draft_tokens is None else num_draft_tokens, need - 1))
        start, B = self.cache.seq_len, self.pending.shape[0]
        with _Clock(self.stats.seconds, "draft"):
            drafts, q = self.draft(k)
        tokens = torch.cat([self.pending[:, None], drafts], dim=1)  # (B, k + 1)
        with _Clock(self.stats.seconds, "rollback"):
            self.rollback.before_verify(self.model, self.cache)
        with _Clock(self.stats.seconds, "verify"):
            hidden, for_head = self._trunk(tokens)  # (B, k + 1, H) each
            logits = self.model.lm_head(hidden)  # (B, k + 1, V): row i follows token i
            accepted, following = self._accept(drafts, q, logits)
        self.last_round = Round(tokens, logits.argmax(-1), accepted, following)
        keep = accepted + 1  # the pending token and the accepted drafts stay cached
        with _Clock(self.stats.seconds, "rollback"):
            truncate_attention(self.cache, start, keep)
            self.rollback.after_verify(self.model, self.cache, keep)
            if self.mtp_cache.length > start:  # slots that read the head's own h
                self.mtp_cache.crop(start)
        self.stats.record(active, k, accepted)
        longest = int(keep.max())
        # the token after each verified slot: the next draft, or the trunk's own token
        next_ids = torch.cat([drafts, following[:, None]], dim=1)  # (B, k + 1)
        next_ids[torch.arange(B), accepted] = following
        pairs = self._pair_tokens(tokens[:, :longest], next_ids[:, :longest])
        self.unread = _Unread(pairs, for_head[:, :longest], accepted)
        self._emit(next_ids, keep)
        self.pending = following
        return accepted

    def output(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The prompt and the emitted tokens ``(B, T + new)``, laid out as :func:`qwen3next.generate` does:
        rows that finished early are filled with the first end token."""
        width = max(len(e) for e in self.emitted)  # max_new_tokens unless every row has finished before
        pad = int(self.eos[0]) if self.eos is not None else 0
        new = torch.full((len(self.emitted), width), pad, dtype=input_ids.dtype, device=input_ids.device)
        for b, e in enumerate(self.emitted):
            new[b, : len(e)] = torch.tensor(e, dtype=input_ids.dtype)
        return torch.cat([input_ids, new], dim=1)


@torch.no_grad()
def speculative_generate(model, input_ids: torch.Tensor, max_new_tokens: int, num_draft_tokens: int = 2,
                         temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                         eos_token_id: int | Sequence[int] | None = None, rollback: str | Rollback = "replay",
                         attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, SpeculativeStats]:
    """Continue ``input_ids (B, T)`` by up to ``max_new_tokens`` tokens, drafting ``num_draft_tokens`` per
    trunk forward with ``model.mtp``. Returns ``(ids (B, T + new), stats)``.

    Greedy (``temperature == 0``) gives the tokens of :func:`qwen3next.generate`; sampling gives its
    distribution (the rejection rule), not its random stream. ``rollback``: ``"replay"`` or
    ``"checkpoints"`` (:mod:`qwen3next.rollback`). Left-padded batches pass ``attention_mask``.
    """
    if max_new_tokens == 0:
        _check_inputs(input_ids, attention_mask, 0, temperature, top_k, top_p, 0.0, seed, eos_token_id, None)
        return input_ids.clone(), SpeculativeStats(num_draft_tokens)
    decoder = SpeculativeDecoder(model, input_ids, max_new_tokens, num_draft_tokens, temperature, top_k, top_p,
                                 seed, eos_token_id, rollback, attention_mask)
    while not decoder.done:
        decoder.step()
    return decoder.output(input_ids), decoder.stats


# ------------------------------------------------------------------------------ why drafting pays
def weight_bytes_read(config, tokens: int, bytes_per_param: int = 2) -> float:
    """Expected bytes of weights one trunk forward over ``tokens`` new tokens reads (batch of one).

    Everything but the routed experts is read once whatever ``tokens`` is; of the ``E`` routed experts of
    a layer, ``tokens`` tokens choosing ``k`` each hit ``E (1 - (1 - k/E)^tokens)`` on average (tokens
    routed independently and uniformly; real routing repeats experts more, so this is the pessimistic case).
    The embedding counts one row per token; caches are left out (their bytes grow with the context).
    """
    from .accounting import moe_params, parameter_counts

    counts, moe = parameter_counts(config), moe_params(config)
    E, k = config.num_experts, config.num_experts_per_tok
    layers = sum(config.is_moe_layer(i) for i in range(config.num_hidden_layers))
    once = counts.active_with_lm_head - layers * moe.active_routed + tokens * config.hidden_size
    hit = E * (1 - (1 - k / E) ** tokens) if E else 0.0
    return (once + layers * hit * moe.routed / max(E, 1)) * bytes_per_param


def head_bytes_read(config, bytes_per_param: int = 2) -> float:
    """Bytes of weights one draft step of the MTP head reads: ``fc``, one gated-attention layer with its
    sparse MoE (``k`` experts, the shared one, the router), three norms, and the trunk's ``lm_head``."""
    from .accounting import attention_mixer_params, moe_params

    H = config.hidden_size
    moe = moe_params(config)
    params = 2 * H * H + attention_mixer_params(config) + moe.active + 5 * H + config.vocab_size * H + H
    return params * bytes_per_param


# ------------------------------------------------------------------------------------- controls
# Three wrong wirings of the head: they run without an error and keep the output exact, only the
# acceptance shows them (the engines' wiring is the class above). On the book's trained model the swapped
# inputs and the unshifted token collapse it; the pre-norm hidden state cannot, because the head
# normalises what it reads and the final norm's gain is nearly uniform (chapter 11).
class PreNormHidden(SpeculativeDecoder):
    """Control: the head reads the trunk's last hidden state *before* the final norm."""

    def _trunk(self, tokens, attention_mask=None):
        seen = {}  # the final norm's input, caught on its way in
        hook = self.model.model.norm.register_forward_pre_hook(lambda module, args: seen.update(x=args[0]))
        try:
            hidden = self.model.model(tokens, attention_mask=attention_mask, cache=self.cache)[0]
        finally:
            hook.remove()
        return hidden, seen["x"]


class SwappedConcat(SpeculativeDecoder):
    """Control: ``fc`` reads ``[h, e]`` instead of ``[e, h]`` (the same as swapping its weight's halves)."""

    def __init__(self, model, *args, **kwargs):
        head = copy.deepcopy(model.mtp)
        with torch.no_grad():
            head.fc.weight.copy_(head.fc.weight.roll(head.fc.weight.shape[1] // 2, dims=1))
        self._swapped = SimpleNamespace(mtp=head, model=model.model, lm_head=model.lm_head)
        super().__init__(model, *args, **kwargs)

    def _head(self, next_ids, hidden, position_ids, attention_mask):
        return mtp_forward(self._swapped, next_ids, hidden, position_ids=position_ids, cache=self.mtp_cache,
                           attention_mask=attention_mask)


class UnshiftedTokens(SpeculativeDecoder):
    """Control: the head reads ``(x_t, h_t)``, the token of the same position, instead of ``(x_{t+1}, h_t)``."""

    def _pair_tokens(self, tokens, next_tokens):
        return tokens
