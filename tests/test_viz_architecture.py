"""Smoke tests of viz.architecture and the book style: the drawings show what the config says."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from qwen3next import Qwen3NextConfig  # noqa: E402
from qwen3next.viz import COLUMN_INCHES, draw_architecture, draw_layer_pattern, use_book_style  # noqa: E402
from qwen3next.viz.architecture import FONT  # noqa: E402


def texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_architecture_shows_the_stack_with_shapes():
    cfg = Qwen3NextConfig.full()
    ax = draw_architecture(cfg)
    labels = "\n".join(texts(ax))
    for want in ["(B, T)", "(B, T, 2048)", "(B, T, 151,936)", "x 12", "embed_tokens  (151,936 x 2048)",
                 "16 Q / 2 KV heads of 256", "16 K / 32 V heads of 128", "top-10 of 512 experts",
                 "layers\n3, 7, …,\n47"]:
        assert want in labels, want
    assert min(t.get_fontsize() for t in ax.texts) >= FONT >= 9
    assert ax.figure.get_figwidth() <= COLUMN_INCHES
    plt.close(ax.figure)


def test_layer_pattern_follows_the_layer_types():
    cfg = Qwen3NextConfig.tiny()
    ax = draw_layer_pattern(cfg)
    assert len(ax.patches) == 2 * cfg.num_hidden_layers
    assert ax.figure.get_figwidth() <= COLUMN_INCHES
    plt.close(ax.figure)


def test_book_style_draws_at_column_width_and_9_pt():
    use_book_style()
    rc = matplotlib.rcParams
    assert rc["figure.figsize"][0] <= COLUMN_INCHES and rc["savefig.dpi"] >= 2 * rc["figure.dpi"]
    assert min(rc[k] for k in ("font.size", "axes.labelsize", "xtick.labelsize", "ytick.labelsize",
                               "legend.fontsize")) >= 9
