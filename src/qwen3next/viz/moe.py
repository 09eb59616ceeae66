"""The sparse MoE block as a data-flow diagram with tensor shapes (chapter 07).

Every number drawn comes from the config passed in: the router's softmax over all experts, the top-k,
the renormalisation, the sort of the token-expert assignments, each hit expert's SwiGLU on its own
rows, the weighted ``index_add_`` back into the tokens' rows, and the shared expert with its sigmoid
gate, added on top. Also what a trained router does: which kinds of token each expert takes.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..config import Qwen3NextConfig
from .colors import COLORS
from .diagram import arrow, box, canvas, note
from .style import COLUMN_INCHES

ROUTER = "#F3E9B5"  # the router's steps: light, so the experts (COLORS["moe"]) stand out


def draw_moe_dispatch(cfg: Qwen3NextConfig, tokens: str = "N"):
    """The MoE block's forward pass for ``tokens`` token rows, with the shape of every tensor; returns the figure."""
    E, k, H = cfg.num_experts, cfg.num_experts_per_tok, cfg.hidden_size
    I, Is = cfg.moe_intermediate_size, cfg.shared_expert_intermediate_size
    N = tokens
    fig, ax = canvas(6.9)
    cx, w = 1.95, 3.5  # the routed path

    box(ax, 3.4, 6.55, 3.0, 0.4, f"hidden states x   ({N}, {H})", "white")
    arrow(ax, (2.6, 6.35), (cx, 5.93))
    arrow(ax, (4.0, 6.35), (4.75, 5.93))
    arrow(ax, (4.4, 6.35), (6.12, 5.93))

    steps = [  # (text, shape of what comes out)
        (f"router logits  x W_r^T   (W_r: {E} x {H})", f"({N}, {E})"),
        (f"softmax over all {E} experts, in float32", f"({N}, {E})  p"),
        (f"top-{k}: the {k} largest p of each row", f"({N}, {k})  experts, p_T"),
        ("renormalise:  g = p_T / sum(p_T)", f"({N}, {k})  g, rows sum to 1"),
        (f"sort the {N} x {k} assignments by expert", f"{N}*{k} rows, one slice per hit expert"),
    ]
    y = 5.75
    for i, (text, shape) in enumerate(steps):
        box(ax, cx, y, w, 0.36, text, ROUTER)
        end = y - 0.52 if i < len(steps) - 1 else y - 0.72
        arrow(ax, (cx, y - 0.18), (cx, end), shape)
        y -= 0.7
    # one box per hit expert, stacked: the same SwiGLU on each expert's own slice of rows
    ey = y - 0.48
    for off in (0.1, 0.05):
        box(ax, cx + off, ey + off, w, 0.76, "", COLORS["moe"])
    box(ax, cx, ey, w, 0.76, f"expert e (each hit expert in turn):\nSwiGLU ({H} -> {I} -> {H})"
        f" on its n_e rows\n(n_e, {H}) -> (n_e, {I}) -> (n_e, {H}),  x g", COLORS["moe"])
    arrow(ax, (cx, ey - 0.38), (cx, ey - 0.78), f"(n_e, {H}) and its n_e token indices")
    by = ey - 0.98
    box(ax, cx, by, w, 0.4, f"y_routed.index_add_(0, tokens, out)\n({N}, {H}), float32, expert by expert",
        "white")

    # the shared expert and its gate both read x; the gate scales the expert's output per token
    ex, gx, top = 4.75, 6.12, 5.6
    box(ax, ex, top, 1.3, 0.66, f"shared expert\nSwiGLU\n{H}->{Is}->{H}", COLORS["moe"])
    box(ax, gx, top, 1.25, 0.66, f"gate\nsigmoid(x w_s)\nw_s: 1 x {H}", ROUTER)
    mx, my = 5.45, 4.45
    arrow(ax, (ex, top - 0.33), (mx - 0.15, my + 0.18), f"({N}, {H})", side="left")
    arrow(ax, (gx, top - 0.33), (mx + 0.15, my + 0.18), f"({N}, 1)")
    box(ax, mx, my, 0.5, 0.36, "\u00d7", "white")
    arrow(ax, (mx, my - 0.18), (mx, by + 0.2), f"({N}, {H})")
    arrow(ax, (cx + w / 2, by), (mx - 0.4, by))
    box(ax, mx, by, 0.8, 0.4, "+", "white")
    arrow(ax, (mx, by - 0.2), (mx, by - 0.5))
    note(ax, mx, by - 0.64, f"y   ({N}, {H})", ha="center")
    note(ax, mx - 0.1, 3.5, f"each token: {k} of {E}\nrouted experts, plus\nthe shared one", ha="right")
    return fig


def draw_expert_specialisation(share, class_names, title: str, mark: float = 0.3):
    """A heatmap of ``share[c][e]``: the fraction of the tokens of kind ``class_names[c]`` whose first
    choice is expert ``e`` (each row sums to 1); cells of at least ``mark`` get their percentage
    written in. Returns the figure."""
    share = np.asarray(share, dtype=float)
    rows, experts = share.shape
    fig, ax = plt.subplots(figsize=(COLUMN_INCHES, 0.33 * rows + 1.4))
    im = ax.imshow(share, cmap="Greens", vmin=0, vmax=1, aspect="auto")
    for c, e in zip(*np.nonzero(share >= mark), strict=True):
        ax.text(e, c, f"{share[c, e]:.0%}", ha="center", va="center", fontsize=9,
                color="white" if share[c, e] > 0.6 else "black")
    ax.set_xticks(range(experts), [str(e) for e in range(experts)])
    ax.set_yticks(range(rows), class_names)
    ax.set(xlabel="expert (first choice)", title=title)
    ax.tick_params(length=0)
    fig.colorbar(im, ax=ax, label="share of the kind's tokens", fraction=0.04, pad=0.02)
    return fig
