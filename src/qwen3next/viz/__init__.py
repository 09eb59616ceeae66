"""Figures shared by the chapters: the book's colours, the architecture drawings, and package source shown
highlighted.

Only drawing lives here; every number drawn comes from a config or from a tensor passed in. Each chapter's
own diagrams live in a module of this package named after the concept (``viz.architecture``, ...).
"""

from .architecture import draw_architecture, draw_layer_pattern
from .colors import COLORS, LABELS
from .source import show_source, source_lines
from .style import COLUMN_INCHES, inch_axes, use_book_style

__all__ = [
    "COLORS", "COLUMN_INCHES", "LABELS", "draw_architecture", "draw_layer_pattern", "inch_axes", "show_source",
    "source_lines", "use_book_style",
]
