"""Checks for the book's exercises: ``check_...(answer)`` gives a friendly pass or a hint.

One module per chapter (``ch01_overview``, ``ch02_tokenizer``, ...), each defining ``check_<name>``
functions built on :func:`report`. Every check returns ``True`` or ``False`` and prints one line, so a
student sees at once whether an answer is right, and a solution cell can ``assert`` it.

A student notebook (``make student``) starts each answer as ``answer = ...``: the checks below answer
that placeholder with a reminder and the hint, never with an exception.
"""

from __future__ import annotations

import math
from typing import Any

PASS = "Correct!"
UNANSWERED = "replace `...` with your answer and run the cell again."


def report(ok: bool, hint: str) -> bool:
    """Print a pass or a hint; return whether the answer passed."""
    print(PASS if ok else f"Not yet. Hint: {hint}")
    return bool(ok)


def check_equal(answer: Any, expected: Any, hint: str) -> bool:
    """Exact equality (ints, strings, lists, tuples)."""
    if answer is Ellipsis:
        return report(False, f"{UNANSWERED} {hint}")
    return report(answer == expected, hint)


def check_close(answer: float, expected: float, hint: str, rel: float = 1e-3, abs_: float = 0.0) -> bool:
    """A number within a relative (and optional absolute) tolerance."""
    if answer is Ellipsis:
        return report(False, f"{UNANSWERED} {hint}")
    try:
        ok = math.isclose(float(answer), float(expected), rel_tol=rel, abs_tol=abs_)
    except (TypeError, ValueError):
        return report(False, f"expected a number, got {type(answer).__name__}. {hint}")
    return report(ok, hint)


def check_tensor_close(answer, expected, hint: str, atol: float = 1e-5) -> bool:
    """A tensor of the expected shape, equal within ``atol``."""
    import torch

    if answer is Ellipsis:
        return report(False, f"{UNANSWERED} {hint}")
    if not isinstance(answer, torch.Tensor):
        return report(False, f"expected a torch.Tensor, got {type(answer).__name__}. {hint}")
    if tuple(answer.shape) != tuple(expected.shape):
        return report(False, f"expected shape {tuple(expected.shape)}, got {tuple(answer.shape)}. {hint}")
    return report(bool((answer.float() - expected.float()).abs().max() <= atol), hint)
