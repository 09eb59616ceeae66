"""Tests for qwen3next.viz.loading: the loading-path diagram shows every step with the release's sizes."""

from __future__ import annotations

import matplotlib.pyplot as plt
from viz_checks import check_figure

from qwen3next import Qwen3NextConfig
from qwen3next.viz.loading import draw_loading_path


def test_loading_path_of_the_release():
    text = check_figure(draw_loading_path(Qwen3NextConfig.full(), shards=41))
    for label in ("config.json", "75,944 names", "41 shards", "read_header", "meta device", "hub_layout",
                  "safe_open", "W_fp8 (512, 2048) e4m3", "scale_inv (4, 16)", "offload_experts=True",
                  "48 x 512 routed experts", "(480 experts)", "os.preadv", "4.4 GiB", "148 GiB"):
        assert label in text, label
    plt.close("all")


def test_loading_path_follows_config_and_block():
    text = check_figure(draw_loading_path(Qwen3NextConfig.full(), shards=9, fp8_block=(64, 64)))
    assert "9 shards" in text and "scale_inv (8, 32)" in text
    plt.close("all")
