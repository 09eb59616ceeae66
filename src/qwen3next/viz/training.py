"""Figures of chapter 10: one training step as a data-flow diagram, loss curves against the entropy floor,
the DeltaNet decay at initialisation, and the recall study.

Only drawing lives here; every number drawn comes from the config, log or tensors passed in.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

from .colors import COLORS
from .style import COLUMN_INCHES

LOSS_COLORS = {"lm": "#1f5fa8", "mtp": "#d0662b", "balance": "#3d8f3d", "floor": "0.2"}


def _box(ax, x, y, w, h, text, color, fontsize=9):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.06",
                                facecolor=color, edgecolor="black", linewidth=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, start, end, text=None, fontsize=9):
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", lw=0.8))
    if text:
        ax.text((start[0] + end[0]) / 2 + 0.08, (start[1] + end[1]) / 2, text, fontsize=fontsize, va="center",
                color="0.25")


def draw_training_step(cfg, batch_size: int, seq_len: int, mtp_weight: float = 0.3, ax=None):
    """One training step, top to bottom, with the shape of every tensor for ``cfg`` and a ``(B, T)`` batch."""
    B, T, H, V, E = batch_size, seq_len, cfg.hidden_size, cfg.vocab_size, cfg.num_experts
    L = cfg.num_hidden_layers
    ax = ax or plt.subplots(figsize=(COLUMN_INCHES, 6.4))[1]
    left, right = 1.6, 5.0
    _box(ax, left, 9.0, 2.8, 0.6, f"input_ids ({B}, {T})", COLORS["embed"])
    _box(ax, left, 7.5, 2.8, 0.8, f"trunk: embed, {L} layers,\nfinal norm", COLORS["linear_attention"])
    _arrow(ax, (left, 8.7), (left, 7.9))
    _box(ax, left, 6.0, 2.8, 0.6, f"lm_head -> ({B}, {T}, {V})", COLORS["embed"])
    _arrow(ax, (left, 7.1), (left, 6.3), f"h ({B}, {T}, {H})")
    _box(ax, left, 4.6, 2.8, 0.6, "CE on x[t+1]: lm", LOSS_COLORS["lm"] + "55")
    _arrow(ax, (left, 5.7), (left, 4.9))
    _box(ax, right, 7.5, 3.2, 0.8, "MTP: cat[norm(embed x[t+1]),\nnorm h[t]] -> fc -> layer", COLORS["full_attention"])
    _arrow(ax, (left + 1.4, 7.3), (right - 1.6, 7.3))
    ax.text((left + right) / 2 + 0.05, 7.05, f"h[:, :-1] ({B}, {T - 1}, {H})", fontsize=8, ha="center",
            color="0.25")
    _arrow(ax, (left + 1.4, 9.0), (right, 7.9))
    ax.text(right + 0.1, 8.75, f"ids[:, 1:] ({B}, {T - 1})", fontsize=8, color="0.25")
    _box(ax, right, 6.0, 3.2, 0.6, f"norm, lm_head -> ({B}, {T - 1}, {V})", COLORS["embed"])
    _arrow(ax, (right, 7.1), (right, 6.3))
    _box(ax, right, 4.6, 3.2, 0.6, "CE on x[t+2]: mtp", LOSS_COLORS["mtp"] + "55")
    _arrow(ax, (right, 5.7), (right, 4.9))
    _box(ax, 3.3, 3.2, 3.0, 0.6, f"router logits ({B * T}, {E}) per layer", COLORS["moe"])
    _box(ax, 3.3, 2.1, 3.0, 0.6, "balance: E sum f_e P_e", LOSS_COLORS["balance"] + "55")
    _arrow(ax, (3.3, 2.9), (3.3, 2.4))
    coef = cfg.router_aux_loss_coef
    _box(ax, 3.3, 0.9, 4.6, 0.7, f"loss = lm + {mtp_weight} mtp + {coef:g} balance\nbackward, clip, AdamW step",
         COLORS["norm"])
    for x in (left, right):
        _arrow(ax, (x, 4.3), (3.3 + (x - 3.3) * 0.4, 1.25))
    _arrow(ax, (3.3, 1.8), (3.3, 1.25))
    ax.set_xlim(0, 6.8)
    ax.set_ylim(0.3, 9.5)
    ax.axis("off")
    return ax


def plot_losses(records: list[dict], floor: float, ax=None, top_k: int | None = None):
    """Training (thin) and validation (markers) losses against tokens seen, with the entropy floor."""
    ax = ax or plt.subplots(figsize=(COLUMN_INCHES, 3.6))[1]
    steps = [r for r in records if "lm" in r]
    tokens = [r["tokens"] / 1e6 for r in steps]
    ax.plot(tokens, [r["lm"] for r in steps], color=LOSS_COLORS["lm"], lw=0.6, alpha=0.5)
    if "mtp" in steps[0]:
        ax.plot(tokens, [r["mtp"] for r in steps], color=LOSS_COLORS["mtp"], lw=0.6, alpha=0.5)
    evals = [r for r in steps if "val_lm" in r]
    ax.plot([r["tokens"] / 1e6 for r in evals], [r["val_lm"] for r in evals], "o-", ms=3,
            color=LOSS_COLORS["lm"], label="next token (validation)")
    if "val_mtp" in evals[0]:
        ax.plot([r["tokens"] / 1e6 for r in evals], [r["val_mtp"] for r in evals], "s-", ms=3,
                color=LOSS_COLORS["mtp"], label="MTP, token after next (validation)")
    ax.axhline(floor, color=LOSS_COLORS["floor"], ls="--", lw=1, label=f"entropy floor {floor:.3f}")
    ax.set_yscale("log")
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("nats per token")
    ax.legend(loc="upper right")
    return ax


def plot_balance(records: list[dict], top_k: int, ax=None):
    """The load-balancing loss per step; ``top_k`` is its value for a perfectly balanced router."""
    ax = ax or plt.subplots(figsize=(COLUMN_INCHES, 2.4))[1]
    ax.plot([r["tokens"] / 1e6 for r in records if "balance" in r], [r["balance"] for r in records if "balance" in r],
            color=LOSS_COLORS["balance"], lw=0.8)
    ax.axhline(top_k, color=LOSS_COLORS["floor"], ls="--", lw=1, label=f"balanced: {top_k}")
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("balance loss")
    ax.legend(loc="upper right")
    return ax


def plot_decay(named_alphas: dict[str, list[float]], ax=None):
    """Each DeltaNet head's decay per token, as the number of tokens its memory lasts, ``1 / (1 - alpha)``."""
    ax = ax or plt.subplots(figsize=(COLUMN_INCHES, 2.6))[1]
    for row, alphas in enumerate(named_alphas.values()):
        spans = [1 / max(1 - a, 1e-9) for a in alphas]
        ax.scatter(spans, [row] * len(spans), s=18, alpha=0.7)
    ax.set_xscale("log")
    ax.set_yticks(range(len(named_alphas)), list(named_alphas))
    ax.set_ylim(-0.6, len(named_alphas) - 0.4)
    ax.set_xlabel("memory span 1 / (1 - alpha), tokens (log scale)")
    return ax


