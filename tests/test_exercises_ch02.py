"""The checks of chapter 02's exercises: a right answer passes, a wrong one fails, the placeholder gets a hint."""

from __future__ import annotations

from itertools import pairwise

from qwen3next import Qwen3NextConfig, Tokenizer
from qwen3next.exercises import ch02_tokenizer as ex


def merge_step(symbols, ranks):
    """One BPE step done right: every occurrence of the lowest-rank pair, left to right."""
    best = min(pairwise(symbols), key=lambda p: ranks.get(p, float("inf")), default=None)
    if best not in ranks:
        return symbols
    out, i = [], 0
    while i < len(symbols):
        if tuple(symbols[i:i + 2]) == best:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def merge_leftmost_only(symbols, ranks):
    """A plausible mistake: only the first occurrence of the pair."""
    best = min(pairwise(symbols), key=lambda p: ranks.get(p, float("inf")), default=None)
    if best not in ranks:
        return symbols
    i = next(i for i, p in enumerate(pairwise(symbols)) if p == best)
    return symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2:]


def test_merge_step(capsys):
    assert ex.check_merge_step(merge_step)
    assert f"All {len(ex.MERGE_WORDS)} words" in capsys.readouterr().out
    assert not ex.check_merge_step(merge_leftmost_only)
    assert "' banana', step 1" in capsys.readouterr().out
    assert not ex.check_merge_step(lambda symbols, ranks: symbols)  # never merges
    assert not ex.check_merge_step(lambda symbols, ranks: None.x)
    assert "AttributeError" in capsys.readouterr().out
    assert not ex.check_merge_step(...)
    assert "replace `...`" in capsys.readouterr().out


def test_value_checks(capsys):
    tok = Tokenizer.qwen3()
    assert "13 bytes" in ex.EXERCISE_TEXT and len("naïve 東京".encode()) == 13
    n = len(tok.encode(ex.EXERCISE_TEXT))
    assert ex.check_count_tokens(n) and not ex.check_count_tokens(n - 1)
    assert ex.check_gap(Qwen3NextConfig.full().vocab_size - len(tok)) and not ex.check_gap(0)
    assert not ex.check_count_tokens(...) and not ex.check_gap(...)
    out = capsys.readouterr().out
    assert out.count("Correct!") == 2 and out.count("Not yet") == 4
