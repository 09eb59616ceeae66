"""The whole stack drawn from a config: the data flow with tensor shapes, and the strip of layer types.

Chapter 01 draws both; chapter 08 the strip. Only drawing lives here; every number drawn comes from the
config passed in.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

from ..config import Qwen3NextConfig
from .colors import COLORS, LABELS
from .style import COLUMN_INCHES

FONT = 9  # points: the smallest label the book draws


def box(ax, x, y, w, h, text, color, fontsize=FONT, **text_kw):
    """A rounded box centred at (x, y) with centred text."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.06",
                                facecolor=color, edgecolor="black", linewidth=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, **text_kw)


def arrow(ax, x0, y0, x1, y1, label=None, color="black", side="right"):
    """An arrow from (x0, y0) to (x1, y1), optionally labelled beside its middle (a tensor shape)."""
    ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="-|>", lw=0.9, color=color,
                                                                  shrinkA=0, shrinkB=0))
    if label:
        dx = 0.08 if side == "right" else -0.08
        ax.text((x0 + x1) / 2 + dx, (y0 + y1) / 2, label, ha="left" if side == "right" else "right",
                va="center", fontsize=FONT, color="0.25", family="monospace")


def _heads(cfg: Qwen3NextConfig, kind: str) -> str:
    if kind == "full_attention":
        return f"{cfg.num_attention_heads} Q / {cfg.num_key_value_heads} KV heads of {cfg.head_dim}"
    return (f"{cfg.linear_num_key_heads} K / {cfg.linear_num_value_heads} V heads of "
            f"{cfg.linear_key_head_dim}")


def draw_architecture(cfg: Qwen3NextConfig, ax=None):
    """The data flow of the whole model, top to bottom, with the tensor shape on every arrow.

    Token ids -> embedding -> one group of ``full_attention_interval`` layers drawn in full (each a
    mixer then an MoE block, each added to the residual stream), repeated -> final norm -> LM head.
    """
    group = cfg.layer_types[: cfg.full_attention_interval]
    repeats = cfg.num_hidden_layers // cfg.full_attention_interval
    rows = 4 + 2 * len(group)
    if ax is None:
        ax = plt.subplots(figsize=(COLUMN_INCHES, 0.62 * rows + 0.6))[1]
    d, V = cfg.hidden_size, cfg.vocab_size
    stream = f"(B, T, {d})"
    x, w, h, step = 0.0, 3.3, 0.56, 1.0
    y = 0.0
    box(ax, x, y, w, h, "token ids", COLORS["tensor"])
    arrow(ax, x, y - h / 2, x, y - step + h / 2, "(B, T)")
    y -= step
    box(ax, x, y, w, h, f"embed_tokens  ({V:,} x {d})", COLORS["embed"])
    arrow(ax, x, y - h / 2, x, y - step + h / 2, stream)
    top = y - step + h / 2 + 0.08
    n = cfg.full_attention_interval
    for i, kind in enumerate(group):
        y -= step
        box(ax, x, y, w, h, f"RMSNorm -> {LABELS[kind]}\n{_heads(cfg, kind)}", COLORS[kind])
        ax.text(-w / 2 - 0.12, y - step / 2, f"layers\n{i}, {i + n}, …,\n{i + n * (repeats - 1)}", ha="right",
                va="center", fontsize=FONT, color="0.3")
        arrow(ax, x, y - h / 2, x, y - step + h / 2, stream)
        y -= step
        if cfg.is_moe_layer(i):
            text = (f"RMSNorm -> MoE: top-{cfg.num_experts_per_tok} of {cfg.num_experts} experts\n"
                    f"+ 1 shared expert, width {cfg.moe_intermediate_size}")
            box(ax, x, y, w, h, text, COLORS["moe"])
        else:
            box(ax, x, y, w, h, f"RMSNorm -> dense MLP ({cfg.intermediate_size})", COLORS["dense"])
        arrow(ax, x, y - h / 2, x, y - step + h / 2, stream)
    bottom = y - h / 2 - 0.08
    # the repeated group: a frame and how many times it repeats
    ax.add_patch(plt.Rectangle((-w / 2 - 1.05, bottom), w + 1.2, top - bottom, fill=False, lw=1.0, ls="--",
                               edgecolor="0.4"))
    ax.text(w / 2 + 0.3, (top + bottom) / 2 + 0.35, f"x {repeats}", ha="left", va="center", fontsize=12,
            fontweight="bold")
    ax.text(w / 2 + 0.3, (top + bottom) / 2 - 0.25, f"= {cfg.num_hidden_layers} layers;\neach block adds\n"
            "its output to the\nresidual stream", ha="left", va="center", fontsize=FONT, color="0.3")
    y -= step
    box(ax, x, y, w, h, "final RMSNorm", COLORS["norm"])
    arrow(ax, x, y - h / 2, x, y - step + h / 2, stream)
    y -= step
    box(ax, x, y, w, h, f"lm_head  ({d} -> {V:,})", COLORS["embed"])
    arrow(ax, x, y - h / 2, x, y - step + h / 2, f"(B, T, {V:,})")
    y -= step
    box(ax, x, y, w, h, "logits: a score for every token", COLORS["tensor"])
    ax.set_xlim(-w / 2 - 1.15, w / 2 + 2.0)
    ax.set_ylim(y - h, h)
    ax.axis("off")
    return ax


def draw_layer_pattern(cfg: Qwen3NextConfig, ax=None):
    """All layers as a strip of cells: the mixer's type on top, MoE or dense MLP below."""
    n = cfg.num_hidden_layers
    ax = ax or plt.subplots(figsize=(COLUMN_INCHES, 1.7))[1]
    for i, kind in enumerate(cfg.layer_types):
        for y, color in ((1, COLORS[kind]), (0, COLORS["moe" if cfg.is_moe_layer(i) else "dense"])):
            ax.add_patch(plt.Rectangle((i, y), 1, 0.9, facecolor=color, edgecolor="white", linewidth=1))
    ax.set_xlim(-0.1, n + 0.1)
    ax.set_ylim(-0.1, 2.0)
    ax.set_yticks([0.45, 1.45], ["MLP", "mixer"])
    step = max(1, n // 12)
    ax.set_xticks([i + 0.5 for i in range(0, n, step)], [str(i) for i in range(0, n, step)])
    ax.tick_params(length=0)
    ax.set_xlabel("layer index")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[k]) for k in ("linear_attention", "full_attention", "moe")]
    ax.legend(handles, ["Gated DeltaNet", "Gated Attention", "sparse MoE"], loc="lower center",
              bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False, fontsize=FONT)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return ax
