"""Tests for qwen3next.viz.moe: the MoE dispatch diagram shows the shapes of the block it is given."""

from __future__ import annotations

import matplotlib.pyplot as plt
from viz_checks import check_figure

from qwen3next import Qwen3NextConfig
from qwen3next.viz.moe import draw_expert_specialisation, draw_moe_dispatch


def test_dispatch_diagram_of_the_released_block():
    fig = draw_moe_dispatch(Qwen3NextConfig.full())
    text = check_figure(fig)
    for label in ("(N, 512)", "top-10", "(N, 10)", "renormalise", "sort the N x 10 assignments",
                  "(n_e, 2048) -> (n_e, 512) -> (n_e, 2048)", "index_add_", "sigmoid(x w_s)", "(N, 1)",
                  "y   (N, 2048)"):
        assert label in text, label
    plt.close(fig)


def test_dispatch_diagram_follows_the_config():
    fig = draw_moe_dispatch(Qwen3NextConfig.tiny(), tokens="B*T")
    text = check_figure(fig)
    tiny = Qwen3NextConfig.tiny()
    assert f"top-{tiny.num_experts_per_tok}" in text and f"(B*T, {tiny.num_experts})" in text
    assert "top-10" not in text
    plt.close(fig)


def test_specialisation_heatmap_marks_the_large_shares():
    share = [[0.9, 0.1, 0.0], [0.2, 0.2, 0.6]]
    fig = draw_expert_specialisation(share, ["full stop", "name"], "layer 0")
    text = check_figure(fig)
    assert "90%" in text and "60%" in text and "20%" not in text
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["full stop", "name"]
    assert ax.get_title() == "layer 0"
    plt.close(fig)
