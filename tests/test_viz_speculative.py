"""Tests for qwen3next.viz.speculative: chapter 11's drawings show what they promise and fit the page."""

from __future__ import annotations

import matplotlib.pyplot as plt
from viz_checks import check_figure

from qwen3next import Qwen3NextConfig
from qwen3next.viz.speculative import (
    draw_acceptance,
    draw_forward_cost,
    draw_mtp_flow,
    draw_rollback,
    draw_round,
    draw_speedup,
)


def test_mtp_flow_shows_the_shapes_of_the_release():
    fig = draw_mtp_flow(Qwen3NextConfig.full())
    text = check_figure(fig)
    for label in ("(B, T, 4096)", "fc: 4096 -> 2048, no bias", "top-10 of 512", "151936", "guesses x_(t+2)",
                  "concatenate [e | h]  (embedding first)", "its own output\nis the next h", "after its final norm"):
        assert label in text, label
    plt.close(fig)


def test_mtp_flow_follows_the_config():
    tiny = Qwen3NextConfig.tiny()
    text = check_figure(draw_mtp_flow(tiny, batch="1", tokens="3"))
    assert f"(1, 3, {2 * tiny.hidden_size})" in text and "top-10" not in text
    plt.close("all")


def test_round_and_rollback_drawings():
    ax = draw_round(["a", "b", "c"], ["a", "x", "y", "z"], accepted=1, pending="p")
    text = check_figure(ax.figure)
    assert text.split("\n")[:4] == ["p", "a", "b", "c"] and "x" in text and "trunk reads" in text
    bold = [t.get_text() for t in ax.texts if t.get_weight() == "bold"]
    assert bold == ["x"]  # the trunk's token after the accepted draft is the one kept
    plt.close("all")
    text = check_figure(draw_rollback(3, 1))
    assert "S_n+4" in text and "pick the one\nafter the last kept token (S_n+2)" in text
    assert "keep 2 new slots (crop),\ndrop the other 2" in text
    plt.close("all")


def test_measurement_plots():
    ax = draw_forward_cost([1, 2, 3], [1.0, 1.4, 1.8], [1.0, 1.9, 2.1], head_ratio=0.1)
    check_figure(ax.figure)
    assert [t.get_text() for t in ax.get_legend().get_texts()][1] == "Qwen3-Next-80B: weight bytes read"
    ax = draw_acceptance({1: [0.8], 2: [0.8, 0.6]})
    check_figure(ax.figure)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["k = 1", "k = 2"]
    assert len(ax.patches) == 3
    ax = draw_speedup([1, 2], {"replay": [(1.1, 1.0, 1.2), (1.2, 1.1, 1.3)]}, {"expected": [1.2, 1.3]})
    check_figure(ax.figure)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["expected", "measured, replay"]
    plt.close("all")
