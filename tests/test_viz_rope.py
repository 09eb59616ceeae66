"""Smoke tests of viz.rope: the norm and partial-RoPE data flow, and YaRN's ramp."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from qwen3next import Qwen3NextConfig  # noqa: E402
from qwen3next.viz.rope import draw_norm_and_rope, draw_yarn_ramp  # noqa: E402


def test_norm_and_rope_shows_the_split_and_the_shapes():
    ax = draw_norm_and_rope(Qwen3NextConfig.full())
    labels = "\n".join(t.get_text() for t in ax.texts)
    for want in ["(B, T, 2048)", "(B, T, 16, 256)", "dims 0..63", "dims 64..255", "192 dims pass",
                 "(B, T, 64)", "$10^{7}$", "(B, 16, T, 256)", "2 heads"]:
        assert want in labels, want
    assert min(t.get_fontsize() for t in ax.texts) >= 9
    plt.close(ax.figure)


def test_yarn_ramp_draws_the_curves_passed_in():
    pairs = torch.arange(32)
    ramp = ((pairs - 14) / 8).clamp(0, 1)
    top, bottom = draw_yarn_ramp(pairs, 1e4 / 2.0 ** pairs, ramp, 1 + 3 * ramp, 32, 1, 14, 22)
    drawn = next(line for line in bottom.lines if line.get_label().startswith("ramp"))
    assert torch.equal(torch.as_tensor(drawn.get_ydata()), ramp)
    assert "low = 14" in [t.get_text().strip() for t in bottom.texts]
    plt.close(top.figure)
