"""Checks for the exercises of chapter 02, "The tokenizer: from bytes to chat templates"."""

from __future__ import annotations

import functools

from ..bpe import to_byte_symbols
from ..config import Qwen3NextConfig
from ..tokenizer import Tokenizer
from . import check_equal, check_function, report

# The inputs the exercises name (the notebook imports them, so text and check cannot drift apart).
EXERCISE_TEXT = "Tokenizers don't see letters: they see 13 bytes of 'naïve 東京' and 🤖."
# words a merge step is tried on: repeated pairs (" banana", "Mississippi"), long merges, CJK, an emoji
MERGE_WORDS = [" unbelievable", " banana", "Mississippi", " tokenization", "東京都", " 🤖", "aaaa"]


@functools.lru_cache(maxsize=1)
def _tok() -> Tokenizer:
    return Tokenizer.qwen3()


def _trace(fn, word: str, ranks) -> list[list[str]]:
    """The symbols after each step when ``fn`` is applied until it changes nothing (at most len steps)."""
    symbols = list(to_byte_symbols(word))
    steps = [symbols]
    for _ in range(len(symbols)):
        new = fn(list(symbols), ranks)
        if list(new) == symbols:
            break
        symbols = list(new)
        steps.append(symbols)
    return steps


def check_merge_step(fn) -> bool:
    """A function ``fn(symbols, ranks) -> symbols`` doing one BPE step: merge every occurrence of the
    lowest-rank adjacent pair, left to right (and change nothing when no pair has a rank)."""
    if fn is Ellipsis or not callable(fn):
        return check_function(fn, [], _MERGE_HINT)
    ranks = _tok().ranks
    for k, word in enumerate(MERGE_WORDS, 1):
        expected = [symbols for symbols, _pair in _tok().merge_steps(word)]
        try:
            got = _trace(fn, word, ranks)
        except Exception as err:  # the reader's code
            return report(False, f"on word {k} ({word!r}) your function raised {type(err).__name__}: {err}. "
                          f"{_MERGE_HINT}")
        if got != expected:
            n = next(i for i in range(max(len(got), len(expected))) if got[i:i + 1] != expected[i:i + 1])
            want = expected[n] if n < len(expected) else "no change"
            found = got[n] if n < len(got) else "no change"
            return report(False, f"word {word!r}, step {n}: expected {want}, got {found}. {_MERGE_HINT}")
    print(f"Correct! All {len(MERGE_WORDS)} words merge step by step like the package's BPE.")
    return True


_MERGE_HINT = ("find the adjacent pair with the lowest rank in ranks (pairs missing from ranks never merge), "
               "then walk the symbols left to right joining every occurrence of that pair.")


def check_count_tokens(answer: int) -> bool:
    """How many Qwen3 tokens ``EXERCISE_TEXT`` becomes."""
    expected = len(_tok().encode(EXERCISE_TEXT))
    return check_equal(answer, expected, "encode the text with Tokenizer.qwen3() and count the ids; digits are "
                       "one token each and the emoji is several byte tokens.")


def check_gap(answer: int) -> bool:
    """How many rows of the embedding matrix belong to no token."""
    expected = Qwen3NextConfig.full().vocab_size - len(_tok())
    return check_equal(answer, expected, "compare the config's vocab_size (embedding rows) with len(tokenizer).")
