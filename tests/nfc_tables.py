"""Measure where Python's ``unicodedata`` NFC and the reference's NFC (the ``tokenizers`` crate) disagree.

Run it as a script to print the table ``qwen3next.normalize`` keeps (``python tests/nfc_tables.py``);
``tests/test_normalize.py`` runs :func:`measure` again and checks the committed table is still exact.

Both sides are only ever asked to normalise text, so the tables are measured, not copied:

1. every code point alone, through NFD: which decompositions differ;
2. every canonical decomposition recomposed (NFC of the NFD of every code point): which compositions differ;
3. the canonical combining class of every code point the reference reorders: each one is placed among
   one mark of every class (``x`` then ``r`` is swapped iff ``ccc(x) > ccc(r) > 0``), which pins its
   class exactly.

The result is the set of "split points": code points that the reference treats as plain starters (class 0,
no decomposition, in no composition) but Python does not. :func:`measure` also asserts that this is all
there is, i.e. that cutting the text at those code points and normalising every piece with Python is
exact; if a later ``tokenizers`` broke that assumption the generator would say so.
"""

from __future__ import annotations

import sys
import unicodedata

SEP = "\x00"  # a starter in no decomposition or composition: normalisation never crosses it
CODE_POINTS = [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]  # Rust strings hold no surrogates


def reference_nfc():
    from tokenizers.normalizers import NFC

    return NFC().normalize_str


def reference_nfd():
    from tokenizers.normalizers import NFD

    return NFD().normalize_str


def _class_probes(nfd) -> dict[int, str]:
    """One mark per combining class that the reference knows, chosen so that both sides agree on it."""
    by_class: dict[int, list[str]] = {}
    for c in CODE_POINTS:
        ch = chr(c)
        k = unicodedata.combining(ch)
        if k and unicodedata.normalize("NFD", ch) == ch:
            by_class.setdefault(k, []).append(ch)
    anchors = {1: "\u0334", 220: "\u0316", 230: "\u0301", 240: "\u0345"}  # Unicode 1.1 marks

    def agrees(k: int, ch: str) -> bool:
        return all(nfd(ch + r) == (ch + r if k <= a else r + ch) and nfd(r + ch) == (r + ch if a <= k else ch + r)
                   for a, r in anchors.items())

    probes = {}
    for k, chars in by_class.items():
        good = next((ch for ch in chars if agrees(k, ch)), None)
        if good is not None:  # else: a class the reference does not know (its marks are starters there)
            probes[k] = good
    return dict(sorted(probes.items()))


def reference_classes(nfd, ref_nfd: list[str]) -> dict[int, int]:
    """The reference's canonical combining class (non-zero only) of every code point it does not decompose."""
    probes = _class_probes(nfd)
    low, high = probes[min(probes)], probes[max(probes)]
    plain = [c for c, r in zip(CODE_POINTS, ref_nfd, strict=True) if r == chr(c)]
    # a non-starter is moved in front of the lowest class, or behind the highest one
    out = nfd(SEP.join(chr(c) + low + SEP + high + chr(c) for c in plain)).split(SEP)
    movers = [c for i, c in enumerate(plain) if out[2 * i] != chr(c) + low or out[2 * i + 1] != high + chr(c)]
    classes = {}
    for c in movers:
        x = chr(c)
        # exactly one class k leaves both orders alone: ccc(x) == k
        same = [k for k, r in probes.items() if nfd(x + r) == x + r and nfd(r + x) == r + x]
        assert len(same) == 1, f"U+{c:04X}: no single combining class fits ({same})"
        classes[c] = same[0]
    return classes


def measure() -> list[int]:
    """The code points where Python's NFC must be cut so that it gives the reference's result."""
    nfc, nfd = reference_nfc(), reference_nfd()
    py_nfd = [unicodedata.normalize("NFD", chr(c)) for c in CODE_POINTS]
    # 1. decompositions
    ref_nfd = nfd(SEP.join(chr(c) for c in CODE_POINTS)).split(SEP)
    decomposition_differs = {c for c, r, p in zip(CODE_POINTS, ref_nfd, py_nfd, strict=True) if r != p}
    # 2. compositions: recompose every Python decomposition
    ref_nfc = nfc(SEP.join(py_nfd)).split(SEP)
    composition_differs = {c for c, r, p in zip(CODE_POINTS, ref_nfc, py_nfd, strict=True)
                           if r != unicodedata.normalize("NFC", p)}
    # 3. combining classes (of code points without a decomposition: the others are never sorted themselves)
    ref_ccc = reference_classes(nfd, ref_nfd)
    class_differs = {c for c, p in zip(CODE_POINTS, py_nfd, strict=True)
                     if p == chr(c) and unicodedata.combining(p) != ref_ccc.get(c, 0)}

    split = set(class_differs) | decomposition_differs
    for c in composition_differs:
        # a composite the reference cannot make: cut at its last part, which must be a starter on both sides
        last = py_nfd[CODE_POINTS.index(c)][-1]
        assert unicodedata.combining(last) == 0, f"U+{c:04X}: the missing composition ends in a mark"
        split.add(ord(last))
    # every split point must be a plain starter for the reference: class 0, no decomposition, in no composition
    in_ref_decompositions = {ch for r in ref_nfd for ch in r if len(r) > 1}
    for c in split:
        assert c not in ref_ccc, f"U+{c:04X}: a mark for the reference"
        assert ref_nfd[CODE_POINTS.index(c)] == chr(c), f"U+{c:04X}: decomposed by the reference"
        assert chr(c) not in in_ref_decompositions, f"U+{c:04X}: part of a reference decomposition"
    return sorted(split)


def as_ranges(code_points: list[int]) -> str:
    """``[0x340, 0x341, 0x343]`` -> ``"340-341 343"``: the compact form the module keeps."""
    out, start = [], None
    for i, c in enumerate(code_points):
        if start is None:
            start = c
        if i + 1 == len(code_points) or code_points[i + 1] != c + 1:
            out.append(f"{start:X}" if start == c else f"{start:X}-{c:X}")
            start = None
    return " ".join(out)


if __name__ == "__main__":
    import textwrap

    import tokenizers

    split = measure()
    print(f"# measured with tokenizers {tokenizers.__version__} against Python's Unicode "
          f"{unicodedata.unidata_version}: {len(split)} code points", file=sys.stderr)
    lines = textwrap.wrap(as_ranges(split), 100)
    print("NFC_SPLIT_POINTS = (\n" + "\n".join(f'    "{line} "' for line in lines) + "\n)")
