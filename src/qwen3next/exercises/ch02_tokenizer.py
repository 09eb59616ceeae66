"""Checks for the exercises of chapter 02, "The tokenizer: from bytes to chat templates"."""

from __future__ import annotations

import functools

from ..config import Qwen3NextConfig
from ..tokenizer import Tokenizer, bytes_to_unicode
from . import check_equal

# The inputs the exercises name (the notebook imports them, so text and check cannot drift apart).
EXERCISE_TEXT = "Tokenizers don't see letters: they see 12 bytes of 'naïve 東京' and 🤖."
EXERCISE_WORD = " unbelievable"


@functools.lru_cache(maxsize=1)
def _tok() -> Tokenizer:
    return Tokenizer.qwen3()


def check_count_tokens(answer: int) -> bool:
    """How many Qwen3 tokens ``EXERCISE_TEXT`` becomes."""
    expected = len(_tok().encode(EXERCISE_TEXT))
    return check_equal(answer, expected, "encode the text with Tokenizer.qwen3() and count the ids; digits are "
                       "one token each and the emoji is several byte tokens.")


def check_first_merge(answer: tuple[str, str]) -> bool:
    """The first pair BPE merges in ``EXERCISE_WORD`` (as byte-level symbols, e.g. ('Ġ', 'u'))."""
    expected = _tok().merge_steps(EXERCISE_WORD)[1][1]
    answer = tuple(answer) if isinstance(answer, (list, tuple)) else answer
    return check_equal(answer, expected, "split the word into byte-level symbols (a space is 'Ġ'), look up the "
                       "rank of every adjacent pair in tok.ranks and take the lowest.")


def check_gap(answer: int) -> bool:
    """How many rows of the embedding matrix belong to no token."""
    expected = Qwen3NextConfig.full().vocab_size - len(_tok())
    return check_equal(answer, expected, "compare the config's vocab_size (embedding rows) with len(tokenizer).")


def check_byte_of_space(answer: str) -> bool:
    """The printable character the byte-level table uses for the space byte 0x20."""
    return check_equal(answer, bytes_to_unicode()[0x20], "look up byte 0x20 in bytes_to_unicode(); the space "
                       "itself is not used because it would be invisible inside a token.")
