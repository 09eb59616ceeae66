"""What every diagram test checks: the figure fits the column, its lettering is at least 9 pt, and no
text runs past the edge of the figure (it would be cut off on the page)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from qwen3next.viz import COLUMN_INCHES  # noqa: E402
from qwen3next.viz.diagram import labels  # noqa: E402


def check_figure(fig) -> str:
    """Assert the book's rules for ``fig``; return all its text joined by newlines, for label checks."""
    width, _ = fig.get_size_inches()
    assert width <= COLUMN_INCHES + 1e-9, f"figure {width} inches wide, the column holds {COLUMN_INCHES}"
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    edge = fig.bbox
    for ax in fig.axes:
        for t in ax.texts:
            if not t.get_text():
                continue
            assert t.get_fontsize() >= 9, f"{t.get_text()!r} at {t.get_fontsize()} pt"
            box = t.get_window_extent(renderer)
            inside = box.x0 >= edge.x0 - 1 and box.x1 <= edge.x1 + 1 and box.y0 >= edge.y0 - 1 and box.y1 <= edge.y1 + 1
            assert inside, f"{t.get_text()!r} runs past the edge of the figure"
    return "\n".join(labels(fig))
