"""Tests for qwen3next.viz.training: the training-step diagram and the chapter's plots follow their data."""

from __future__ import annotations

import matplotlib.pyplot as plt
from viz_checks import check_figure

from qwen3next import Qwen3NextConfig
from qwen3next.train import story_model_config
from qwen3next.viz.training import (
    draw_training_step,
    information_histogram,
    plot_balance,
    plot_decay,
    plot_losses,
    plot_recall,
    plot_schedule,
)


def test_training_step_diagram_shows_the_shapes_of_the_batch():
    cfg = story_model_config(768, 753)
    fig = draw_training_step(cfg, batch_size=16, seq_len=256)
    text = check_figure(fig)
    for label in ("input_ids (16, 256)", "lm_head (16, 256, 768)", "(16, 255, 128)", "(4096, 16) per layer",
                  "ids[:, 1:] (16, 255)", "0.3 mtp + 0.01 balance", "8 layers"):
        assert label in text, label
    plt.close(fig)
    fig = draw_training_step(Qwen3NextConfig.tiny(), batch_size=2, seq_len=10, mtp_weight=0.5)
    text = check_figure(fig)
    assert "input_ids (2, 10)" in text and "(20, 8) per layer" in text and "0.5 mtp" in text
    plt.close(fig)


def _records(n=20):
    out = []
    for i in range(1, n + 1):
        r = {"step": i, "tokens": 1000 * i, "lm": 2 / i + 0.5, "mtp": 2 / i + 0.6, "balance": 2 + 1 / i,
             "lr": 1e-3, "grad_norm": 1 / i}
        if i % 5 == 0:
            r.update(val_lm=2 / i + 0.51, val_mtp=2 / i + 0.62)
        out.append(r)
    return out


def test_plots_draw_every_series():
    records = _records()
    axes = plot_losses(records, floor=0.5)
    assert len(axes[0].lines) == 5 and len(axes[1].lines) == 2  # 2 train, 2 validation, floor | 2 gaps
    check_figure(axes[0].figure)
    ax1, ax2 = plot_schedule(records, clip=1.0)
    assert len(ax1.lines) == 1 and len(ax2.lines) == 2
    ax = plot_balance(records, top_k=2)
    assert ax.lines[1].get_ydata()[0] == 2
    ax = plot_decay({"a": [0.5, 0.9], "b": [0.99]})
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    ax = plot_recall([{"name": "x", "curve": [(1, 1.0, 0.1), (2, 0.5, 0.9)], "chance": 0.05}])
    assert "x (0.90)" in [t.get_text() for t in ax.get_legend().get_texts()]
    check_figure(ax.figure)
    assert all(t.get_fontsize() >= 9 for t in ax.get_legend().get_texts())  # the book's smallest type
    ax = information_histogram([1.0, 2.0, 3.0])
    assert "mean 2.0 nats" in ax.texts[0].get_text()
    plt.close("all")
