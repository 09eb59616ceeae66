"""Text generation: greedy decoding and sampling on top of the hybrid cache.

Implements the decoding loop of an autoregressive language model: one prefill pass over the prompt,
then one cached forward pass per new token. Sampling follows the usual recipe (Holtzman et al., "The
Curious Case of Neural Text Degeneration", 2020, for top-p; Nguyen et al., "Turning Up the Heat: Min-p
Sampling", 2024, for min-p). It mirrors what ``transformers``' ``GenerationMixin.generate`` does for
``Qwen3NextForCausalLM`` with ``do_sample`` on or off: the same filter order (temperature, top-k, top-p,
min-p), the same handling of finished rows (they are filled with the pad id, the loop stops once every
row has produced an end-of-sequence token), and, for left-padded batches, the same positions (a
row's first real token is position 0).

Leaves out: beam search, repetition penalties, stop strings, speculative decoding (the checkpoint's MTP
head is not built here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch

from .linear import check_cpu_kernels, use_cpu_kernels


# ------------------------------------------------------------------------------------ filtering
def filter_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
) -> torch.Tensor:
    """Apply temperature, top-k, top-p and min-p to ``logits (B, V)``; removed tokens get ``-inf``.

    The order is the reference's: temperature first (it changes the probabilities that top-p and
    min-p look at), then top-k, top-p, min-p. Every filter keeps at least the most likely token.
    """
    logits = logits.float()
    if temperature != 1.0:
        scaled = logits / temperature
        if bool(torch.isinf(scaled).any()) and not bool(torch.isinf(logits).any()):
            raise ValueError(f"temperature: {temperature!r} is so small that logits / temperature overflow "
                             f"float32; use temperature=0 for greedy decoding")
        logits = scaled
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        # keep the smallest set of most likely tokens whose total probability reaches top_p: sort from the
        # least likely up and drop while the mass so far stays <= 1 - top_p. The reference's own steps (an
        # ascending sort), so that among tied logits the very same tokens are kept
        sorted_logits, order = torch.sort(logits, dim=-1, descending=False)  # (B, V)
        mass_up_to = sorted_logits.softmax(-1).cumsum(-1)  # probability of this token and all less likely
        drop_sorted = mass_up_to <= 1 - top_p
        drop_sorted[..., -1] = False  # the most likely token always stays
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if min_p > 0.0:
        # drop tokens less than min_p times as likely as the best one: a threshold that adapts to confidence
        probs = logits.softmax(-1)
        threshold = min_p * probs.max(-1, keepdim=True).values  # (B, 1)
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits


def next_token(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from ``logits (B, V)``: arg-max when ``temperature == 0``, else a sample."""
    if temperature == 0.0:
        return logits.argmax(-1)  # (B,)
    probs = filter_logits(logits, temperature, top_k, top_p, min_p).softmax(-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


# ---------------------------------------------------------------------------------- checking
def _check_inputs(input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, min_p, seed,
                  eos_token_id, pad_token_id, cpu_kernels="onednn") -> None:
    """Every argument of :func:`stream` / :func:`generate`: a TypeError for the wrong type, a ValueError
    for a value out of range, each starting with the argument's name."""
    _check_integer("max_new_tokens", max_new_tokens, 0, "a number of tokens >= 0")
    _check_number("temperature", temperature, lambda t: t >= 0, ">= 0 (0 is greedy)")
    _check_integer("top_k", top_k, 0, ">= 0 (0 turns it off)")
    _check_number("top_p", top_p, lambda p: 0 < p <= 1, "in (0, 1] (1 turns it off)")
    _check_number("min_p", min_p, lambda p: 0 <= p <= 1, "in [0, 1] (0 turns it off)")
    if seed is not None:
        _check_integer("seed", seed, 0, "in 0 .. 2**64 - 1", high=2**64 - 1)
    if eos_token_id is not None:
        for i in [eos_token_id] if isinstance(eos_token_id, int) else _as_list("eos_token_id", eos_token_id):
            _check_integer("eos_token_id", i, 0, "token ids >= 0")
    if pad_token_id is not None:
        _check_integer("pad_token_id", pad_token_id, 0, "a token id >= 0")
    check_cpu_kernels(cpu_kernels)
    _check_prompt(input_ids, attention_mask)


def _check_integer(name: str, value, low: int, expected: str, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an integer {expected}, found {value!r} ({type(value).__name__})")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name}: expected {expected}, found {value!r}")


def _check_number(name: str, value, in_range, expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number {expected}, found {value!r} ({type(value).__name__})")
    if not (math.isfinite(value) and in_range(value)):
        raise ValueError(f"{name}: expected a finite number {expected}, found {value!r}")


def _as_list(name: str, value) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise TypeError(f"{name}: expected an int or a non-empty list of ints, found {value!r}")
    return list(value)


def _eos_ids(eos_token_id, device) -> torch.Tensor | None:
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return torch.tensor(ids, device=device)


def _check_prompt(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype != torch.long:
        found = f"a {input_ids.dtype} tensor" if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise TypeError(f"input_ids: expected a LongTensor of shape (B, T) (torch.tensor([[...]])), found {found}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected a LongTensor of shape (B, T), found shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids: the prompt is empty (T = 0); give at least one token")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask: expected a tensor (B, T) of 1 and 0, "
                            f"found {type(attention_mask).__name__}")
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"attention_mask: expected shape {tuple(input_ids.shape)} (like input_ids), "
                f"found {tuple(attention_mask.shape)}"
            )
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask: expected only 1 (real token) and 0 (padding)")
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("attention_mask: padding must be on the left (every row's last token must be real)")


# ----------------------------------------------------------------------------------- the loop
@torch.no_grad()
def stream(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    eos_token_id: int | Sequence[int] | None = None,
    seed: int | None = None,
    attention_mask: torch.Tensor | None = None,
    pad_token_id: int | None = None,
    cpu_kernels: str = "onednn",
) -> Iterator[torch.Tensor]:
    """Yield the new tokens one step at a time, each a ``(B,)`` LongTensor.

    Rows that have finished (produced an end-of-sequence token) yield ``pad_token_id`` (by default the
    first end-of-sequence id, as the reference does); the iterator stops when every row has finished or
    after ``max_new_tokens`` steps. ``cpu_kernels="native"`` runs each decoding step (not the prefill)
    on PyTorch's own CPU kernels instead of oneDNN's (:func:`qwen3next.linear.use_cpu_kernels`): faster
    for a bfloat16 model on some CPUs, a process-wide switch while a step runs.
    """
    _check_inputs(input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, min_p, seed,
                  eos_token_id, pad_token_id, cpu_kernels)
    device = input_ids.device
    eos = _eos_ids(eos_token_id, device)
    if pad_token_id is None and eos is not None:
        pad_token_id = int(eos[0])
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)

    B = input_ids.shape[0]
    cache = model.new_cache(B)
    # prefill: the whole prompt at once; only the last position's logits are needed
    out = model(input_ids, attention_mask=attention_mask, cache=cache, logits_to_keep=1)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        token = next_token(out.logits[:, -1], temperature, top_k, top_p, min_p,
                           generator)  # (B,)
        if eos is not None:
            token = token.masked_fill(finished, pad_token_id)
            finished = finished | torch.isin(token, eos)
        yield token
        if bool(finished.all()) or step == max_new_tokens - 1:
            return
        # decode: one token per row; the cache extends its padding mask with a 1 by
        # itself
        with use_cpu_kernels(cpu_kernels):
            out = model(token[:, None], cache=cache, logits_to_keep=1)


