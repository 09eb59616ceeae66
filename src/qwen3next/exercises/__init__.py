"""Checks for the book's exercises: ``check_...(answer)`` gives a friendly pass or a hint.

One module per chapter (``ch01_overview``, ``ch02_tokenizer``, ...), each defining ``check_<name>``
functions built on :func:`report`: a value (:func:`check_equal`, :func:`check_close`,
:func:`check_tensor_close`) or, for an "implement it" exercise, a function the reader wrote, run on
several inputs against the package (:func:`check_function`). Every check returns ``True`` or ``False``
and prints one line, so a student sees at once whether an answer is right, and a solution cell can ``assert`` it.

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


def _same(got, expected, atol: float) -> bool:
    import torch

    if isinstance(expected, torch.Tensor):
        return (isinstance(got, torch.Tensor) and tuple(got.shape) == tuple(expected.shape)
                and bool((got.float() - expected.float()).abs().max() <= atol))
    return got == expected


def _short(value, limit: int = 60) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _difference(got, expected) -> str:
    import torch

    if isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor) and got.shape == expected.shape:
        return f"the values differ by up to {(got.float() - expected.float()).abs().max().item():.3g}"
    return f"expected {_short(expected)}, got {_short(got)}"


def check_function(fn, cases: list[tuple[tuple, Any]], hint: str, atol: float = 1e-5) -> bool:
    """A function the reader wrote, run on several inputs and compared with the package's answers.

    ``cases`` are ``(arguments, expected)`` pairs; tensors are compared by shape and within ``atol``,
    anything else by ``==``. The first input that differs (or raises) is named in the hint.
    """
    if fn is Ellipsis:
        return report(False, f"{UNANSWERED} {hint}")
    if not callable(fn):
        return report(False, f"expected a function, got {type(fn).__name__}. {hint}")
    for k, (args, expected) in enumerate(cases, 1):
        try:
            got = fn(*args)
        except Exception as err:  # the reader's code: say what went wrong, do not crash the notebook
            return report(False, f"on input {k} of {len(cases)} your function raised {type(err).__name__}: "
                          f"{err}. {hint}")
        if not _same(got, expected, atol):
            return report(False, f"input {k} of {len(cases)}: {_difference(got, expected)}. {hint}")
    print(f"{PASS} All {len(cases)} inputs give the package's answer.")
    return True
