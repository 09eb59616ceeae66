"""Training byte-level BPE from scratch: count adjacent pairs, merge the most frequent, repeat.

What produced Qwen's 151,387 merges, at a size that runs in seconds on the book's own corpus. Chapter 02
(and chapter 10, which trains the tokenizer of the book's small model).
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from .bpe import bytes_to_unicode, to_byte_symbols
from .normalize import nfc
from .pretokenizer import QWEN_PATTERN, reference_regex
from .tokenizer import Tokenizer
from .tokenizer_files import read_json


def load_corpus() -> dict[str, str]:
    """The small corpus the book ships for training BPE: a snapshot of its own text and source.

    Returns ``{path in the repository: text}``: the first chapters (prose and code) and the package
    modules they build, about 240 KB of English prose, Markdown and Python, written by the
    repository's ``tools/make_corpus.py``.
    """
    path = Path(__file__).parent / "data" / "tokenizer_corpus.json"
    data = read_json(path)
    return {name: text for name, text in data["documents"]}


@dataclass
class TrainedBPE:
    """What :func:`train_bpe` learns: the merges in order, the vocabulary, and each merge's pair count."""

    merges: list[tuple[str, str]]
    vocab: dict[str, int]
    counts: list[int]

    def tokenizer(self, pattern: str = QWEN_PATTERN) -> Tokenizer:
        """A :class:`Tokenizer` over the learned vocabulary (no added tokens, NFC normalisation)."""
        return Tokenizer(self.vocab, self.merges, pattern=pattern)


def _checked_corpus(texts, num_merges) -> list[str]:
    """The corpus as a list of strings, and a merge count that is a non-negative int."""
    if isinstance(num_merges, bool) or not isinstance(num_merges, int) or num_merges < 0:
        raise ValueError(f"num_merges must be a non-negative int, got {num_merges!r}")
    texts = [texts] if isinstance(texts, str) else list(texts)
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"train_bpe expects strings, got {type(bad).__name__}")
    return texts


def train_bpe(texts: list[str] | str, num_merges: int, pattern: str = QWEN_PATTERN) -> TrainedBPE:
    """Learn byte-level BPE merges from scratch.

    The corpus is NFC-normalised and cut into pre-tokens with the same regex as encoding (so merges
    never cross a pre-token boundary); each distinct pre-token is a word with a count. Starting from the
    256 single bytes, repeat ``num_merges`` times: count every adjacent symbol pair, weighted by word
    count; merge the most frequent pair everywhere (ties go to the pair that sorts first); record it.

    Pair counts are updated incrementally (only words that contain the merged pair change), and the
    best pair comes from a heap with stale entries skipped, so a few thousand merges take seconds.
    """
    texts = _checked_corpus(texts, num_merges)
    splitter = reference_regex(pattern)
    word_counts: Counter[str] = Counter()
    for text in texts:
        word_counts.update(splitter.findall(nfc(text)))

    words: list[list[str]] = [list(to_byte_symbols(w)) for w in word_counts]
    freqs: list[int] = list(word_counts.values())
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}

    pair_counts: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for wi, w in enumerate(words):
        for pair in pairwise(w):
            pair_counts[pair] += freqs[wi]
            where.setdefault(pair, set()).add(wi)
    # max-heap by count, ties by the pair itself (smallest first): entries (-count, pair)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[str, str]] = []
    counts: list[int] = []
    while len(merges) < num_merges and heap:
        neg, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg:
            continue  # stale entry: the count changed since it was pushed
        if -neg <= 0:
            break
        a, b = pair
        new = a + b
        merges.append(pair)
        counts.append(-neg)
        vocab.setdefault(new, len(vocab))
        touched: set[tuple[str, str]] = set()
        for wi in list(where.get(pair, ())):
            w, f = words[wi], freqs[wi]
            # remove the word's old pairs, merge, add its new pairs
            for p in pairwise(w):
                pair_counts[p] -= f
                touched.add(p)
            merged, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    merged.append(new)
                    i += 2
                else:
                    merged.append(w[i])
                    i += 1
            words[wi] = merged
            for p in pairwise(merged):
                pair_counts[p] += f
                touched.add(p)
                where.setdefault(p, set()).add(wi)
        for p in touched:
            c = pair_counts[p]
            if c > 0:
                heapq.heappush(heap, (-c, p))
        pair_counts.pop(pair, None)
        where.pop(pair, None)
    return TrainedBPE(merges, vocab, counts)
