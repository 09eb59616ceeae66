"""Pre-tokenization: the split pattern that cuts text into words before BPE, classified like the reference.

Qwen2 / Qwen3 split text with one regular expression (the ``Split`` step of ``tokenizer.json``) before
byte-level BPE sees it, so merges never cross a word, digit or punctuation boundary. The Rust reference
runs it with Oniguruma, whose Unicode tables are older than those of Python's ``regex`` package;
:func:`reference_regex` compiles a pattern so that every code point is classified as the reference does.
Chapter 02.
"""

from __future__ import annotations

import regex

# The Qwen2/Qwen3 pre-tokenizer split pattern, exactly as in tokenizer.json (the book's reference page,
# "The tokenizer"). Unlike GPT-2's, digits are split one by one (\p{N}) and a letter run may take one
# leading non-letter.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
# GPT-2's pattern, used by ByteLevel(use_regex=True) pre-tokenizers.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# The pieces of QWEN_PATTERN, in order, with what each one is for (the chapter walks through them).
QWEN_PATTERN_PARTS = [
    (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)", "English contractions, any case"),
    (r"[^\r\n\p{L}\p{N}]?\p{L}+", "a run of letters, with at most one leading space or symbol"),
    (r"\p{N}", "one digit (numbers are split digit by digit)"),
    (r" ?[^\s\p{L}\p{N}]+[\r\n]*", "a run of punctuation/symbols, optional leading space, trailing newlines"),
    (r"\s*[\r\n]+", "whitespace ending in newlines"),
    (r"\s+(?!\S)", "spaces not followed by a word (the last space stays with the next word)"),
    (r"\s+", "any remaining whitespace"),
]


# Unicode versions. The Rust reference matches its regex with Oniguruma, whose tables (tokenizers 0.23)
# stop at Unicode 16.0; the `regex` package here knows newer versions. Letters and digits assigned after
# Unicode 16.0 are therefore *not* \p{L} / \p{N} for the reference, and we take them out of those classes
# so that every code point is split the same way. The ranges were measured by running both engines over
# all code points (an older `regex` that lacks some of them simply makes the subtraction a no-op).
LETTERS_AFTER_UNICODE_16 = (
    "558 58B-58C 88F C5C CDC 208F 209D-209F A7CE-A7CF A7D2 A7D4 A7DD A7E2 A7F1 AB6C-AB6D 107BB-107BF "
    "10940-10959 10EC5-10EC7 10ED9-10EEE 11B0A 11DB0-11DDB 11DF1 16EA0-16EB8 16EBB-16ED3 16FF2-16FF3 "
    "187F8-187FF 18CD6-18CDA 18D09-18D20 18D80-18DF2 18E00-19191 191A0-191D2 1B123-1B128 1B168 1D6A6 "
    "1DF1F-1DF24 1DF2B-1DF81 1DF90-1DF96 1DFCD-1DFFF 1E6C0-1E6DE 1E6E0-1E6E2 1E6E4-1E6E5 1E6E7-1E6ED "
    "1E6F0-1E6F4 1E6FE-1E6FF 2B73A-2B73F 2B81E 2CEA2-2CEAD 323B0-33479 3D000-3FC3F"
)
DIGITS_AFTER_UNICODE_16 = "11DE0-11DE9 1246F 12475-1247F 12550-12686 16FF4-16FF6"


def _class_of_ranges(ranges: str) -> str:
    def one(r: str) -> str:
        a, _, b = r.partition("-")
        return f"\\U{int(a, 16):08X}" + (f"-\\U{int(b, 16):08X}" if b else "")

    return "[" + "".join(one(r) for r in ranges.split()) + "]"


def reference_regex(pattern: str):
    r"""Compile a split pattern so that it classifies every code point like the reference engine.

    ``\p{L}`` and ``\p{N}`` lose the letters and digits added after Unicode 16.0 (set difference needs the
    regex module's VERSION1 syntax; full case folding, a VERSION1 default, is switched off again so that
    ``(?i:'s)`` folds exactly as before).
    """
    letters = "[\\p{L}--" + _class_of_ranges(LETTERS_AFTER_UNICODE_16) + "]"
    digits = "[\\p{N}--" + _class_of_ranges(DIGITS_AFTER_UNICODE_16) + "]"
    return regex.compile("(?V1-f)" + pattern.replace("\\p{L}", letters).replace("\\p{N}", digits))


def _chars_of_ranges(ranges: str) -> frozenset[str]:
    out = set()
    for r in ranges.split():
        a, _, b = r.partition("-")
        out.update(chr(c) for c in range(int(a, 16), int(b or a, 16) + 1))
    return frozenset(out)


# a set, not a regex: ``isdisjoint(text)`` scans a megabyte in milliseconds
_NEWER_THAN_UNICODE_16 = _chars_of_ranges(LETTERS_AFTER_UNICODE_16 + " " + DIGITS_AFTER_UNICODE_16)
