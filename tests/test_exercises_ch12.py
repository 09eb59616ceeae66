"""The checkers of chapter 12's exercises: a right answer passes, a wrong one fails, ``...`` gets a reminder."""

from __future__ import annotations

from qwen3next.exercises import ch12_serving as ex


def right_slots(blocks, block_size, start, end):
    return [blocks[p // block_size] * block_size + p % block_size for p in range(start, end)]


def wrong_slots(blocks, block_size, start, end):  # forgets the block table: slots as if contiguous
    return list(range(start, end))


def test_block_slots(capsys):
    assert ex.check_block_slots(right_slots)
    assert not ex.check_block_slots(wrong_slots)
    assert "block * block_size" in capsys.readouterr().out
    assert not ex.check_block_slots(lambda *a: 1 / 0)
    assert "ZeroDivisionError" in capsys.readouterr().out
    assert not ex.check_block_slots(...)
    assert "replace `...`" in capsys.readouterr().out


def test_numeric_answers(capsys):
    assert ex.check_block_size_tp8(272)
    assert not ex.check_block_size_tp8(528)
    assert ex.check_kv_per_token_tp8(12_288)
    assert not ex.check_kv_per_token_tp8(3_072)
    assert not ex.check_kv_per_token_tp8(...)
    assert "replace `...`" in capsys.readouterr().out
