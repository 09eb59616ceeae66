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
            "block_size": engine.block_size, "cached": cached, "ref_count": list(engine.kv.ref_count)}


def _box(ax, x, y, w, h, color, text="", hatch=None, fontsize=9, alpha=1.0):
    ax.add_patch(Rectangle((x, y), w, h, facecolor=color, edgecolor="#444444", lw=0.8, hatch=hatch, alpha=alpha))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def draw_memory(snapshot: dict, ax=None, columns: int = 16):
    """Left: the DeltaNet state slots; middle: each request's block table; right: the block pool.

    A block held by a request is drawn in its colour; a block held only by the prefix cache in grey;
    a block shared by several owners is hatched.
    """
    run, B = snapshot["running"], snapshot["num_blocks"]
    rows = -(-B // columns)
    if ax is None:
        _, ax = plt.subplots(figsize=(COLUMN_INCHES, 1.2 + 0.42 * max(len(run) + 1, rows + 1, snapshot["num_slots"])))
    owner = {}
    for i, (_, _, blocks, _) in enumerate(run):
        for b in blocks:
            owner.setdefault(b, i)
    # state slots
    ax.text(0.6, 0.4, "state slots", ha="center", fontsize=10, weight="bold")
    slot_of = {slot: i for i, (_, slot, _, _) in enumerate(run)}
    for s in range(snapshot["num_slots"]):
        i = slot_of.get(s)
        _box(ax, 0, 1 + s * 0.9, 1.2, 0.75, _color(i) if i is not None else "white",
             f"slot {s}" + (f": {run[i][0]}" if i is not None else ""))
    # block tables
    ax.text(3.6, 0.4, "block tables (logical -> physical)", ha="center", fontsize=10, weight="bold")
    for i, (rid, _, blocks, n) in enumerate(run):
        y = 1 + i * 0.9
        ax.text(1.75, y + 0.37, f"{rid}", ha="right", va="center", fontsize=9)
        for j, b in enumerate(blocks[:8]):
            _box(ax, 1.9 + j * 0.6, y, 0.55, 0.75, _color(i), str(b), fontsize=9,
                 alpha=1.0 if j * snapshot["block_size"] < n else 0.35)
        if len(blocks) > 8:
            ax.text(1.9 + 8 * 0.6, y + 0.37, "...", va="center", fontsize=9)
    # block pool
    x0 = 7.2
    ax.text(x0 + columns * 0.3, 0.4, f"block pool ({snapshot['block_size']} tokens a block)", ha="center",
            fontsize=10, weight="bold")
    for b in range(B):
        r, c = divmod(b, columns)
        i = owner.get(b)
        color = _color(i) if i is not None else CACHED if b in snapshot["cached"] else "white"
        _box(ax, x0 + c * 0.6, 1 + r * 0.9, 0.55, 0.75, color, str(b), fontsize=9,
             hatch="///" if snapshot["ref_count"][b] > 1 else None)
    ax.set_xlim(-0.2, x0 + columns * 0.6 + 0.2)
    ax.set_ylim(1 + max(len(run), rows, snapshot["num_slots"]) * 0.9 + 0.1, 0)
    ax.set_axis_off()
    return ax


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
    for r in requests:
        ax.plot([r.arrival], [index[r.request_id] + 0.4], marker=">", color="#333333", ms=5)
    ax.set_yticks([i + 0.4 for i in range(len(requests))], [str(r.request_id) for r in requests])
    ax.set_xlim(0, steps)
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
        _, ax = plt.subplots(figsize=(COLUMN_INCHES, 4.6))
    boxes = [
        (0.5, 9.0, "segments: (request, start, end)\npacked ids (N,), positions (N,)", COLORS["norm"]),
        (0.5, 7.6, "embed_tokens -> x (1, N, H); RoPE cos, sin (1, N, R)", COLORS["embed"]),
        (0.5, 6.2, "input_layernorm, all N tokens", COLORS["norm"]),
        (0.5, 3.9, "", "white"),
        (0.5, 2.5, "post_attention_layernorm + sparse MoE, all N tokens", COLORS["moe"]),
        (0.5, 1.1, "norm, lm_head on each segment's last token -> (n, V)", COLORS["norm"]),
    ]
    for x, y, text, color in boxes:
        _box(ax, x, y, 9, 1.0, color, text)
    _box(ax, 0.8, 4.05, 4.1, 1.55, COLORS["linear_attention"], "DeltaNet per group\nstate (B, Hv, Dk, Dv) fp32\n"
         "gathered from slots, written back")
    _box(ax, 5.1, 4.05, 4.1, 1.55, COLORS["full_attention"], "attention per group\nK, V (B, Hkv, S, D)\n"
         "read from / written to blocks")
    ax.text(5.0, 3.95, "one group: a prompt chunk (1, T, H), or all decode rows (B, 1, H)", ha="center",
            va="top", fontsize=9)
    for y0, y1 in ((9.0, 8.6), (7.6, 7.2), (6.2, 5.6), (4.05, 3.5), (2.5, 2.1)):
        ax.add_patch(FancyArrowPatch((5, y0), (5, y1), arrowstyle="->", mutation_scale=12, color="#444444"))
    ax.text(9.7, 4.6, "x 8 layers\n(48 in the\nrelease)", fontsize=9, va="center")
    ax.set_xlim(0, 11.2)
    ax.set_ylim(0.9, 10.2)
    ax.set_axis_off()
    return ax
