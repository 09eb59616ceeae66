"""Draw the figures of the book's Markdown pages (the intro, the teachers' page) into book/figures/.

Usage::

    python -m tools.book_figures          # writes book/figures/*.png
    python -m tools.book_figures --check  # exits 1 if a figure is missing or its page shows it at
                                          # another width than it was drawn

The chapters draw their figures when they run; the Markdown pages are not run, so their figures are
drawn here, with the book style (:func:`qwen3next.viz.use_book_style`: 9 pt labels, drawn at most
``COLUMN_INCHES`` wide) and saved at 2x density. Each page shows a figure with ``:width:`` equal to
its drawn width in CSS pixels (100 per inch), so labels stay 9 pt on the page.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

from qwen3next import Qwen3NextConfig  # noqa: E402
from qwen3next.accounting import parameter_counts  # noqa: E402
from qwen3next.viz import COLORS, COLUMN_INCHES, inch_axes, use_book_style  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "book" / "figures"
DPI = 200  # 2x the book style's 100 dpi
PAGES = {"intro_hybrid.png": "book/intro.md", "chapter_graph.png": "book/teachers.md"}

# The chapters and what each needs first (an arrow a -> b: read a before b).
CHAPTERS = {
    "01": "overview", "02": "tokenizer", "03": "norms,\nRoPE", "04": "gated\nattention",
    "05": "delta rule", "06": "Gated\nDeltaNet", "07": "MoE", "08": "model,\ncache",
    "09": "real\ncheckpoint", "10": "training", "11": "speculative\ndecoding", "12": "serving",
}
NEEDS = {
    "02": ["01"], "03": ["01"], "04": ["03"], "05": ["01"], "06": ["03", "05"], "07": ["01"],
    "08": ["02", "04", "06", "07"], "09": ["08"], "10": ["08"], "11": ["09", "10"], "12": ["09"],
}
# Where each chapter sits in the drawing: (x in inches, row from the top), placed so no arrow crosses a box.
PLACE = {
    "01": (3.4, 0), "02": (0.75, 1), "03": (2.75, 1), "05": (4.0, 1), "07": (5.9, 1), "04": (2.75, 2),
    "06": (4.0, 2), "08": (3.4, 3), "09": (2.2, 4), "10": (4.6, 4), "12": (0.9, 5), "11": (3.4, 5),
}


def _save(ax, path: Path) -> float:
    """Save the figure of ``ax`` at 2x density; return its width in inches."""
    fig = ax.figure
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return fig.get_figwidth()


def draw_intro(path: Path) -> float:
    """What is new, in one picture: a group of four layers, the memory each mixer keeps, and the 10 of
    512 experts one token uses."""
    cfg = Qwen3NextConfig.full()
    ax = inch_axes(4.0)
    group = cfg.layer_types[: cfg.full_attention_interval]
    w, gap, x0, y_mix = 1.45, 0.2, 0.25, 3.25
    for i, kind in enumerate(group):
        x = x0 + i * (w + gap)
        attention = kind == "full_attention"
        ax.add_patch(FancyBboxPatch((x, y_mix), w, 0.45, boxstyle="round,pad=0,rounding_size=0.05",
                                    facecolor=COLORS[kind], edgecolor="0.3", lw=0.8))
        ax.text(x + w / 2, y_mix + 0.225, "gated attention" if attention else "Gated DeltaNet",
                ha="center", va="center", fontsize=9)
        if attention:  # the KV cache grows with the context
            for k in range(6):
                ax.add_patch(plt.Rectangle((x + 0.1 + k * 0.21, 2.55), 0.17, 0.45,
                                           facecolor=COLORS["state"], edgecolor="0.4", lw=0.5))
            ax.text(x + w / 2, 2.35, "K, V of every token:\ngrows with the text", ha="center", va="top",
                    fontsize=9)
        else:  # a fixed-size state
            ax.add_patch(plt.Rectangle((x + w / 2 - 0.25, 2.5), 0.5, 0.5, facecolor=COLORS["state"],
                                       edgecolor="0.4", lw=0.5))
            ax.text(x + w / 2, 2.35, f"state: {cfg.linear_key_head_dim} x {cfg.linear_value_head_dim} "
                    "a head,\nthe same at any length", ha="center", va="top", fontsize=9)
    ax.text(x0, y_mix + 0.6, f"{cfg.num_hidden_layers // len(group)} groups of 4 layers: "
            "3 linear-cost layers for 1 attention layer", fontsize=9, va="bottom")
    # the MoE of every layer: 512 experts, 10 routed per token, one shared
    cols, cell = 64, 0.085
    chosen = {7, 60, 101, 163, 230, 257, 318, 371, 402, 489}  # any 10: the router picks per token
    for e in range(cfg.num_experts):
        r, c = divmod(e, cols)
        ax.add_patch(plt.Rectangle((x0 + c * cell, 1.3 - r * cell), cell * 0.85, cell * 0.85, lw=0,
                                   facecolor=COLORS["shared_expert"] if e in chosen else COLORS["moe"],
                                   alpha=1.0 if e in chosen else 0.35))
    shared_x = x0 + cols * cell + 0.15
    ax.add_patch(plt.Rectangle((shared_x, 1.3 - 7 * cell), 0.3, 8 * cell * 0.95, lw=0,
                               facecolor=COLORS["shared_expert"]))
    ax.text(shared_x + 0.4, 1.3 - 3 * cell, "shared\nexpert", va="center", fontsize=9)
    ax.text(x0, 1.5, f"then every layer's MoE: {cfg.num_experts} experts, "
            f"{cfg.num_experts_per_tok} chosen per token (dark), and 1 shared", fontsize=9)
    counts = parameter_counts(cfg)
    ax.text(x0, 0.25, f"{counts.total / 1e9:.1f} billion parameters in all; "
            f"{counts.active_non_embedding / 1e9:.2f} billion used per token", fontsize=9)
    return _save(ax, path)


def draw_chapter_graph(path: Path) -> float:
    """The chapters as boxes, an arrow from each chapter to the chapters that build on it."""
    ax = inch_axes(4.6)
    sy, w, h = 0.72, 1.1, 0.46  # inches per row; box size

    def centre(ch):
        x, row = PLACE[ch]
        return x, 4.3 - row * sy

    for ch, needs in NEEDS.items():
        for before in needs:
            (x0, y0), (x1, y1) = centre(before), centre(ch)
            style = dict(arrowstyle="-|>", lw=0.8, color="0.35", shrinkA=1, shrinkB=1)
            if abs(x1 - x0) > 2 and PLACE[ch][1] - PLACE[before][1] >= 2:  # far to the side: go round
                side = x1 - w / 2 if x0 < x1 else x1 + w / 2
                ax.annotate("", xy=(side, y1), xytext=(x0, y0 - h / 2),
                            arrowprops=dict(**style, connectionstyle="angle,angleA=-90,angleB=0"))
            else:
                ax.annotate("", xy=(x1, y1 + h / 2), xytext=(x0, y0 - h / 2), arrowprops=style)
    planned_chapters = {ch for ch in CHAPTERS if not any((REPO / "chapters").glob(f"{ch}_*.ipynb"))}
    for ch, name in CHAPTERS.items():
        x, y = centre(ch)
        planned = ch in planned_chapters  # no notebook yet: being written
        color = COLORS["norm"] if planned else COLORS["text"]
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.06",
                                    facecolor=color, edgecolor="0.3", lw=0.8, ls="--" if planned else "-"))
        ax.text(x, y, f"{int(ch)}. {name}", ha="center", va="center", fontsize=9)
    if planned_chapters:
        ax.text(COLUMN_INCHES - 0.1, 0.15, "dashed: chapters being written", ha="right", fontsize=9, color="0.35")
    return _save(ax, path)


DRAW = {"intro_hybrid.png": draw_intro, "chapter_graph.png": draw_chapter_graph}


def shown_width(page: Path, name: str) -> int | None:
    """The ``:width:`` (px) ``page`` gives the figure ``name``, or None if the page does not show it."""
    pattern = rf"```{{figure}}\s*figures/{re.escape(name)}\s*\n(?:\s*:[^\n]*\n)*?\s*:width:\s*(\d+)px"
    m = re.search(pattern, page.read_text())
    return int(m.group(1)) if m else None


def png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    problems = []
    if not args.check:
        use_book_style()
        FIGURES.mkdir(parents=True, exist_ok=True)
        for name, draw in DRAW.items():
            draw(FIGURES / name)
    for name, page in PAGES.items():
        path = FIGURES / name
        if not path.is_file():
            problems.append(f"{path.relative_to(REPO)} is missing: run python -m tools.book_figures")
            continue
        css = round(png_width(path) / 2)  # drawn at 2x
        width = shown_width(REPO / page, name)
        print(f"{path.relative_to(REPO)}: {png_width(path)} pixels, drawn {css} CSS px wide; {page} shows it at "
              f"{width} px")
        if width != css:
            problems.append(f"{page}: show figures/{name} with :width: {css}px (it was drawn {css} px wide)")
    for p in problems:
        print("PROBLEM", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
