"""Byte-level BPE: the GPT-2 byte-to-character table and the merge loop on one pre-token.

Byte-pair encoding (Sennrich et al., "Neural Machine Translation of Rare Words with Subword Units", 2016)
over UTF-8 bytes shown as printable characters, as introduced for GPT-2 (Radford et al., "Language Models
are Unsupervised Multitask Learners", 2019). :func:`bpe` is what encoding runs; :func:`bpe_merge_steps` is
the slow version that records every step, for reading. Chapter 02.
"""

from __future__ import annotations

import functools
import heapq
from itertools import pairwise

import regex

# --------------------------------------------------------------------------------------------------
# bytes <-> printable characters
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte-to-unicode table: every byte 0..255 -> one printable character.

    Bytes that are already printable Latin-1 characters map to themselves; the other 68 (control
    characters, space, 0x7F..0xA0, 0xAD) are moved to U+0100 and up, in byte order. So space (0x20)
    becomes 'Ġ' (U+0120) and newline (0x0A) becomes 'Ċ' (U+010A). BPE then works on ordinary strings.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1),
                 *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return dict(sorted(table.items()))


@functools.lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    """The inverse table: printable character -> byte."""
    return {c: b for b, c in bytes_to_unicode().items()}


def to_byte_symbols(text: str) -> str:
    """A string's UTF-8 bytes written as byte-level characters (one character per byte)."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


def token_bytes(token: str) -> bytes:
    """The bytes a vocabulary entry stands for.

    Like the reference ByteLevel decoder: if every character is in the byte table, each gives one byte;
    otherwise (an added token such as a non-ASCII marker) the token stands for its own UTF-8 text.
    """
    if _NOT_A_BYTE_CHAR.search(token):
        return token.encode("utf-8")
    return token.translate(_TO_LATIN1).encode("latin-1")  # each table character -> the byte it stands for


# the fast path of token_bytes: one C-level translate instead of a dict lookup per character
_NOT_A_BYTE_CHAR = regex.compile("[^" + regex.escape("".join(bytes_to_unicode().values())) + "]")
_TO_LATIN1 = str.maketrans({c: chr(b) for b, c in bytes_to_unicode().items()})


# --------------------------------------------------------------------------------------------------
# BPE on one pre-token
# --------------------------------------------------------------------------------------------------


def bpe_merge_steps(word: str, ranks: dict[tuple[str, str], int]) -> list[tuple[list[str], tuple[str, str] | None]]:
    """Run BPE on one byte-level word and record every step: ``[(symbols, merged_pair), ...]``.

    The first entry is the word split into single bytes (``merged_pair`` None); each following entry is
    the symbols after merging every occurrence of the lowest-rank adjacent pair, left to right.
    Slow on purpose (it rescans all pairs each step): for reading, not for encoding text.
    """
    symbols = list(word)
    steps: list[tuple[list[str], tuple[str, str] | None]] = [(symbols[:], None)]
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in pairwise(symbols)}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break  # no adjacent pair was ever merged in training: done
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
        steps.append((symbols[:], best))
    return steps


def bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE on one byte-level word with a heap of candidate merges: O(n log n) in the word length.

    Symbols live in a doubly linked list (``prev`` / ``nxt`` indices); the heap holds
    (rank, left position, left symbol, right symbol) and stale entries are skipped when popped. Equal
    ranks pop left to right, which is what "merge the lowest-rank pair, leftmost first" means.
    """
    n = len(word)
    if n < 2:
        return [word]
    sym = list(word)
    prev = list(range(-1, n - 1))
    nxt = [*range(1, n), -1]
    heap = []
    for i in range(n - 1):
        r = ranks.get((sym[i], sym[i + 1]))
        if r is not None:
            heap.append((r, i, sym[i], sym[i + 1]))
    heapq.heapify(heap)
    while heap:
        r, i, a, b = heapq.heappop(heap)
        j = nxt[i]
        # stale: i was absorbed into its left neighbour, or one side changed since the
        # entry was pushed
        if sym[i] != a or j == -1 or sym[j] != b:
            continue
        sym[i] = a + b
        sym[j] = ""  # dead
        k = nxt[j]
        nxt[i] = k
        if k != -1:
            prev[k] = i
            rk = ranks.get((sym[i], sym[k]))
            if rk is not None:
                heapq.heappush(heap, (rk, i, sym[i], sym[k]))
        p = prev[i]
        if p != -1:
            rp = ranks.get((sym[p], sym[i]))
            if rp is not None:
                heapq.heappush(heap, (rp, p, sym[p], sym[i]))
    out, i = [], 0
    while i != -1:
        out.append(sym[i])
        i = nxt[i]
    return out
