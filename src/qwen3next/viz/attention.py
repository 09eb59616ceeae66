"""Diagrams of gated attention (chapter 04), and the two drawing tools chapters 04-06 share.

* :func:`draw_flow`: a data-flow diagram from boxes placed on a grid and arrows between them, each arrow
  labelled with the shape of the tensor it carries. Chapters 04, 05 and 06 draw their layers with it.
* :func:`draw_row_groups`: the output rows of a fused projection as a coloured strip, whole and zoomed,
  for weights whose rows are interleaved per head (``q_proj`` here, ``in_proj_qkvz`` in chapter 06).
* :func:`draw_gated_attention`: the gated-attention layer with the shapes of a config;
  :func:`draw_q_proj_rows`: the per-head ``[query | gate]`` rows of ``q_proj``.

Only drawing lives here; every number drawn comes from the config passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt

from .colors import COLORS
from .style import COLUMN_INCHES

# one colour per role, the same in every diagram of chapters 04-06
ROLE_COLORS = {
    "input": COLORS["norm"],
    "query": COLORS["linear_attention"],
    "key": COLORS["full_attention"],
    "value": COLORS["moe"],
    "gate": COLORS["embed"],
    "op": "white",
    "state": "#FFE08A",
}
FONT = 9  # the book's smallest label size


@dataclass
class Box:
    """One box of a data-flow diagram: grid position (column, row; row 0 at the top), text, colour."""

    col: float
    row: float
    text: str
    color: str = "white"


def draw_flow(boxes: dict[str, Box], arrows: list[tuple], title: str = "", size=None, ax=None):
    """Draw ``boxes`` and the ``arrows`` between them; return the axes.

    ``arrows`` holds ``(source, target)``, ``(source, target, label)`` or ``(source, target, label, side)``
    tuples naming boxes; the label (the shape the arrow carries) is written at the arrow's middle, on its
    ``side``: ``"right"`` (the default), ``"left"``, or an offset ``(dx, dy)`` in grid units from the middle
    (text starting there). Boxes size themselves to their text.
    """
    rows = max(b.row for b in boxes.values())
    if ax is None:
        _, ax = plt.subplots(figsize=size or (COLUMN_INCHES, 0.55 * (rows + 1) + 0.4))
    texts = {}
    for name, b in boxes.items():
        texts[name] = ax.text(b.col, -b.row, b.text, ha="center", va="center", fontsize=FONT, zorder=3,
                              bbox=dict(boxstyle="round,pad=0.35", facecolor=b.color, edgecolor="0.25",
                                        linewidth=0.8))
    for arrow in arrows:
        source, target = arrow[:2]
        label = arrow[2] if len(arrow) > 2 else None
        side = arrow[3] if len(arrow) > 3 else "right"
        if source not in boxes or target not in boxes:
            raise KeyError(f"arrow {arrow}: both ends must be boxes, known boxes are {sorted(boxes)}")
        a, b = boxes[source], boxes[target]
        ax.annotate("", xy=(b.col, -b.row), xytext=(a.col, -a.row), zorder=2,
                    arrowprops=dict(arrowstyle="-|>", color="0.2", lw=0.9, shrinkA=0, shrinkB=0,
                                    patchA=texts[source].get_bbox_patch(),
                                    patchB=texts[target].get_bbox_patch()))
        if label:
            x, y = (a.col + b.col) / 2, -(a.row + b.row) / 2
            dx, dy = {"right": (0.06, 0.0), "left": (-0.06, 0.0)}.get(side, side)
            ax.text(x + dx, y - dy, label, ha="right" if side == "left" else "left", va="center", fontsize=FONT,
                    color="0.25", style="italic", zorder=4,
                    bbox=dict(boxstyle="square,pad=0.05", facecolor="white", edgecolor="none", alpha=0.85))
    cols = [b.col for b in boxes.values()]
    ax.set_xlim(min(cols) - 0.6, max(cols) + 0.6)
    ax.set_ylim(-rows - 0.5, 0.5)
    ax.axis("off")
    if title:
        ax.set_title(title)
    return ax


def draw_row_groups(parts, n_groups: int, zoom: int = 2, title: str = "", label_every=None):
    """A fused projection's output rows: ``n_groups`` repeats of ``parts``, whole (top) and the first ``zoom``
    groups with every part named (bottom). Returns the figure.

    ``parts`` is a list of ``(rows, color, label)`` where ``label(j)`` names that part in group ``j``
    (e.g. ``lambda j: f"q{j}"``). ``label_every``: the step, in groups, of the ticks on the whole strip.
    """
    group = sum(p[0] for p in parts)
    fig, (whole, detail) = plt.subplots(2, 1, figsize=(COLUMN_INCHES, 2.3))
    for ax, groups in ((whole, n_groups), (detail, zoom)):
        for j in range(groups):
            start = j * group
            for rows, color, label in parts:
                ax.barh(0, rows, left=start, height=1, color=color, edgecolor="white" if ax is detail else color,
                        linewidth=0.6)
                if ax is detail:
                    ax.text(start + rows / 2, 0, label(j), ha="center", va="center", fontsize=FONT)
                start += rows
        ax.set_xlim(0, groups * group)
        ax.set_ylim(-0.5, 0.5)
        ax.set_yticks([])
        for side in ("left", "top", "right"):
            ax.spines[side].set_visible(False)
    step = label_every or max(1, n_groups // 4)
    whole.set_xticks([j * group for j in range(0, n_groups + 1, step)])
    whole.set_title(title)
    detail.set_xticks([j * group for j in range(zoom + 1)])
    detail.set_xlabel(f"output row (zoom on the first {zoom} of {n_groups} groups of {group:,} rows)")
    return fig


# ------------------------------------------------------------------------------------ gated attention
def draw_q_proj_rows(cfg, zoom: int = 3):
    """The rows of ``q_proj.weight``: per head, ``head_dim`` query rows, then ``head_dim`` gate rows."""
    D = cfg.head_dim
    parts = [(D, ROLE_COLORS["query"], lambda h: f"q{h}"), (D, ROLE_COLORS["gate"], lambda h: f"g{h}")]
    H = cfg.num_attention_heads
    return draw_row_groups(parts, H, zoom=zoom,
                           title=f"q_proj's {2 * H * D:,} rows: [query {D} | gate {D}] for each of {H} heads")


def draw_gated_attention(cfg, ax=None):
    """The gated-attention layer as a data flow, with the shapes of ``cfg`` (B sequences of T tokens)."""
    H, Hkv, D, hid = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
    rot = int(D * cfg.partial_rotary_factor)
    c = ROLE_COLORS
    boxes = {
        "x": Box(1.6, 0, f"x   (B, T, {hid})", c["input"]),
        "q_proj": Box(0.5, 1, f"q_proj  {hid} → {2 * H * D}", c["op"]),
        "k_proj": Box(2.2, 1, f"k_proj  {hid} → {Hkv * D}", c["op"]),
        "v_proj": Box(3.4, 1, f"v_proj  {hid} → {Hkv * D}", c["op"]),
        "split": Box(0.5, 2, f"view as {H} heads of {2 * D}:\n[query {D} | gate {D}]", c["op"]),
        "gate": Box(0.0, 3, "gate", c["gate"]),
        "q": Box(1.0, 3, "q", c["query"]),
        "k": Box(2.2, 3, "k", c["key"]),
        "v": Box(3.4, 3, "v", c["value"]),
        "q_norm": Box(1.0, 4, f"q_norm (RMSNorm {D})", c["op"]),
        "k_norm": Box(2.2, 4, f"k_norm (RMSNorm {D})", c["op"]),
        "rope_q": Box(1.0, 5, f"RoPE, dims 0-{rot - 1}", c["op"]),
        "rope_k": Box(2.2, 5, f"RoPE, dims 0-{rot - 1}", c["op"]),
        "cache": Box(3.4, 5, "KV cache:\nappends k, v", c["state"]),
        "sigmoid": Box(0.0, 6, "sigmoid", c["gate"]),
        "attn": Box(1.9, 6, f"causal softmax(q·k / {D ** 0.5:g}) v\n"
                            f"{H // Hkv} query heads per KV head", c["op"]),
        "mul": Box(1.0, 7, "⊙  (each output times its gate)", c["gate"]),
        "o_proj": Box(1.0, 8, f"o_proj  {H * D} → {hid}", c["op"]),
        "y": Box(1.0, 9, f"y   (B, T, {hid})", c["input"]),
    }
    arrows = [
        ("x", "q_proj"), ("x", "k_proj"), ("x", "v_proj"),
        ("q_proj", "split", f"(B, T, {2 * H * D})"),
        ("split", "gate"), ("split", "q", f"(B, T, {H}, {D}) each", (0.15, 0.0)),
        ("k_proj", "k", f"(B, T, {Hkv}, {D})", "left"), ("v_proj", "v", f"(B, T, {Hkv}, {D})", "left"),
        ("q", "q_norm"), ("q_norm", "rope_q"), ("k", "k_norm"), ("k_norm", "rope_k"),
        ("v", "cache"), ("rope_k", "cache"),
        ("gate", "sigmoid", f"(B, T, {H * D})"),
        ("rope_q", "attn"), ("cache", "attn", f"k, v (B, {Hkv}, S, {D})", (0.05, 0.3)),
        ("attn", "mul", f"(B, T, {H * D})", (0.2, 0.05)), ("sigmoid", "mul"),
        ("mul", "o_proj"), ("o_proj", "y"),
    ]
    return draw_flow(boxes, arrows, title="Gated attention, one layer", ax=ax)
