"""Tests for qwen3next.viz.model: the forward-pass diagram shows the stack's shapes."""

from __future__ import annotations

import matplotlib.pyplot as plt
from viz_checks import check_figure

from qwen3next import Qwen3NextConfig
from qwen3next.viz.model import draw_logit_lens, draw_model_forward


def test_forward_diagram_of_the_released_model():
    fig = draw_model_forward(Qwen3NextConfig.full())
    text = check_figure(fig)
    for label in ("input_ids (B, T)", "embed_tokens (151,936 x 2048)", "(B, T, 2048)", "x 48",
                  "Gated DeltaNet (36 layers)", "gated attention (12 layers)", "attention at layers 3, 7, ..., 47",
                  "10 of 512", "lm_head (2048 -> 151,936)", "logits (B, T, 151,936)"):
        assert label in text, label
    plt.close(fig)


def test_forward_diagram_follows_the_config():
    text = check_figure(draw_model_forward(Qwen3NextConfig.tiny(), batch="1", tokens="80"))
    assert "x 8" in text and "input_ids (1, 80)" in text
    plt.close("all")


def test_logit_lens_grid_shows_tokens_and_predictions():
    fig = draw_logit_lens([" Tom", " had", "\n"], [["a", " b", "c"], [" dog", " a", "\n"]],
                          [[0.1, 0.2, 0.3], [0.9, 0.5, 0.0]], ["emb", "layer 0"])
    text = check_figure(fig)
    for label in ("_dog", "_b", "\\n"):
        assert label in text, label
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels() + fig.axes[0].get_yticklabels()]
    assert ticks == ["_Tom", "_had", "\\n", "emb", "layer 0"]
    plt.close(fig)
