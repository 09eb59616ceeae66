"""Tests for qwen3next.viz.cache: the hybrid cache diagram shows each layer's cache with its shape."""

from __future__ import annotations

import matplotlib.pyplot as plt
from viz_checks import check_figure

from qwen3next import Qwen3NextConfig
from qwen3next.viz.cache import draw_hybrid_cache


def test_hybrid_cache_of_the_released_model():
    fig = draw_hybrid_cache(Qwen3NextConfig.full(), tokens=262_144)
    text = check_figure(fig)
    for label in ("(1, 8192, 4) bf16", "(1, 32, 128, 128) fp32", "K (1, 2, T, 256) bf16", "V (1, 2, T, 256)",
                  "+2 KiB per token", "x 12", "74.25 MiB", "24 KiB per token", "6 GiB at T = 262,144"):
        assert label in text, label
    plt.close(fig)


def test_hybrid_cache_follows_batch_and_dtypes():
    fig = draw_hybrid_cache(Qwen3NextConfig.full(), tokens=1024, batch_size=4, activation_bytes=4)
    text = check_figure(fig)
    assert "(4, 8192, 4) fp32" in text and "K (4, 2, T, 256) fp32" in text and "+16 KiB per token" in text
    plt.close(fig)
