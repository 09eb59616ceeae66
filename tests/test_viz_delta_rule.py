"""Smoke test for qwen3next.viz.delta_rule: the chunkwise diagram draws on an Agg canvas with its labels."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from qwen3next.viz.delta_rule import draw_chunkwise_state_passing  # noqa: E402
from qwen3next.viz.style import COLUMN_INCHES  # noqa: E402


def test_chunkwise_diagram_shows_chunks_states_and_shapes():
    ax = draw_chunkwise_state_passing(n_chunks=3, C=64, Dk=128, Dv=128)
    ax.figure.canvas.draw()
    shown = [t.get_text() for t in ax.figure.findobj(Text)]
    joined = "\n".join(shown)
    for n in range(4):
        assert f"h{n}\n(128, 128)" in shown  # the state before chunk 1 and after each chunk
    for label in ("chunk 1: tokens\n0-63", "chunk 3: tokens\n128-191", "(64, 64)", "U (64, 128)",
                  "V' = U - W h", "O3  (64, 128)", "all chunks at once", "one chunk after another"):
        assert label in joined, label
    assert "h4" not in joined
    assert ax.figure.get_figwidth() <= COLUMN_INCHES
    assert all(t.get_fontsize() >= 9 for t in ax.figure.findobj(Text) if t.get_text())
    plt.close(ax.figure)
