"""Chapter 12's drawings: the engine's memory (state slots, block tables, the block pool), the timeline
of a continuous batch, the prefix-cache hit rate against the block size, and the data flow of a step.

Everything drawn is read from an :class:`qwen3next.engine.Engine` (or numbers passed in): nothing is
made up for the picture.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, Rectangle

from .colors import COLORS
from .style import COLUMN_INCHES

REQUEST_COLORS = ["#4C9BE8", "#F08A4B", "#7BC67B", "#C9A0DC", "#E8C547", "#6CC5C0", "#E87B9B", "#9C8E7E"]
CACHED = "#B0B0B0"


def _color(i: int) -> str:
    return REQUEST_COLORS[i % len(REQUEST_COLORS)]


def memory_snapshot(engine) -> dict:
    """What the engine holds now: per running request its slot, blocks and tokens; the pool's owners."""
    running = [(r.request_id, r.seq.slot, list(r.seq.table.blocks), r.seq.num_computed) for r in engine.running]
    cached = set() if engine.cache is None else {e.block for e in engine.cache.entries.values()}
    return {"running": running, "num_slots": engine.states.num_slots, "num_blocks": engine.kv.num_blocks,
            "block_size": engine.block_size, "cached": cached}


def _box(ax, x, y, w, h, color, text="", hatch=None, fontsize=9, alpha=1.0):
    ax.add_patch(Rectangle((x, y), w, h, facecolor=color, edgecolor="#444444", lw=0.8, hatch=hatch, alpha=alpha))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def _grid_axes(ax, width: float, rows: int, title: str) -> None:
    ax.set_xlim(-0.1, width + 0.1)
    ax.set_ylim(rows + 0.1, -0.1)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)


