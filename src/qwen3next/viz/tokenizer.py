"""The tokenizer's data flow drawn for one real string (chapter 02).

:func:`tokenizer_stages` runs a :class:`~qwen3next.tokenizer.Tokenizer` step by step on a text and keeps
what each step produced; :func:`draw_tokenizer_pipeline` draws those steps top to bottom, every piece as a
small box, with its count beside it. Only drawing lives here: the pieces come from the tokenizer.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from matplotlib.patches import FancyBboxPatch

from ..bpe import to_byte_symbols
from .architecture import FONT
from .colors import COLORS
from .style import COLUMN_INCHES, inch_axes

SHOW = str.maketrans({"\n": "↵", " ": "␣", "\t": "⇥"})  # white space made visible


@dataclass
class Stage:
    """One step of encoding: its name, what it produced (pieces), which pieces are added tokens, a count."""

    name: str
    pieces: list[str]
    added: list[bool]
    note: str


def _visible(piece: str) -> str:
    """White space as visible signs; combining marks and control characters as ``\\uXXXX``."""
    def one(ch: str) -> str:
        if ch in "\n \t" or (ch.isprintable() and not unicodedata.combining(ch)):
            return ch
        return f"\\u{ord(ch):04x}"

    return "".join(map(one, piece)).translate(SHOW)


def tokenizer_stages(tok, text: str) -> list[Stage]:
    """Encode ``text`` step by step: added tokens split off, NFC, pre-tokens, byte symbols, BPE, ids."""
    normalised = tok.split_added(text)
    raw, cursor = [], 0  # the same pieces before normalisation: cut the raw text at the added tokens
    for piece, is_added in normalised:
        if is_added:
            at = text.index(piece, cursor)
            if at > cursor:
                raw.append((text[cursor:at], False))
            raw.append((piece, True))
            cursor = at + len(piece)
    if cursor < len(text):
        raw.append((text[cursor:], False))
    words = [(w, False) for p, a in normalised if not a for w in tok.pretokenize(p)]
    symbols = [to_byte_symbols(w) for w, _ in words]
    merged = [tok.bpe(w) for w, _ in words]
    ids = tok.encode(text)
    n_added = sum(a for _, a in raw)
    added_ids = set(tok.added_tokens_encoder.values())
    text_chars = sum(len(p) for p, a in raw if not a)
    norm_chars = sum(len(p) for p, a in normalised if not a)
    return [
        Stage("text", [text], [False], f"{len(text)} characters"),
        Stage("split off added tokens", [p for p, _ in raw], [a for _, a in raw],
              f"{len(raw)} pieces, {n_added} added"),
        Stage("NFC-normalise the rest", [p for p, a in normalised if not a], [False] * (len(raw) - n_added),
              f"{text_chars} -> {norm_chars} characters"),
        Stage("pre-tokenize (regex)", [w for w, _ in words], [False] * len(words), f"{len(words)} pre-tokens"),
        Stage("bytes as characters", symbols, [False] * len(symbols),
              f"{sum(len(s) for s in symbols)} bytes"),
        Stage("BPE merges", [t for m in merged for t in m], [False] * sum(map(len, merged)),
              f"{sum(map(len, merged))} tokens"),
        Stage("look up the ids", [str(i) for i in ids], [i in added_ids for i in ids],
              f"{len(ids)} ids, list[int]"),
    ]


def _pieces(ax, x0, y, pieces, added, char_w, h, raw_text=False):
    """Draw ``pieces`` as boxes left to right from ``x0`` at height ``y`` (inches); return the right edge."""
    x = x0
    for piece, is_added in zip(pieces, added, strict=True):
        label = _visible(piece).replace("↵", "\\n") if raw_text else _visible(piece)
        w = char_w * max(len(label), 1) + 0.06
        color = COLORS["state"] if is_added else COLORS["text"]
        ax.add_patch(FancyBboxPatch((x, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.04",
                                    facecolor=color, edgecolor="0.45", linewidth=0.6))
        ax.text(x + w / 2, y, label, ha="center", va="center", fontsize=FONT, family="DejaVu Sans Mono")
        x += w + 0.04
    return x


def draw_tokenizer_pipeline(stages: list[Stage], ax=None):
    """The stages of :func:`tokenizer_stages` top to bottom: name on the left, pieces and count beside it.

    Added tokens (shaded) skip normalisation, the regex and BPE: the arrow on the left joins them to the
    ids. Drawn in inches: without ``ax`` the figure is ``COLUMN_INCHES`` wide and its axes fill it (an
    ``ax`` passed in should span a figure of that width).
    """
    row, h = 0.62, 0.3
    height = row * len(stages) + 0.15
    if ax is None:
        ax = inch_axes(height)
    char_w = FONT * 0.602 / 72 * 1.04  # DejaVu Sans Mono: 0.602 em a character, in inches
    x_pieces = 2.2
    for k, st in enumerate(stages):
        y = height - 0.25 - k * row
        ax.text(0.3, y, st.name, ha="left", va="center", fontsize=FONT, fontweight="bold")
        right = _pieces(ax, x_pieces, y, st.pieces, st.added, char_w, h, raw_text=(k == 0))
        if right > COLUMN_INCHES:
            raise ValueError(f"draw_tokenizer_pipeline: the pieces of {st.name!r} need {right:.2f} inches, "
                             f"more than the {COLUMN_INCHES} of the column: draw a shorter text")
        ax.text(min(right, COLUMN_INCHES - 0.05), y - h / 2 - 0.03, st.note, ha="right", va="top",
                fontsize=FONT, color="0.35")
        if k + 1 < len(stages):
            ax.annotate("", xy=(x_pieces - 0.12, y - row + h / 2), xytext=(x_pieces - 0.12, y - h / 2),
                        arrowprops=dict(arrowstyle="-|>", lw=0.8, color="0.3"))
    # added tokens bypass the steps between the split and the ids
    y1, y6 = height - 0.25 - row, height - 0.25 - (len(stages) - 1) * row
    ax.annotate("", xy=(0.22, y6), xytext=(0.22, y1), arrowprops=dict(arrowstyle="-|>", lw=1.0,
                                                                       color=COLORS["highlight"]))
    ax.text(0.16, (y1 + y6) / 2, "added tokens", rotation=90, ha="right", va="center", fontsize=FONT,
            color=COLORS["highlight"])
    ax.set_xlim(0, COLUMN_INCHES)
    ax.set_ylim(0, height)
    ax.axis("off")
    return ax
