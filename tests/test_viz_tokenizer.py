"""Smoke test of viz.tokenizer: the pipeline of one real string, step by step."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from qwen3next import Tokenizer  # noqa: E402
from qwen3next.viz.tokenizer import draw_tokenizer_pipeline, tokenizer_stages  # noqa: E402

TEXT = "<|im_start|>user\nCafe\u0301s cost $12!<|im_end|>"


def test_stages_follow_the_tokenizer():
    tok = Tokenizer.qwen3()
    stages = tokenizer_stages(tok, TEXT)
    names = [s.name for s in stages]
    assert names[0] == "text" and names[-1] == "look up the ids" and len(stages) == 7
    split, nfc_stage, words, symbols, merged, ids = stages[1:]
    assert split.pieces == ["<|im_start|>", "user\nCafe\u0301s cost $12!", "<|im_end|>"]
    assert split.added == [True, False, True]
    assert nfc_stage.pieces == ["user\nCaf\u00e9s cost $12!"] and nfc_stage.note == "21 -> 20 characters"
    assert words.pieces == tok.pretokenize(nfc_stage.pieces[0])
    assert "".join(symbols.pieces) == "".join(merged.pieces)  # BPE only joins symbols
    assert [int(i) for i in ids.pieces] == tok.encode(TEXT)
    assert ids.added == [True] + [False] * (len(ids.pieces) - 2) + [True]


def test_drawing_shows_every_piece():
    stages = tokenizer_stages(Tokenizer.qwen3(), TEXT)
    ax = draw_tokenizer_pipeline(stages)
    labels = [t.get_text() for t in ax.texts]
    for want in ["split off added tokens", "NFC-normalise the rest", "BPE merges", "added tokens", "151644",
                 "Ġcost", "user↵Cafe\\u0301s␣cost␣$12!", "12 ids, list[int]"]:
        assert want in labels, want
    assert min(t.get_fontsize() for t in ax.texts) >= 9
    plt.close(ax.figure)


def test_a_text_too_long_for_the_column_is_refused():
    stages = tokenizer_stages(Tokenizer.qwen3(), "a long sentence " * 8)
    with pytest.raises(ValueError, match="inches"):
        draw_tokenizer_pipeline(stages)
    plt.close("all")
