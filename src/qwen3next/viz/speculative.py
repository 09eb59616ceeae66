"""Chapter 11's drawings: the MTP head's data flow, one round of drafting and verifying, the two rollback
strategies, and the measured acceptance and speed-up.

Shapes come from the config passed in, tokens and measurements from the caller: nothing is made up for
the picture.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from ..config import Qwen3NextConfig
from .colors import COLORS
from .diagram import FONT, arrow, box, canvas, note
from .style import COLUMN_INCHES

ACCEPT, REJECT = "#7BC67B", "#E07B7B"


def draw_mtp_flow(cfg: Qwen3NextConfig, batch: str = "B", tokens: str = "T"):
    """The MTP head's forward pass with the shape of every tensor, and the loop that drafts token after
    token (the head's own output read back as the next ``h``); returns the figure."""
    B, T, H, V = batch, tokens, cfg.hidden_size, cfg.vocab_size
    Hq, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    E, k = cfg.num_experts, cfg.num_experts_per_tok
    fig, ax = canvas(6.55)
    ex, hx, cx = 1.55, 4.75, 3.15  # the embedding path, the hidden path, the shared path

    box(ax, ex, 6.25, 2.5, 0.42, f"next tokens x_(t+1)   ({B}, {T})", COLORS["text"])
    box(ax, hx, 6.25, 3.3, 0.42, f"trunk hidden h_t after its final norm\n({B}, {T}, {H})", COLORS["tensor"])
    arrow(ax, (ex, 6.04), (ex, 5.66))
    box(ax, ex, 5.45, 2.5, 0.42, f"embed_tokens\n(the trunk's, {V} x {H})", COLORS["embed"])
    arrow(ax, (ex, 5.24), (ex, 4.86), f"({B}, {T}, {H})")
    arrow(ax, (hx, 6.04), (hx, 4.86), f"({B}, {T}, {H})")
    box(ax, ex, 4.65, 2.5, 0.42, "pre_fc_norm_embedding  (1 + w)", COLORS["norm"])
    box(ax, hx, 4.65, 2.5, 0.42, "pre_fc_norm_hidden  (1 + w)", COLORS["norm"])
    arrow(ax, (ex, 4.44), (cx - 0.35, 4.06))
    arrow(ax, (hx, 4.44), (cx + 0.35, 4.06))
    note(ax, 0.1, 4.22, f"e ({B}, {T}, {H})")
    note(ax, hx + 0.1, 4.25, f"h ({B}, {T}, {H})")
    box(ax, cx, 3.85, 2.9, 0.42, "concatenate [e | h]  (embedding first)", COLORS["tensor"])
    arrow(ax, (cx, 3.64), (cx, 3.28), f"({B}, {T}, {2 * cfg.hidden_size})")
    box(ax, cx, 3.07, 2.9, 0.42, f"fc: {2 * H} -> {H}, no bias", COLORS["dense"])
    arrow(ax, (cx, 2.86), (cx, 2.5), f"({B}, {T}, {H})")
    box(ax, cx, 2.18, 4.2, 0.64, f"one decoder layer: gated attention ({Hq} x {D}, {Hkv} KV heads,\n"
        f"its own KV cache) + sparse MoE (top-{k} of {E} + shared)", COLORS["full_attention"])
    arrow(ax, (cx, 1.86), (cx, 1.5), f"({B}, {T}, {H})")
    box(ax, cx, 1.29, 2.9, 0.42, "mtp.norm  (1 + w)", COLORS["norm"])
    arrow(ax, (cx, 1.08), (cx, 0.72), f"({B}, {T}, {H})  the head's hidden state")
    box(ax, cx, 0.5, 2.9, 0.42, f"lm_head (the trunk's, {H} -> {V})", COLORS["embed"])
    note(ax, cx + 1.5, 0.5, f"({B}, {T}, {V}): row t\nguesses x_(t+2)")
    # drafting: the head's own post-norm output stands in for h at the next position (a loop on the right)
    red, lx = COLORS["highlight"], 6.62
    ax.plot([cx + 1.45, lx, lx], [1.29, 1.29, 4.65], color=red, lw=0.9, ls="--")
    arrow(ax, (lx, 4.65), (hx + 1.25, 4.65), color=red)
    note(ax, lx - 0.1, 3.25, "drafting step j > 1:\nits own output\nis the next h", color=red, ha="right")
    note(ax, 0.08, 3.1, "pair (x_(t+1), h_t)\nat position t:\ntokens shifted,\npositions kept", color="black")
    return fig


def draw_round(drafts: list[str], trunk: list[str], accepted: int, pending: str, ax=None):
    """One round: the pending token and the drafts the trunk read, the trunk's choice after each, and
    which drafts were accepted (green), the first rejected one (red) and the trunk's token kept (bold)."""
    k = len(drafts)
    if ax is None:
        _, ax = plt.subplots(figsize=(COLUMN_INCHES, 1.9))
    cells = [pending, *drafts]
    for i, text in enumerate(cells):  # what the trunk reads, one forward over k + 1 positions
        color = COLORS["text"] if i == 0 else ACCEPT if i <= accepted else REJECT if i == accepted + 1 else "white"
        ax.add_patch(plt.Rectangle((i, 1.1), 0.94, 0.8, facecolor=color, edgecolor="#444444", lw=0.8))
        ax.text(i + 0.47, 1.5, text, ha="center", va="center", fontsize=FONT)
    for i, text in enumerate(trunk):  # what it predicts after each position
        kept = i == accepted
        ax.add_patch(plt.Rectangle((i + 1, 0.0), 0.94, 0.8, facecolor="white" if not kept else COLORS["state"],
                                   edgecolor="#444444", lw=0.8))
        ax.text(i + 1.47, 0.4, text, ha="center", va="center", fontsize=FONT, weight="bold" if kept else None)
        ax.annotate("", xy=(i + 1.2, 0.8), xytext=(i + 0.7, 1.1),
                    arrowprops=dict(arrowstyle="-|>", lw=0.7, color="#666666", mutation_scale=7))
    ax.set_xlim(-1.9, k + 2.1)
    ax.set_ylim(-0.1, 2.0)
    ax.text(-0.1, 1.5, "trunk reads", ha="right", va="center", fontsize=FONT)
    ax.text(0.9, 0.4, "its choice", ha="right", va="center", fontsize=FONT)
    ax.axis("off")
    return ax


def draw_rollback(num_draft_tokens: int = 3, accepted: int = 1):
    """Both caches around one verification: the attention layers' K and V are cut after the kept tokens;
    a DeltaNet state is rebuilt by replay (snapshot, verify, restore, run the kept tokens again) or by
    checkpoints (keep the state after every token, pick one); returns the figure."""
    k, a = num_draft_tokens, accepted
    fig, ax = canvas(4.15)
    w, step = 0.62, 0.72

    def chain(y, n, label, colors, arrows=True):
        for j in range(n):
            box(ax, 0.5 + j * step, y, w, 0.36, label(j), colors(j))
            if j and arrows:
                arrow(ax, (0.5 + (j - 1) * step + w / 2, y), (0.5 + j * step - w / 2, y))
        return 0.5 + n * step - 0.2  # where a note after the chain starts

    # attention layers: the verified slots, the rejected ones cut
    note(ax, 0.1, 3.9, "attention layers (both strategies)", color="black", weight="bold")
    tokens = ["x_n", *[f"d_{j}" for j in range(1, k + 1)]]
    x = chain(3.45, k + 1, lambda j: f"K,V {tokens[j]}", lambda j: COLORS["full_attention"] if j <= a else "#F2F2F2",
              arrows=False)
    note(ax, x, 3.45, f"keep {a + 1} new slots (crop),\ndrop the other {k - a}")
    # replay
    note(ax, 0.1, 2.95, f"DeltaNet, replay  (k = {k} drafts, {a} accepted)", color="black", weight="bold")
    faded = lambda j: COLORS["state"] if j == 0 else "#F2F2F2"  # noqa: E731
    x = chain(2.5, k + 2, lambda j: "S_n" if j == 0 else f"S_n+{j}", faded)
    note(ax, x, 2.5, "verify: only the last\nstate is kept")
    note(ax, 0.5, 2.17, "copy", ha="center")
    x = chain(1.8, a + 2, lambda j: "S_n" if j == 0 else f"S_n+{j}", lambda j: COLORS["state"])
    note(ax, x, 1.8, f"restore the copy, run the layer again\non its inputs for the {a + 1} kept tokens")
    note(ax, 0.5, 1.47, "restore", ha="center")
    # checkpoints
    note(ax, 0.1, 1.0, "DeltaNet, checkpoints", color="black", weight="bold")
    x = chain(0.55, k + 2, lambda j: "S_n" if j == 0 else f"S_n+{j}",
              lambda j: ACCEPT if j == a + 1 else COLORS["state"])
    note(ax, x, 0.55, f"verify keeps all {k + 1}; pick the one\nafter the last kept token (S_n+{a + 1})")
    return fig


def draw_forward_cost(tokens, bytes_ratio, time_ratio, head_ratio: float, ax=None):
    """A trunk forward over T new tokens relative to one token: the release's weight bytes (computed) and
    this machine's time for the small model (measured), against the flat line drafting hopes for."""
    if ax is None:
        _, ax = plt.subplots(figsize=(COLUMN_INCHES, 2.9))
    ax.plot(tokens, [1.0] * len(tokens), color="#888888", ls=":", label="cost flat in T (ideal)")
    ax.plot(tokens, bytes_ratio, marker="o", color=COLORS["moe"], label="Qwen3-Next-80B: weight bytes read")
    ax.plot(tokens, time_ratio, marker="s", color=COLORS["linear_attention"], label="small model: CPU time")
    ax.plot(tokens, list(tokens), color="#BBBBBB", lw=0.8, label="T separate steps")
    ax.axhline(head_ratio, color=COLORS["full_attention"], lw=0.8, ls="--")
    ax.text(tokens[-1], head_ratio + 0.08, "one draft step (release)", ha="right", fontsize=9,
            color=COLORS["full_attention"])
    ax.set_xlabel("tokens T in one trunk forward")
    ax.set_ylabel("cost / cost of T = 1")
    ax.set_xticks(list(tokens))
    ax.legend(loc="upper left", frameon=False)
    return ax


def draw_acceptance(per_position: dict[int, list[float]], ax=None):
    """Share of rounds in which draft j was accepted, for each number of drafts k (grouped bars)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(COLUMN_INCHES, 2.8))
    ks = sorted(per_position)
    width = 0.8 / len(ks)
    shades = ["#9CC3EC", "#6FA6E0", "#4C9BE8", "#2D6FB3"]
    for i, k in enumerate(ks):
        xs = [j + 1 + (i - (len(ks) - 1) / 2) * width for j in range(k)]
        ax.bar(xs, per_position[k], width=width * 0.95, color=shades[i % len(shades)], label=f"k = {k}")
    ax.set_xticks(range(1, max(ks) + 1))
    ax.set_xlabel("draft position j")
    ax.set_ylabel("accepted (share of rounds)")
    ax.set_ylim(0, 1)
    ax.legend(frameon=False, ncol=len(ks), loc="upper right")
    return ax


def draw_speedup(ks, measured: dict[str, list[tuple[float, float, float]]], expected: dict[str, list[float]],
                 ax=None):
    """Speed-up over plain decoding against k: measured (median with its min..max spread, one line per
    rollback) and expected from the acceptance (dashed)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(COLUMN_INCHES, 2.9))
    colors = [COLORS["linear_attention"], COLORS["full_attention"], COLORS["moe"], "#888888"]
    for (name, rows), color in zip(measured.items(), colors, strict=False):
        med = [m for m, _, _ in rows]
        lo = [m - low for m, low, _ in rows]
        hi = [high - m for m, _, high in rows]
        ax.errorbar(ks, med, yerr=[lo, hi], marker="o", capsize=3, color=color, label=f"measured, {name}")
    for (name, values), color in zip(expected.items(), colors[2:], strict=False):
        ax.plot(ks, values, ls="--", marker=".", color=color, label=name)
    ax.axhline(1.0, color="#888888", lw=0.8, ls=":")
    ax.set_xticks(list(ks))
    ax.set_xlabel("drafts per round k")
    ax.set_ylabel("speed-up over plain")
    ax.legend(frameon=False, fontsize=9, loc="best")
    return ax