def generate(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    eos_token_id: int | Sequence[int] | None = None,
    seed: int | None = None,
    attention_mask: torch.Tensor | None = None,
    streamer: Callable[[torch.Tensor], object] | None = None,
    pad_token_id: int | None = None,
    cpu_kernels: str = "onednn",
) -> torch.Tensor:
    """Continue ``input_ids (B, T)`` by up to ``max_new_tokens`` tokens; returns ``(B, T + new)``.

    ``temperature == 0`` is greedy decoding (``top_k``/``top_p``/``min_p`` are then ignored, as in
    the reference with ``do_sample=False``). ``seed`` makes sampling reproducible through a private
    ``torch.Generator`` (the global RNG is left alone). Prompts of different lengths go in one batch
    left-padded, with ``attention_mask (B, T)`` marking real tokens with 1. ``streamer`` is called
    with each step's ``(B,)`` new tokens as soon as they exist (an object with ``put``/``end``
    methods, like ``transformers``' streamers, works too). ``cpu_kernels``: see :func:`stream`.
    """
    put, end = _streamer_methods(streamer)
    new_tokens = []
    for token in stream(
        model, input_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        eos_token_id=eos_token_id, seed=seed, attention_mask=attention_mask, pad_token_id=pad_token_id,
        cpu_kernels=cpu_kernels,
    ):
        new_tokens.append(token)
        if put is not None:
            put(token)
    if end is not None:
        end()
    if not new_tokens:
        return input_ids.clone()
    return torch.cat([input_ids, torch.stack(new_tokens, dim=1)], dim=1)  # (B, T + new)


def _streamer_methods(streamer):
    if streamer is None:
        return None, None
    if hasattr(streamer, "put"):
        return streamer.put, getattr(streamer, "end", None)
    if callable(streamer):
        return streamer, None
    raise TypeError(f"streamer: expected a callable or an object with put()/end(), found {type(streamer).__name__}")

