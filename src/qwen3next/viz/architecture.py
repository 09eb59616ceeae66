"""The whole stack drawn from a config: the architecture diagram and the strip of layer types (chapter 01).

Only drawing lives here; every number drawn comes from the config passed in.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

from ..config import Qwen3NextConfig
from .colors import COLORS, LABELS


def _box(ax, x, y, w, h, text, color, fontsize=9):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=color, edgecolor="black", linewidth=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, x, y0, y1):
    ax.annotate("", xy=(x, y1), xytext=(x, y0), arrowprops=dict(arrowstyle="->", lw=0.8))


def draw_architecture(cfg: Qwen3NextConfig, ax=None):
    """The stack bottom to top: embedding, the repeating group of layers, final norm, LM head.

    One group of ``full_attention_interval`` layers is drawn in full (each mixer followed by its MoE
    block) and labelled with how many times it repeats.
    """
    ax = ax or plt.subplots(figsize=(5.5, 9))[1]
    group = cfg.layer_types[: cfg.full_attention_interval]
    repeats = cfg.num_hidden_layers // cfg.full_attention_interval
    y, w = 0.0, 4.6
    _box(ax, 0, y, w, 0.6, f"embed_tokens  ({cfg.vocab_size:,} x {cfg.hidden_size})", COLORS["embed"])
    top_of_group = None
    for i, kind in enumerate(group):
        _arrow(ax, 0, y + 0.3, y + 0.7)
        y += 1.0
        heads = (f"{cfg.num_attention_heads} Q / {cfg.num_key_value_heads} KV heads"
                 if kind == "full_attention"
                 else f"{cfg.linear_num_key_heads} K / {cfg.linear_num_value_heads} V heads")
        _box(ax, 0, y, w, 0.6, f"RMSNorm -> {LABELS[kind]}\n({heads})", COLORS[kind], fontsize=8)
        _arrow(ax, 0, y + 0.3, y + 0.7)
        y += 1.0
        moe_text = (f"RMSNorm -> MoE: top-{cfg.num_experts_per_tok} of {cfg.num_experts} experts + shared"
                    if cfg.is_moe_layer(i) else f"RMSNorm -> dense MLP ({cfg.intermediate_size})")
        _box(ax, 0, y, w, 0.6, moe_text, COLORS["moe" if cfg.is_moe_layer(i) else "dense"], fontsize=8)
        if i == 0:
            bottom_of_group = y - 1.3
        top_of_group = y + 0.3
    # the bracket that says the group repeats
    ax.plot([w / 2 + 0.2, w / 2 + 0.35, w / 2 + 0.35, w / 2 + 0.2],
            [bottom_of_group, bottom_of_group, top_of_group, top_of_group], color="black", lw=1)
    ax.text(w / 2 + 0.45, (bottom_of_group + top_of_group) / 2, f"x {repeats}\n({cfg.num_hidden_layers} layers)",
            va="center", fontsize=11, fontweight="bold")
    _arrow(ax, 0, y + 0.3, y + 0.7)
    y += 1.0
    _box(ax, 0, y, w, 0.6, "final RMSNorm", COLORS["norm"])
    _arrow(ax, 0, y + 0.3, y + 0.7)
    y += 1.0
    _box(ax, 0, y, w, 0.6, f"lm_head  ({cfg.hidden_size} -> {cfg.vocab_size:,})", COLORS["embed"])
    ax.text(-w / 2 - 0.1, 2.0, "every mixer and\nMLP block adds\nits output to the\nresidual stream", fontsize=7,
            ha="right", va="center", color="0.3")
    ax.set_xlim(-w / 2 - 1.6, w / 2 + 1.6)
    ax.set_ylim(-0.6, y + 0.6)
    ax.axis("off")
    return ax


def draw_layer_pattern(cfg: Qwen3NextConfig, ax=None):
    """All layers as a strip of cells: the mixer's type on top, MoE or dense MLP below."""
    n = cfg.num_hidden_layers
    ax = ax or plt.subplots(figsize=(max(6, n * 0.22), 1.8))[1]
    for i, kind in enumerate(cfg.layer_types):
        ax.add_patch(plt.Rectangle((i, 1), 0.9, 0.9, color=COLORS[kind]))
        ax.add_patch(plt.Rectangle((i, 0), 0.9, 0.9, color=COLORS["moe" if cfg.is_moe_layer(i) else "dense"]))
    ax.set_xlim(-0.2, n + 0.1)
    ax.set_ylim(-0.1, 2.0)
    ax.set_yticks([0.45, 1.45], ["MLP", "mixer"])
    step = max(1, n // 12)
    ax.set_xticks([i + 0.45 for i in range(0, n, step)], [str(i) for i in range(0, n, step)])
    ax.set_xlabel("layer index")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[k]) for k in ("linear_attention", "full_attention", "moe")]
    ax.legend(handles, ["Gated DeltaNet", "Gated Attention", "sparse MoE"], loc="upper center",
              bbox_to_anchor=(0.5, 1.45), ncol=3, frameon=False, fontsize=8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return ax
