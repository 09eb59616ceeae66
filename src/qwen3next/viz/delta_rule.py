"""Diagrams of the gated delta rule (chapter 05): the chunked form's state passing.

Only drawing lives here; every size drawn is passed in (the release's by default: chunks of 64 tokens,
heads of 128 key and 128 value dimensions).
"""

from __future__ import annotations

from .attention import FONT, ROLE_COLORS, Box, draw_flow
from .style import COLUMN_INCHES

PARALLEL = "#D6E6F8"  # light blue: work done for every chunk at once


def draw_chunkwise_state_passing(n_chunks: int = 3, C: int = 64, Dk: int = 128, Dv: int = 128, ax=None):
    """The chunked delta rule for one value head: ``n_chunks`` chunks of ``C`` tokens.

    Top row: each chunk's tokens. Second row: what a chunk computes from its own tokens alone, for all
    chunks at once (the UT transform ``T`` and the products ``U``, ``W``). Third row: the one sequential
    part, the state ``h`` (``Dk x Dv``) handed from chunk to chunk. Bottom row: each chunk's outputs.
    """
    boxes, arrows = {}, []
    for n in range(n_chunks + 1):
        boxes[f"h{n}"] = Box(2 * n, 2, f"h{n}\n({Dk}, {Dv})", ROLE_COLORS["state"])
    for n in range(n_chunks):
        col = 2 * n + 1
        boxes[f"tok{n}"] = Box(col, 0, f"chunk {n + 1}: tokens\n{n * C}-{(n + 1) * C - 1}", ROLE_COLORS["input"])
        boxes[f"par{n}"] = Box(col, 1, f"T = (I + A)^-1  ({C}, {C})\nU ({C}, {Dv}),  W ({C}, {Dk})", PARALLEL)
        boxes[f"seq{n}"] = Box(col, 2, "V' = U - W h\nO, next h", "white")
        boxes[f"out{n}"] = Box(col, 3, f"O{n + 1}  ({C}, {Dv})", ROLE_COLORS["value"])
        arrows += [(f"tok{n}", f"par{n}"), (f"par{n}", f"seq{n}"), (f"h{n}", f"seq{n}"),
                   (f"seq{n}", f"h{n + 1}"), (f"seq{n}", f"out{n}")]
    ax = draw_flow(boxes, arrows, ax=ax, size=(COLUMN_INCHES, 3.6),
                   title="Chunkwise: parallel inside a chunk, the state passed between chunks")
    # the two kinds of work, as bands behind the boxes
    ax.axhspan(-1.45, -0.55, color=PARALLEL, alpha=0.35, zorder=0)
    ax.axhspan(-2.45, -1.55, color=ROLE_COLORS["state"], alpha=0.15, zorder=0)
    ax.text(-0.55, -0.6, "all chunks at once", fontsize=FONT, va="top", color="0.3")
    ax.text(-0.55, -1.6, "one chunk after another", fontsize=FONT, va="top", color="0.3")
    return ax
