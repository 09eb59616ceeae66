"""Chapter 03's pictures: the norms and partial RoPE on the way into attention, and YaRN's ramp.

Only drawing lives here: every size comes from the config, every curve from the tensors passed in.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt

from ..config import Qwen3NextConfig
from .architecture import FONT, box
from .colors import COLORS
from .style import COLUMN_INCHES, inch_axes


def _arrow(ax, xy0, xy1, label=None, dx=0.08, ha="left"):
    ax.annotate("", xy=xy1, xytext=xy0, arrowprops=dict(arrowstyle="-|>", lw=0.9, color="black",
                                                        shrinkA=0, shrinkB=0))
    if label:
        ax.text((xy0[0] + xy1[0]) / 2 + dx, (xy0[1] + xy1[1]) / 2, label, ha=ha, va="center", fontsize=FONT,
                family="monospace", color="0.25")


def draw_norm_and_rope(cfg: Qwen3NextConfig, ax=None):
    """One attention layer's queries from the residual stream to the attention scores, with shapes.

    The input norm (zero-centred gain), the query projection, the per-head q_norm, then partial RoPE:
    the first ``rotary_dim`` dims of each head rotated by position, the rest passed through. The keys
    take the same path with ``num_key_value_heads`` heads.
    """
    if ax is None:
        ax = inch_axes(5.6)
    d, H, D, R = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.rotary_dim
    cx, w, h = 2.35, 3.9, 0.5
    ys = [5.25, 4.45, 3.65, 2.85, 1.85, 0.75]
    box(ax, cx, ys[0], 2.4, h, "residual stream x", COLORS["tensor"])
    _arrow(ax, (cx, ys[0] - h / 2), (cx, ys[1] + h / 2), f"(B, T, {d})")
    box(ax, cx, ys[1], w, h, "input_layernorm: x / rms(x) * (1 + w)\nin float32, w starts at 0",
        COLORS["norm"])
    _arrow(ax, (cx, ys[1] - h / 2), (cx, ys[2] + h / 2), f"(B, T, {d})")
    box(ax, cx, ys[2], w, h, f"q_proj (query half of {2 * H * D} outputs)", COLORS["full_attention"])
    _arrow(ax, (cx, ys[2] - h / 2), (cx, ys[3] + h / 2), f"(B, T, {H}, {D})")
    box(ax, cx, ys[3], w, h, f"q_norm: RMSNorm over each head's {D} dims\ngain (1 + w), shared by the heads",
        COLORS["norm"])
    # the split: passed-through dims on the left, rotated dims on the right (beside their angles)
    xl, xr, ws = cx - 1.05, cx + 1.05, 1.85
    _arrow(ax, (cx - 0.5, ys[3] - h / 2), (xl, ys[4] + 0.35), f"dims {R}..{D - 1}", dx=-0.1, ha="right")
    _arrow(ax, (cx + 0.5, ys[3] - h / 2), (xr, ys[4] + 0.35), f"dims 0..{R - 1}", dx=0.1)
    box(ax, xl, ys[4], ws, 0.7, f"{D - R} dims pass\nthrough unchanged\n(content only)", COLORS["tensor"])
    box(ax, xr, ys[4], ws, 0.7, f"rotate pair $(i, i + {R // 2})$\nby the angle $p\\,\\omega_i$:\n"
        r"$x \cos + \mathrm{rotate\_half}(x) \sin$", COLORS["rotary"])
    _arrow(ax, (xl, ys[4] - 0.35), (cx - 0.3, ys[5] + h / 2))
    _arrow(ax, (xr, ys[4] - 0.35), (cx + 0.3, ys[5] + h / 2))
    box(ax, cx, ys[5], w, h, f"concatenate: q of shape (B, {H}, T, {D}) to attention\n"
        f"(k: the same path with {cfg.num_key_value_heads} heads)", COLORS["tensor"])
    # where the angles come from
    px = 5.55
    box(ax, px, ys[1], 2.0, h, "position_ids $p$", COLORS["tensor"])
    _arrow(ax, (px, ys[1] - h / 2), (px, ys[2] + 0.4), "(B, T)")
    exponent = round(math.log10(cfg.rope_theta))
    theta = f"$10^{{{exponent}}}$" if 10.0**exponent == cfg.rope_theta else f"{cfg.rope_theta:g}"
    box(ax, px, ys[2] - 0.15, 2.0, 0.8, f"RotaryEmbedding\n$\\omega_i = \\theta^{{-2i/{R}}}$\n"
        f"$\\theta$ = {theta}", COLORS["rotary"])
    ax.annotate("", xy=(xr + ws / 2, ys[4]), xytext=(px, ys[2] - 0.55),
                arrowprops=dict(arrowstyle="-|>", lw=0.9, color="black", shrinkA=0, shrinkB=0,
                                connectionstyle="angle,angleA=-90,angleB=0"))
    ax.text(px + 0.08, ys[3] - 0.2, f"cos, sin\n(B, T, {R})", ha="left", va="center", fontsize=FONT,
            family="monospace", color="0.25")
    ax.set_xlim(0, COLUMN_INCHES)
    ax.set_ylim(0.3, 5.6)
    ax.axis("off")
    return ax


def draw_yarn_ramp(pairs, turns, ramp, slowdown, beta_fast: float, beta_slow: float, low: float, high: float,
                   ax=None):
    """YaRN pair by pair: turns over the original context (log scale), the ramp, and the slow-down.

    ``pairs``, ``turns``, ``ramp``, ``slowdown`` are tensors or arrays of one value per rotated pair;
    ``low``, ``high`` the pair indices where the turns cross ``beta_fast`` and ``beta_slow``.
    """
    if ax is None:
        fig, ax = plt.subplots(2, 1, figsize=(COLUMN_INCHES, 5.2), sharex=True)
    top, bottom = ax
    top.semilogy(pairs, turns, "o-", ms=4, color=COLORS["rotary"], mec="black", mew=0.5)
    for beta, name in ((beta_fast, r"$\beta_{fast}$"), (beta_slow, r"$\beta_{slow}$")):
        top.axhline(beta, color="0.5", lw=0.8, ls="--")
        top.text(float(pairs[-1]), beta * 1.25, f"{name} = {beta:g} turns", ha="right", va="bottom",
                 fontsize=FONT, color="0.3")
    for x in (low, high):
        for a in ax:
            a.axvline(x, color="0.6", lw=0.8, ls=":")
    top.set_ylabel("turns over the\noriginal context")
    top.set_title("Which pairs YaRN stretches, and by how much")
    bottom.plot(pairs, ramp, "o-", ms=4, color=COLORS["highlight"], label=r"ramp $\rho_i$ (0 keep, 1 stretch)")
    twin = bottom.twinx()
    twin.plot(pairs, slowdown, "s--", ms=3, color=COLORS["linear_attention"], label=r"slow-down $\omega_i/\omega'_i$")
    twin.set_ylabel(r"$\omega_i / \omega'_i$", color=COLORS["linear_attention"])
    twin.spines["right"].set_visible(True)
    bottom.set_ylabel(r"ramp $\rho_i$")
    bottom.set_xlabel("rotated pair $i$")
    bottom.text(low, 1.08, f" low = {low:g}", ha="left", fontsize=FONT)
    bottom.text(high, -0.2, f"high = {high:g} ", ha="right", fontsize=FONT)
    bottom.set_ylim(-0.3, 1.25)
    lines = bottom.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    bottom.legend(lines, [ln.get_label() for ln in lines], loc="center left")
    return ax
