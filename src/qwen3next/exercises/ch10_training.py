"""Checks for the exercises of chapter 10, "Training a small Qwen3-Next"."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..train import balance_loss, learning_rate
from . import UNANSWERED, check_close, report


def _call(fn, *args):
    """``fn(*args)``, or the exception it raised (reported as a hint, never re-raised)."""
    try:
        return fn(*args), None
    except Exception as err:  # a student's function may fail in any way
        return None, f"your function raised {type(err).__name__}: {err}"


def check_inverse_softplus(fn) -> bool:
    """``fn(dt) -> dt_bias`` with ``softplus(dt_bias) == dt`` for every ``dt > 0`` (tensor in, tensor out)."""
    if fn is Ellipsis:
        return report(False, f"{UNANSWERED} softplus(x) = log(1 + e^x); solve softplus(x) = dt for x.")
    dt = torch.logspace(-4, 1, 50, dtype=torch.float64)
    out, err = _call(fn, dt)
    if err:
        return report(False, err)
    if not isinstance(out, torch.Tensor) or out.shape != dt.shape:
        return report(False, f"expected a tensor of shape {tuple(dt.shape)} back")
    if out.dtype != dt.dtype:
        return report(False, f"expected {dt.dtype} back (the dtype of dt), got {out.dtype}")
    ok = torch.allclose(F.softplus(out), dt, rtol=1e-9, atol=0)
    return report(bool(ok), "x = log(e^dt - 1); for small dt write it as dt + log(1 - e^-dt) "
                  "(torch.expm1) so it stays accurate.")


def exercise_router_logits() -> torch.Tensor:
    """Router logits of exercise 10.2: 4 sequences of 12 tokens (rows sequence by sequence), 8 experts."""
    gen = torch.Generator().manual_seed(102)
    topic = torch.randn(4, 1, 8, generator=gen) * 3  # each sequence prefers its own experts
    return (topic + torch.randn(4, 12, 8, generator=gen)).reshape(48, 8)


def check_micro_batch_balance(fn) -> bool:
    """``fn(router_logits (N, E), top_k, micro_batches) -> scalar``: the balance loss of each micro-batch
    of consecutive rows, averaged (one layer)."""
    if fn is Ellipsis:
        return report(False, f"{UNANSWERED} split the rows into equal groups, compute E sum_e f_e P_e in each.")
    logits = exercise_router_logits()
    for m in (1, 2, 4):
        out, err = _call(fn, logits, 2, m)
        if err:
            return report(False, err)
        expected = balance_loss([logits], 8, 2, micro_batches=m)
        try:
            ok = math.isclose(float(out), float(expected), rel_tol=1e-5)
        except (TypeError, ValueError):
            return report(False, f"expected a number (or a 0-d tensor), got {type(out).__name__}")
        if not ok:
            return report(False, f"with micro_batches={m}: expected {float(expected):.4f}, got {float(out):.4f}. "
                          "f_e counts the share of a micro-batch's tokens with e in their top 2; P_e is the "
                          "micro-batch's mean softmax probability of e.")
    return report(True, "")


def check_warmup_fraction(answer: float) -> bool:
    """Learning rate at step 25 of a 1000-step run, peak 3e-3, 50 warm-up steps, as a fraction of the peak."""
    expected = learning_rate(25, 1000, 3e-3, 50) / 3e-3
    return check_close(answer, expected, "during warm-up the rate grows linearly: step s gets (s + 1) / 50 of "
                       "the peak.", rel=1e-6)


def check_nats_per_token(answer: float) -> bool:
    """Exercise 10.3: the per-token floor of 2,000 stories (seed 7) for a tokenizer averaging 2.5
    characters per token, from their per-character floor."""
    from ..stories import entropy_floor, generate_stories

    expected = entropy_floor(generate_stories(2000, seed=7)).nats_per_char * 2.5
    return check_close(answer, expected, "the information of a text does not depend on how it is cut: "
                       "nats per token = nats per character x characters per token.", rel=1e-6)
