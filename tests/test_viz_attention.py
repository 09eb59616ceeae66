"""Smoke tests for qwen3next.viz.attention: each drawing draws on an Agg canvas and shows what it must."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from qwen3next import Qwen3NextConfig  # noqa: E402
from qwen3next.viz.attention import Box, draw_flow, draw_gated_attention, draw_q_proj_rows  # noqa: E402
from qwen3next.viz.style import COLUMN_INCHES  # noqa: E402


def texts(fig) -> str:
    fig.canvas.draw()
    return "\n".join(t.get_text() for t in fig.findobj(Text))


def small_fonts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text() and t.get_fontsize() < 9]


def test_gated_attention_diagram_shows_the_release_shapes():
    ax = draw_gated_attention(Qwen3NextConfig.full())
    shown = texts(ax.figure)
    for label in ("q_proj  2048 → 8192", "(B, T, 8192)", "(B, T, 16, 256) each", "(B, T, 2, 256)",
                  "[query 256 | gate 256]", "RoPE, dims 0-63", "8 query heads per KV head", "q·k / 16",
                  "(B, T, 4096)", "o_proj  4096 → 2048", "y   (B, T, 2048)", "KV cache"):
        assert label in shown, label
    assert ax.figure.get_figwidth() <= COLUMN_INCHES and not small_fonts(ax.figure)
    plt.close(ax.figure)


def test_gated_attention_diagram_follows_the_config():
    shown = texts(draw_gated_attention(Qwen3NextConfig.tiny()).figure)
    assert "q_proj  64 → 128" in shown and "(B, T, 4, 16) each" in shown and "2 query heads per KV head" in shown
    plt.close("all")


def test_q_proj_rows_zoom_names_query_and_gate_of_each_head():
    fig = draw_q_proj_rows(Qwen3NextConfig.full(), zoom=3)
    shown = texts(fig)
    assert all(f"q{h}" in shown and f"g{h}" in shown for h in range(3)) and "q3" not in shown.split()
    assert "8,192 rows" in shown and fig.get_figwidth() <= COLUMN_INCHES and not small_fonts(fig)
    plt.close(fig)


def test_flow_arrows_must_join_boxes():
    with pytest.raises(KeyError, match="known boxes"):
        draw_flow({"a": Box(0, 0, "a")}, [("a", "b")])
    plt.close("all")
