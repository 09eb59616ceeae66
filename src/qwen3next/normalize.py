"""Unicode normalisation before tokenization: NFC, exactly as the reference's tables apply it.

The Qwen3 ``tokenizer.json`` normalises every text to NFC (canonical composition) before splitting it, so
``"e\u0301"`` and ``"\u00e9"`` encode alike. NFC decomposes every character, sorts each run of combining
marks by canonical combining class (a mark of class 0 is a *starter* and ends the run), then recomposes
each starter with the marks after it that no mark of the same or a higher class blocks.

The reference (the Rust ``tokenizers`` crate) runs NFC with Unicode tables of its own, older than the ones
Python's ``unicodedata`` carries. Measured over every code point (``tests/nfc_tables.py``, which probes
both sides with text and prints the table below), the two disagree on exactly 100 code points:

* 98 combining marks added to Unicode after the reference's tables (U+07FD NKO DANTAYALAN, U+08D3, the
  Latin marks U+1AC1-U+1ACE and U+1DF6-U+1DFA, Sogdian U+10F46-U+10F50, ...). Python gives them a
  combining class, so they are reordered among other marks and let a later mark compose across them;
  for the reference they are starters (class 0), which stop both.
* U+11938 DIVES AKURU VOWEL SIGN O, canonically U+11935 U+11930 for Python and no composite at all for
  the reference, and U+11930, the second half of that pair, which the reference never composes.

For the reference every one of these is a plain starter: class 0, no decomposition, in no composition.
NFC never reorders across such a character and never composes through it, so normalising the text between
them and keeping them as they are is the reference's NFC exactly (the generator asserts these facts).
Text without any of them, nearly all text, is one call to ``unicodedata.normalize``. Chapter 02.
"""

from __future__ import annotations

import unicodedata

import regex

# The code points where the reference's NFC behaves like a plain starter and Python's does not (hex ranges),
# printed by tests/nfc_tables.py (tokenizers 0.23.3 against Python's Unicode 14.0.0).
NFC_SPLIT_POINTS = (
    "7FD 898-89F 8CA-8D3 9FE C3C D3B-D3C EBA 1715 1ABF-1ACE 1DF6-1DFA A82C 10D24-10D27 10EAB-10EAC "
    "10F46-10F50 10F82-10F85 11070 1133B 1145E 11839-1183A 11930 11938 1193D-1193E 11943 119E0 11A34 "
    "11A47 11A99 11D42 11D44-11D45 11D97 16FF0-16FF1 1E130-1E136 1E2AE 1E2EC-1E2EF "
)


def _code_points(ranges: str) -> list[int]:
    out = []
    for r in ranges.split():
        a, _, b = r.partition("-")
        out.extend(range(int(a, 16), int(b or a, 16) + 1))
    return out


_SPLIT_CHARS = frozenset(map(chr, _code_points(NFC_SPLIT_POINTS)))  # ``isdisjoint`` scans a megabyte in ms
_SPLIT = regex.compile("([" + "".join(sorted(_SPLIT_CHARS)) + "])")  # the capture group keeps the split points


def nfc(text: str) -> str:
    """NFC normalisation exactly as the reference applies it (see the module docstring)."""
    if _SPLIT_CHARS.isdisjoint(text):
        return unicodedata.normalize("NFC", text)
    parts = _SPLIT.split(text)  # piece, split point, piece, ...: the split points stay as they are
    return "".join(p if i % 2 else unicodedata.normalize("NFC", p) for i, p in enumerate(parts))
