"""Building blocks of the book's data-flow diagrams: labelled boxes and arrows on an axis measured in inches.

A diagram is drawn on one axis whose data units are inches of the figure (``canvas``), so a box of
width 2 holds about 28 characters at 9 pt wherever it sits, and every diagram of the book has the same
lettering. Only drawing lives here; the concept modules (``viz.moe``, ``viz.cache``, ...) decide what
to draw, from a config.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

from .style import COLUMN_INCHES

FONT = 9  # points: the smallest size the book prints
SHAPE_COLOR = "0.25"  # tensor shapes are written in dark grey next to the arrows that carry them


def canvas(height: float, width: float = COLUMN_INCHES):
    """A figure ``width`` x ``height`` inches with one axis in inch units, origin at the bottom left."""
    fig = plt.figure(figsize=(width, height), layout="none")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    return fig, ax


def box(ax, x: float, y: float, w: float, h: float, text: str, color: str = "white", **text_kw):
    """A rounded box centred at ``(x, y)``, ``w`` x ``h`` inches, with ``text`` in its middle."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.06",
                                facecolor=color, edgecolor="black", linewidth=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=FONT, **text_kw)


def arrow(ax, start: tuple[float, float], end: tuple[float, float], label: str | None = None,
          side: str = "right", color: str = "black", style: str = "-|>"):
    """An arrow from ``start`` to ``end``; ``label`` (a tensor shape, say) is written beside its middle."""
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle=style, lw=0.9, color=color, shrinkA=0, shrinkB=0,
                                mutation_scale=9))
    if label:
        mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
        dx = 0.06 if side == "right" else -0.06
        ax.text(mx + dx, my, label, ha="left" if side == "right" else "right", va="center", fontsize=FONT,
                color=SHAPE_COLOR)


def note(ax, x: float, y: float, text: str, ha: str = "left", **text_kw):
    """Plain text (an explanation, a count) at ``(x, y)``."""
    kw = {"fontsize": FONT, "va": "center", "ha": ha, "color": SHAPE_COLOR, **text_kw}
    ax.text(x, y, text, **kw)


def labels(fig) -> list[str]:
    """Every text drawn on ``fig`` (for the tests: a diagram must show the shapes it promises)."""
    return [t.get_text() for ax in fig.axes for t in ax.texts]
