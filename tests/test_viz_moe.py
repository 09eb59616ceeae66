"""Tests for qwen3next.viz.moe: the MoE dispatch diagram shows the shapes of the block it is given."""

from __future__ import annotations

import matplotlib.pyplot as plt
from viz_checks import check_figure

from qwen3next import Qwen3NextConfig
from qwen3next.viz.moe import draw_moe_dispatch


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
