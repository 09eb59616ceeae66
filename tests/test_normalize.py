"""NFC exactly as the reference (the ``tokenizers`` crate) computes it: every code point, every mark pair."""

from __future__ import annotations

import unicodedata

import pytest
from nfc_tables import CODE_POINTS, SEP, as_ranges, measure, reference_nfc

from qwen3next.normalize import NFC_SPLIT_POINTS, _code_points, nfc


def _compare(strings: list[str]) -> list[tuple[str, str, str]]:
    """Normalise all strings in one text (``SEP`` is a boundary for both), return the ones that differ."""
    text = SEP.join(strings)
    ours, ref = nfc(text).split(SEP), reference_nfc()(text).split(SEP)
    assert len(ours) == len(ref) == len(strings)
    return [(s, o, r) for s, o, r in zip(strings, ours, ref, strict=True) if o != r]


def _show(diff: list[tuple[str, str, str]]) -> str:
    def hexes(s: str) -> str:
        return " ".join(f"U+{ord(c):04X}" for c in s)

    return f"{len(diff)} differ, e.g. " + "; ".join(f"[{hexes(s)}] ours [{hexes(o)}] ref [{hexes(r)}]"
                                                   for s, o, r in diff[:5])


@pytest.mark.slow
def test_the_committed_table_is_what_the_reference_measures():
    """tests/nfc_tables.py measures both sides again: the table in the module must be exactly its result."""
    measured = measure()
    assert as_ranges(measured) == as_ranges(_code_points(NFC_SPLIT_POINTS))
    assert len(measured) == 100


def test_every_code_point_alone_after_a_letter_and_between_marks():
    """Every code point of planes 0-3 and 14 (where every assigned character lives; the other planes are
    unassigned or private use, plain starters on both sides): alone; between a letter and an acute (does
    it block the composition?); between marks of classes 230 and 220 (is it reordered across?)."""
    strings = []
    for c in CODE_POINTS:
        if 0x40000 <= c < 0xE0000 or c >= 0xE1000:
            continue
        x = chr(c)
        strings += [x, "a" + x + "\u0301", "\u0301" + x + "\u0316", "\u0316" + x + "\u0301"]
    diff = _compare(strings)
    assert not diff, _show(diff)


def _marks() -> list[str]:
    """Every combining mark of either table: Python's non-zero classes and the reference's split points."""
    marks = {chr(c) for c in CODE_POINTS if unicodedata.combining(chr(c))}
    return sorted(marks | {chr(c) for c in _code_points(NFC_SPLIT_POINTS)})


def _composing_base() -> dict[str, str]:
    """For each mark that composes with something, one starter it composes with (e.g. U+0301 -> 'A')."""
    base: dict[str, str] = {}
    for c in CODE_POINTS:
        d = unicodedata.decomposition(chr(c)).split()
        if len(d) == 2 and not d[0].startswith("<"):
            first, second = chr(int(d[0], 16)), chr(int(d[1], 16))
            if unicodedata.normalize("NFC", first + second) == chr(c) and not unicodedata.combining(first):
                base.setdefault(second, first)
    return base


def test_every_combining_mark_next_to_every_other_mark():
    """Canonical reordering and blocking: every ordered pair of marks, bare, and after a starter that
    composes with the first or with the second mark (so the other one may block it)."""
    marks, base = _marks(), _composing_base()
    strings = []
    for m1 in marks:
        b1 = base.get(m1, "a")
        for m2 in marks:
            strings += [m1 + m2, b1 + m1 + m2, base.get(m2, "a") + m1 + m2]
    assert len(strings) > 2_000_000
    diff = _compare(strings)
    assert not diff, _show(diff)


def test_marks_the_reference_does_not_know():
    ref = reference_nfc()
    # U+07FD is a starter for the reference: the acute is neither moved after it nor composed through it
    for text in ["q\u0301\u07fd", "a\u07fd\u0301", "e\u1ac1\u0301", "a\u08d3\u0301\u0316", "x\U00010f46\u0323",
                 "o\u1dfa\u0301", "\U00011935\U00011930", "\U00011938", "\U00011935\u0301\U00011930"]:
        assert nfc(text) == ref(text), [hex(ord(c)) for c in text]
    assert nfc("a\u07fd\u0301") == "a\u07fd\u0301" != unicodedata.normalize("NFC", "a\u07fd\u0301")
