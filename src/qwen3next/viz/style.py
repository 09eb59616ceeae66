"""The book's figure style: one look for every figure, sized for the page it appears on.

The HTML column is about 700 CSS pixels wide, so a figure is drawn at most ~6.8 inches wide at 100 dpi
(shown without shrinking, labels at their point size) and rendered at twice that density ("retina"), so it
stays sharp on high-density screens. Labels are at least 9 pt.
"""

from __future__ import annotations

# the widest a figure may be drawn and still be shown at its own size in the book's column
COLUMN_INCHES = 6.8

BOOK_RC = {
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "savefig.pad_inches": 0.04,  # a figure drawn COLUMN_INCHES wide stays within the 688-pixel column
    "figure.figsize": (COLUMN_INCHES, 3.8),
    "figure.constrained_layout.use": True,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def use_book_style() -> None:
    """Apply the book's matplotlib settings; in a notebook, also render inline figures at 2x density."""
    import matplotlib as mpl

    mpl.rcParams.update(BOOK_RC)
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:
        return
    if get_ipython() is not None:
        set_matplotlib_formats("retina")


def inch_axes(height: float, width: float = COLUMN_INCHES):
    """A new figure ``width`` x ``height`` inches whose one axes fills it, in inches, with no frame.

    For diagrams placed by hand (boxes, arrows, text): a unit is an inch, so a 9 pt label's size on
    the page is known when the boxes around it are laid out.
    """
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(width, height), layout="none")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    return ax