def plot_recall(results: list[dict], ax=None):
    """Accuracy on MQAR during training, one line per run."""
    ax = ax or plt.subplots(figsize=(COLUMN_INCHES, 3.6))[1]
    for r in results:
        steps, _, acc = zip(*r["curve"], strict=True)
        ax.plot(steps, acc, label=f"{r['name']} ({acc[-1]:.2f})", lw=1.2)
    chance = results[0]["chance"]
    ax.axhline(chance, color="0.5", ls=":", lw=1)
    ax.text(0, chance + 0.02, "chance", fontsize=9, color="0.4")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("recall accuracy")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return ax


def information_histogram(nats_per_story: list[float], ax=None):
    """How much information each story holds, in nats (its ``-log p``)."""
    ax = ax or plt.subplots(figsize=(COLUMN_INCHES, 2.6))[1]
    ax.hist(nats_per_story, bins=40, color=COLORS["linear_attention"])
    ax.set_xlabel("information of a story, -log p (nats)")
    ax.set_ylabel("stories")
    mean = sum(nats_per_story) / len(nats_per_story)
    ax.axvline(mean, color="black", lw=1)
    ax.text(mean, ax.get_ylim()[1] * 0.9, f" mean {mean:.1f} nats = {mean / math.log(2):.1f} bits", fontsize=9)
    return ax
