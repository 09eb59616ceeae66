"""The whole model's forward pass as a data-flow diagram with tensor shapes (chapter 08).

Token ids are embedded, pass through the decoder layers (each: norm, token mixer, residual add; norm,
MoE, residual add), the final norm and the LM head. The sizes come from the config passed in. Also the
logit-lens grid of a trained model: what the stream predicts after each layer.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..config import Qwen3NextConfig
from .colors import COLORS
from .diagram import arrow, box, canvas, note
from .style import COLUMN_INCHES


def draw_model_forward(cfg: Qwen3NextConfig, batch: str = "B", tokens: str = "T"):
    """Ids ``(batch, tokens)`` to logits through the stack, one decoder layer drawn in full; returns the figure."""
    H, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    n_attn = cfg.layer_types.count("full_attention")
    attn_layers = [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"]
    stream = f"({batch}, {tokens}, {H})"
    fig, ax = canvas(6.3)
    rx = 1.3  # the residual stream runs down this line

    box(ax, rx, 5.95, 1.9, 0.4, f"input_ids ({batch}, {tokens})", "white")
    arrow(ax, (rx, 5.75), (rx, 5.4))
    box(ax, rx, 5.2, 2.3, 0.4, f"embed_tokens ({V:,} x {H})", COLORS["embed"])
    arrow(ax, (rx, 5.0), (rx, 4.55), f"h   {stream}")

    # one decoder layer: two pre-norm residual blocks
    mixer = f"token mixer, one of:\nGated DeltaNet ({L - n_attn} layers)\ngated attention ({n_attn} layers)"
    halves = [(4.15, 3.45, mixer, COLORS["linear_attention"], "input_layernorm"),
              (2.65, 1.95, f"sparse MoE: {cfg.num_experts_per_tok} of {cfg.num_experts}\nexperts + shared "
               "expert", COLORS["moe"], "post_attention_layernorm")]
    y_in = 4.55
    for y, y_add, text, color, norm in halves:
        ax.plot([rx, rx], [y_in, y_add + 0.17], color="black", lw=0.9)
        ax.plot([rx, 2.0], [y, y], color="black", lw=0.9)
        box(ax, 3.0, y, 2.0, 0.5, f"{norm}\n(RMSNorm)", COLORS["norm"])
        arrow(ax, (4.0, y), (4.25, y))
        box(ax, 5.5, y, 2.5, 0.66, text, color)
        ax.plot([5.5, 5.5, rx + 0.2], [y - 0.33, y_add, y_add], color="black", lw=0.9)
        arrow(ax, (rx + 0.3, y_add), (rx + 0.18, y_add))
        box(ax, rx, y_add, 0.34, 0.34, "+", "white")
        note(ax, 3.2, y_add + 0.12, f"adds {stream}")
        y_in = y_add - 0.17
    note(ax, 5.5, 4.15 + 0.52, f"attention at layers {attn_layers[0]}, {attn_layers[1]}, ..., "
         f"{attn_layers[-1]}", ha="center")
    # the bracket: the layer repeats
    ax.plot([0.62, 0.52, 0.52, 0.62], [1.72, 1.72, 4.5, 4.5], color="black", lw=0.9)
    note(ax, 0.05, 3.1, f"x {L}", color="black", fontweight="bold")
    arrow(ax, (rx, 1.78), (rx, 1.45), stream)
    box(ax, rx, 1.25, 1.9, 0.4, "norm (RMSNorm)", COLORS["norm"])
    arrow(ax, (rx, 1.05), (rx, 0.75), stream)
    box(ax, rx, 0.55, 2.3, 0.4, f"lm_head ({H} -> {V:,})", COLORS["embed"])
    arrow(ax, (rx + 1.15, 0.55), (rx + 1.55, 0.55))
    note(ax, rx + 1.62, 0.55, f"logits ({batch}, {tokens}, {V:,}): a score per vocabulary entry",
         color="black")
    return fig


def draw_logit_lens(tokens, top_tokens, p_next, layer_names):
    """The logit lens as a grid: one column per input token, one row per read-out point.

    ``tokens`` are the input pieces (their text), ``top_tokens[r][t]`` the most likely next piece read
    out at point ``r`` (after the embedding, after each layer), ``p_next[r][t]`` the probability that
    read-out gives the piece that really comes next (the cell's colour). Returns the figure.
    """
    rows, cols = len(layer_names), len(tokens)
    fig, ax = plt.subplots(figsize=(COLUMN_INCHES, 0.32 * rows + 1.8))
    im = ax.imshow(np.asarray(p_next, dtype=float), cmap="Greens", vmin=0, vmax=1, aspect="auto")
    for r in range(rows):
        for t in range(cols):
            dark = p_next[r][t] > 0.6
            ax.text(t, r, _piece(top_tokens[r][t]), ha="center", va="center", fontsize=9,
                    color="white" if dark else "black")
    ax.set_xticks(range(cols), [_piece(s) for s in tokens], rotation=90)
    ax.set_yticks(range(rows), layer_names)
    ax.tick_params(length=0)
    ax.set_xlabel("input token (the cell: the most likely next token read out there)")
    # above the grid, so that the grid keeps the column's whole width for its token labels
    fig.colorbar(im, ax=ax, label="p(true next token)", location="top", fraction=0.05, pad=0.02,
                 aspect=40)
    return fig


def _piece(text: str) -> str:
    """A token's text as a short label: a leading space as '_', a newline as '\\n'."""
    return text.replace("\n", "\\n").replace(" ", "_")[:6]
