"""The hybrid cache as a diagram with tensor shapes and bytes (chapter 08).

One repeating group of layers is drawn with what each layer keeps between forward passes: a Gated
DeltaNet layer its conv window and its recurrent state, both of constant size, an attention layer its
keys and values, which grow with the number of tokens ``T``. The sizes come from the config and from
``qwen3next.accounting.cache_bytes``.
"""

from __future__ import annotations

from ..accounting import cache_bytes
from ..config import Qwen3NextConfig
from .colors import COLORS, LABELS
from .diagram import box, canvas, note

DTYPE_NAMES = {1: "fp8", 2: "bf16", 4: "fp32"}


def _size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n:.0f} B"


def draw_hybrid_cache(cfg: Qwen3NextConfig, tokens: int, batch_size: int = 1, activation_bytes: int = 2,
                      state_bytes: int = 4):
    """What each layer of one repeating group caches, with shapes, for ``tokens`` tokens; returns the figure."""
    B, T = batch_size, tokens
    group = cfg.layer_types[: cfg.full_attention_interval]
    repeats = cfg.num_hidden_layers // len(group)
    n_attn, n_lin = cfg.layer_types.count("full_attention"), cfg.layer_types.count("linear_attention")
    conv = (B, cfg.linear_conv_dim, cfg.linear_conv_kernel_dim)
    rec = (B, cfg.linear_num_value_heads, cfg.linear_key_head_dim, cfg.linear_value_head_dim)
    act, st = DTYPE_NAMES.get(activation_bytes, f"{activation_bytes} B"), DTYPE_NAMES.get(state_bytes, "")
    per_layer = cache_bytes(cfg, T, B, activation_bytes, state_bytes)
    kv_token = 2 * cfg.num_key_value_heads * cfg.head_dim * activation_bytes * B  # K and V, one layer

    fig, ax = canvas(0.75 * len(group) + 1.25)
    top = 0.75 * len(group) + 0.6
    for i, kind in enumerate(group):
        y = top - 0.75 * i
        box(ax, 0.8, y, 1.4, 0.52, f"layer {i}\n{LABELS[kind]}", COLORS[kind])
        if kind == "linear_attention":
            box(ax, 2.45, y, 1.7, 0.52, f"conv state\n{conv} {act}", COLORS["norm"])
            box(ax, 4.55, y, 2.3, 0.52, f"recurrent state\n{rec} {st}", COLORS["norm"])
            note(ax, 5.78, y, _size(per_layer.deltanet / n_lin))
        else:
            kv_shape = f"({B}, {cfg.num_key_value_heads}, T, {cfg.head_dim})"
            for row, name in ((0.13, "K"), (-0.13, "V")):
                ax.add_patch(_bar(1.6, y + row - 0.1, 3.6, 0.2))
                note(ax, 1.68, y + row, f"{name} {kv_shape} {act}", color="black")
                ax.annotate("", xy=(5.55, y + row), xytext=(5.2, y + row),
                            arrowprops=dict(arrowstyle="-|>", lw=0.9, mutation_scale=9))
            note(ax, 5.62, y, f"grows with T:\n+{_size(kv_token)} per token")
    # the bracket: the group repeats down the stack
    y0, y1 = top - 0.75 * (len(group) - 1) - 0.28, top + 0.28
    ax.plot([0.06, 0.0, 0.0, 0.06], [y0, y0, y1, y1], color="black", lw=0.9, clip_on=False)
    note(ax, 0.1, y1 + 0.2, f"x {repeats}: layers 0-{cfg.num_hidden_layers - 1}, B = {B}", color="black")
    note(ax, 0.1, 0.6, f"{n_lin} DeltaNet layers: {_size(per_layer.deltanet)} whatever the length "
         f"(conv {_size(per_layer.deltanet_conv)}, states {_size(per_layer.deltanet_recurrent)})")
    note(ax, 0.1, 0.25, f"{n_attn} attention layers: {_size(n_attn * kv_token)} per token, "
         f"{_size(per_layer.attention_kv)} at T = {T:,}")
    return fig


def _bar(x, y, w, h):
    from matplotlib.patches import FancyBboxPatch

    return FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.04",
                          facecolor=COLORS["full_attention"], alpha=0.35, edgecolor="black", linewidth=0.6)
