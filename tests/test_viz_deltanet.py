"""Smoke tests for qwen3next.viz.deltanet: each drawing draws on an Agg canvas and shows what it must."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from qwen3next import Qwen3NextConfig  # noqa: E402
from qwen3next.viz.deltanet import draw_ba_rows, draw_gated_deltanet, draw_gates_over_text, draw_qkvz_rows  # noqa: E402
from qwen3next.viz.style import COLUMN_INCHES  # noqa: E402


def texts(fig) -> str:
    fig.canvas.draw()
    return "\n".join(t.get_text() for t in fig.findobj(Text))


def readable(fig) -> bool:
    return fig.get_figwidth() <= COLUMN_INCHES and all(t.get_fontsize() >= 9 for t in fig.findobj(Text)
                                                       if t.get_text())


def test_deltanet_diagram_shows_the_release_shapes():
    ax = draw_gated_deltanet(Qwen3NextConfig.full())
    shown = texts(ax.figure)
    for label in ("in_proj_qkvz  2048 → 12288", "in_proj_ba  2048 → 64", "16 groups\nof [q | k | v | z]",
                  "q, k (B, T, 16, 128)\nv (B, T, 32, 128)", "causal conv K = 4", "8192 channels",
                  "β = σ(b)", "softplus(a + Δ)", "(B, T, 32) each", "state (B, 32, 128, 128), float32",
                  "each k head serves 2 v heads", "silu(z)", "o (B, T, 32, 128)", "out_proj  4096 → 2048"):
        assert label in shown, label
    assert readable(ax.figure)
    plt.close(ax.figure)


def test_row_strips_name_the_parts_of_each_group():
    cfg = Qwen3NextConfig.full()
    shown = texts(draw_qkvz_rows(cfg, zoom=2))
    assert all(s in shown.split() for s in ("q0", "k0", "v0,1", "z0,1", "q1", "k1", "v2,3", "z2,3"))
    assert "12,288 rows" in shown and "q2" not in shown.split()
    shown = texts(fig := draw_ba_rows(cfg, zoom=3))
    assert all(s in shown.split() for s in ("b0,1", "a0,1", "b4,5", "a4,5")) and "64 rows" in shown
    assert readable(fig)
    plt.close("all")


def test_gates_over_text_has_a_panel_per_head_and_the_text():
    fig = draw_gates_over_text(["Tom", " ran", ".\n\n"], [[0.9, 0.5, 0.0], [1.0, 1.0, 0.9]],
                               [[0.2, 0.3, 0.9], [0.5, 0.5, 0.5]], ["layer 0 head 2", "layer 6 head 1"])
    shown = texts(fig)
    for label in ("layer 0 head 2", "layer 6 head 1", " ran", ".\\n\\n", "keep", "write"):
        assert label in shown, label
    assert len(fig.axes) == 2 and readable(fig)
    plt.close(fig)