def draw_memory(snapshot: dict, columns: int = 8, max_table: int = 8):
    """Three panels: the DeltaNet state slots, each request's block table, the block pool.

    A block held by a request is drawn in its colour (faded in the table while reserved but not
    written yet); a block only the prefix cache holds is grey; a block in the tables of several
    requests (a shared prefix) is hatched. Returns the figure.
    """
    run, B = snapshot["running"], snapshot["num_blocks"]
    pool_rows = -(-B // columns)
    rows = max(len(run), snapshot["num_slots"], pool_rows)
    fig, (ax_s, ax_t, ax_p) = plt.subplots(1, 3, figsize=(COLUMN_INCHES, 0.6 + 0.42 * rows),
                                           gridspec_kw={"width_ratios": [1.1, 3.2, 3.6]})
    owner, users = {}, {}
    for i, (_, _, blocks, _) in enumerate(run):
        for b in blocks:
            owner.setdefault(b, i)
            users[b] = users.get(b, 0) + 1
    slot_of = {slot: i for i, (_, slot, _, _) in enumerate(run)}
    for s in range(snapshot["num_slots"]):  # state slots
        i = slot_of.get(s)
        _box(ax_s, 0, s + 0.1, 1, 0.8, _color(i) if i is not None else "white",
             run[i][0] if i is not None else "free")
    _grid_axes(ax_s, 1, rows, "state slots")
    ax_s.set_yticks([s + 0.5 for s in range(snapshot["num_slots"])],
                    [str(s) for s in range(snapshot["num_slots"])])
    for i, (_, _, blocks, n) in enumerate(run):  # block tables: logical block j -> physical id
        for j, b in enumerate(blocks[:max_table]):
            written = j * snapshot["block_size"] < n
            _box(ax_t, j * 0.4, i + 0.1, 0.36, 0.8, _color(i), str(b), alpha=1.0 if written else 0.35,
                 hatch="///" if users[b] > 1 else None)
        if len(blocks) > max_table:
            ax_t.text(max_table * 0.4, i + 0.5, "...", va="center", fontsize=9)
    _grid_axes(ax_t, max_table * 0.4 + 0.3, rows, "block tables")
    ax_t.set_yticks([i + 0.5 for i in range(len(run))], [str(r[0]) for r in run])
    for b in range(B):  # the pool
        r, c = divmod(b, columns)
        i = owner.get(b)
        color = _color(i) if i is not None else CACHED if b in snapshot["cached"] else "white"
        _box(ax_p, c * 0.45, r + 0.1, 0.41, 0.8, color, str(b),
             hatch="///" if users.get(b, 0) > 1 else None)
    _grid_axes(ax_p, columns * 0.45, rows, f"block pool ({snapshot['block_size']} tokens each)")
    ax_p.set_yticks([])
    return fig


def draw_timeline(engine, requests, ax=None):
    """One row per request, one column per engine step: prompt chunks, decode steps, waiting."""
    index = {r.request_id: i for i, r in enumerate(requests)}
    steps = len(engine.records)
    if ax is None:
        _, ax = plt.subplots(figsize=(COLUMN_INCHES, 0.8 + 0.38 * len(requests)))
    for rec in engine.records:
        for rid, kind, n in rec.work:
            color = COLORS["full_attention"] if kind == "prefill" else COLORS["linear_attention"]
            _box(ax, rec.step, index[rid], 1, 0.8, color, str(n) if kind == "prefill" else "", fontsize=9)
        for rid in rec.waiting:
            if rid in index:
                _box(ax, rec.step, index[rid], 1, 0.8, "#EEEEEE")
    for r in requests:  # arrivals: a triangle just before the cell of the arrival step
        ax.plot([r.arrival - 0.25], [index[r.request_id] + 0.4], marker=">", color="#333333", ms=5)
    ax.set_yticks([i + 0.4 for i in range(len(requests))], [str(r.request_id) for r in requests])
    ax.set_xlim(-0.5, steps)
    ax.set_ylim(len(requests), -0.2)
    ax.set_xlabel("engine step")
    ax.set_ylabel("request")
    handles = [Rectangle((0, 0), 1, 1, fc=c) for c in (COLORS["full_attention"], COLORS["linear_attention"], "#EEEEEE")]
    ax.legend(handles, ["prompt chunk (tokens)", "decode (1 token)", "waiting"], loc="upper center",
              bbox_to_anchor=(0.5, -0.25), ncol=3, frameon=False)
    return ax


def draw_hit_rates(block_sizes, rates: dict[str, list[float]], ax=None, marks: dict[str, int] | None = None):
    """Prefix-cache hit rate against the block size, one line per snapshot mode; ``marks`` draws
    vertical lines (e.g. the block sizes a real engine would pick)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(COLUMN_INCHES, 3.2))
    for (mode, values), color in zip(rates.items(), [COLORS["linear_attention"], COLORS["full_attention"]],
                                     strict=False):
        ax.plot(block_sizes, [100 * v for v in values], marker="o", color=color, label=mode)
    for label, x in (marks or {}).items():
        ax.axvline(x, color="#777777", ls="--", lw=1)
        ax.text(x, 98, f" {label}", rotation=90, va="top", fontsize=9, color="#555555")
    ax.set_xscale("log", base=2)
    ax.set_xticks(block_sizes, [str(b) for b in block_sizes])
    ax.set_xlabel("block size (tokens)")
    ax.set_ylabel("prompt tokens from the cache (%)")
    ax.set_ylim(0, 100)
    ax.legend(frameon=False)
    return ax


def draw_step_flow(ax=None):
    """The data flow of one packed step, with the shapes: tokens of all requests through the token-wise
    parts at once; the mixers per group, reading their slots and blocks."""
    if ax is None:
        _, ax = plt.subplots(figsize=(COLUMN_INCHES, 5.0))
    ax.add_patch(Rectangle((0.2, 2.05), 9.6, 5.35, facecolor="none", edgecolor="#888888", ls="--", lw=1))
    ax.text(9.7, 7.2, "each layer (8 here, 48 in the release)", ha="right", va="center", fontsize=9,
            color="#555555")
    boxes = [
        (0.5, 9.2, "segments (request, start, end) -> ids (N,), positions (N,)", COLORS["norm"]),
        (0.5, 7.9, "embed_tokens: x (1, N, H); RoPE: cos, sin (1, N, R)", COLORS["embed"]),
        (0.5, 6.1, "input_layernorm, all N tokens at once", COLORS["norm"]),
        (0.5, 2.3, "post_attention_layernorm + sparse MoE, all N tokens at once", COLORS["moe"]),
        (0.5, 0.6, "norm, lm_head on each segment's last token: logits (n, V)", COLORS["norm"]),
    ]
    for x, y, text, color in boxes:
        _box(ax, x, y, 9, 0.9, color, text)
    _box(ax, 0.5, 3.9, 4.4, 1.6, COLORS["linear_attention"], "3 layers in 4: DeltaNet, per group\n"
         "state (B, Hv, Dk, Dv) fp32\nread from slots, written back")
    _box(ax, 5.1, 3.9, 4.4, 1.6, COLORS["full_attention"], "1 layer in 4: attention, per group\n"
         "K, V (B, Hkv, S, D)\nwritten to / read from blocks")
    ax.text(5.0, 3.55, "a group: one prompt chunk (1, T, H)\nor all decode rows (B, 1, H)", ha="center",
            va="center", fontsize=9)
    arrows = [(5, 9.2, 8.8), (5, 7.9, 7.0), (5, 2.3, 1.5)]
    arrows += [(x, y0, y1) for x in (2.7, 7.3) for y0, y1 in ((6.1, 5.5), (3.9, 3.2))]  # around the mixers
    for x, y0, y1 in arrows:
        ax.add_patch(FancyArrowPatch((x, y0), (x, y1), arrowstyle="->", mutation_scale=12, color="#444444"))
    ax.set_xlim(0, 10)
    ax.set_ylim(0.4, 10.3)
    ax.set_axis_off()
    return ax


def draw_memory_per_rank(rows: dict, gib: float = 2**30, bytes_per_weight: int = 2, ax=None,
                         line: tuple[str, float] | None = ("a 24 GiB GPU", 24)):
    """Stacked bars: weights per rank by component, for ``rows = {ranks: RankMemory}``."""
    if ax is None:
        _, ax = plt.subplots(figsize=(COLUMN_INCHES, 2.8))
    parts = [("routed experts", COLORS["moe"]), ("shared expert", "#A8D8A8"), ("attention", COLORS["full_attention"]),
             ("deltanet", COLORS["linear_attention"]), ("embedding", COLORS["embed"]), ("lm_head", "#9C7FB0")]
    labels = [str(n) for n in rows]
    bottom = [0.0] * len(rows)
    for part, color in parts:
        heights = [bytes_per_weight * m.parameters[part] / gib for m in rows.values()]
        ax.bar(labels, heights, bottom=bottom, label=part, color=color)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    if line is not None:
        ax.axhline(line[1], color="#777777", ls="--", lw=1)
        ax.text(len(rows) - 0.5, line[1] + 2, line[0], ha="right", va="bottom", fontsize=9, color="#555555")
    ax.set_xlabel("ranks (TP = EP)")
    ax.set_ylabel("weights per rank (GiB)")
    ax.legend(frameon=False, ncol=2)
    return ax
