"""Diagrams of the Gated DeltaNet layer (chapter 06): its data flow, the interleaved rows of its two
fused input projections, and a trained layer's two gates token by token.

Only drawing lives here; every number drawn comes from the config or the tensors passed in.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from .attention import ROLE_COLORS, Box, draw_flow, draw_row_groups
from .colors import COLORS
from .style import COLUMN_INCHES


def _heads(cfg):
    Hk, Hv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
    return Hk, Hv, cfg.linear_key_head_dim, cfg.linear_value_head_dim, Hv // Hk


def _value_heads(r: int, j: int) -> str:
    """The value heads of key head ``j`` (``r`` of them), e.g. ``"2,3"``."""
    return ",".join(str(r * j + i) for i in range(r))


def draw_qkvz_rows(cfg, zoom: int = 2):
    """The rows of ``in_proj_qkvz.weight``: per key head ``[q | k | v of its value heads | z of them]``."""
    Hk, _, Dk, Dv, r = _heads(cfg)
    c = ROLE_COLORS
    parts = [(Dk, c["query"], lambda j: f"q{j}"), (Dk, c["key"], lambda j: f"k{j}"),
             (r * Dv, c["value"], lambda j: f"v{_value_heads(r, j)}"),
             (r * Dv, c["gate"], lambda j: f"z{_value_heads(r, j)}")]
    group = 2 * Dk + 2 * r * Dv
    return draw_row_groups(parts, Hk, zoom=zoom,
                           title=f"in_proj_qkvz's {Hk * group:,} rows: {Hk} groups of "
                                 f"[q {Dk} | k {Dk} | v {r * Dv} | z {r * Dv}]")


def draw_ba_rows(cfg, zoom: int = 3):
    """The rows of ``in_proj_ba.weight``: per key head ``[b of its value heads | a of them]``."""
    Hk, _, _, _, r = _heads(cfg)
    parts = [(r, ROLE_COLORS["key"], lambda j: f"b{_value_heads(r, j)}"),
             (r, ROLE_COLORS["state"], lambda j: f"a{_value_heads(r, j)}")]
    return draw_row_groups(parts, Hk, zoom=zoom,
                           title=f"in_proj_ba's {Hk * 2 * r} rows: {Hk} groups of [b {r} | a {r}]")


def draw_gated_deltanet(cfg, chunk_size: int = 64, ax=None):
    """The Gated DeltaNet layer as a data flow, with the shapes of ``cfg`` (B sequences of T tokens) and
    the kernel's ``chunk_size`` (the layer's attribute of that name)."""
    Hk, Hv, Dk, Dv, r = _heads(cfg)
    hid, K = cfg.hidden_size, cfg.linear_conv_kernel_dim
    key_dim, value_dim = Hk * Dk, Hv * Dv
    conv_dim = 2 * key_dim + value_dim
    c = ROLE_COLORS
    boxes = {
        "x": Box(1.6, 0, f"x   (B, T, {hid})", c["input"]),
        "qkvz": Box(0.9, 1, f"in_proj_qkvz  {hid} → {2 * key_dim + 2 * value_dim}", "white"),
        "ba": Box(3.0, 1, f"in_proj_ba  {hid} → {2 * Hv}", "white"),
        "split": Box(0.9, 2, f"de-interleave {Hk} groups\nof [q | k | v | z]", "white"),
        "split_ba": Box(3.0, 2, f"de-interleave {Hk}\ngroups of [b | a]", "white"),
        "z": Box(-0.3, 3, "z", c["gate"]),
        "conv": Box(1.1, 3, f"causal conv K = {K}, SiLU\nover {conv_dim} channels", "white"),
        "beta": Box(2.4, 3, "β = σ(b)", c["key"]),
        "g": Box(3.4, 3, "g = $-e^{A}$ softplus(a + Δ)", c["state"]),
        "norm": Box(1.1, 4, f"L2-normalise q, k\n(q also × 1/√{Dk})", "white"),
        "rule": Box(1.7, 5, f"gated delta rule, chunks of {chunk_size}\neach k head serves {r} v heads\n"
                            f"state (B, {Hv}, {Dk}, {Dv}), float32", c["state"]),
        "gnorm": Box(0.6, 6, "gated RMSNorm per head:\nRMSNorm(o) · w · silu(z)", c["gate"]),
        "out": Box(0.6, 7, f"out_proj  {value_dim} → {hid}", "white"),
        "y": Box(0.6, 8, f"y   (B, T, {hid})", c["input"]),
    }
    arrows = [
        ("x", "qkvz"), ("x", "ba"),
        ("qkvz", "split", f"(B, T, {2 * key_dim + 2 * value_dim})"),
        ("ba", "split_ba", f"(B, T, {2 * Hv})"),
        ("split", "conv", f"q, k (B, T, {Hk}, {Dk})\nv (B, T, {Hv}, {Dv})", (0.2, 0.0)),
        ("split", "z", f"(B, T, {Hv}, {Dv})", "left"),
        ("split_ba", "beta"), ("split_ba", "g", f"(B, T, {Hv}) each"),
        ("conv", "norm"), ("norm", "rule"), ("beta", "rule"), ("g", "rule"),
        ("rule", "gnorm", f"o (B, T, {Hv}, {Dv})", (0.1, 0.0)), ("z", "gnorm"),
        ("gnorm", "out", f"(B, T, {value_dim})"), ("out", "y"),
    ]
    return draw_flow(boxes, arrows, title="Gated DeltaNet, one layer", size=(COLUMN_INCHES, 7.4), ax=ax)


def draw_gates_over_text(pieces, alpha, beta, head_names):
    """Two gates of a few heads along one text: ``alpha[h][t]`` (the decay, a line) and ``beta[h][t]``
    (the write strength, bars) for ``pieces[t]``, one panel per head named by ``head_names[h]``, the
    pieces of text under the last panel. Returns the figure."""
    n = len(head_names)
    fig, axes = plt.subplots(n, 1, figsize=(COLUMN_INCHES, 1.25 * n + 1.0), sharex=True, squeeze=False)
    x = range(len(pieces))
    for ax, name, a, b in zip(axes[:, 0], head_names, alpha, beta, strict=True):
        ax.bar(x, b, color=COLORS["moe"], width=0.8, label=r"write $\beta_t$")
        ax.plot(x, a, "o-", color=COLORS["linear_attention"], ms=3, lw=1.2, label=r"keep $\alpha_t$")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(name)
    axes[0, 0].legend(loc="lower left", ncols=2, bbox_to_anchor=(0, 1.0), frameon=False)
    axes[-1, 0].set_xticks(list(x), [p.replace("\n", "\\n") for p in pieces], rotation=90)
    return fig
