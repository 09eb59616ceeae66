"""Figures of chapter 10: one training step as a data-flow diagram, loss curves against the entropy floor,
the DeltaNet decay at initialisation, and the recall study.

Only drawing lives here; every number drawn comes from the config, log or tensors passed in.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter

from .colors import COLORS
from .diagram import arrow, box, canvas, note
from .style import COLUMN_INCHES

LOSS_COLORS = {"lm": "#1f5fa8", "mtp": "#d0662b", "balance": "#3d8f3d", "floor": "0.2"}


def draw_training_step(cfg, batch_size: int, seq_len: int, mtp_weight: float = 0.3):
    """One training step, top to bottom, with the shape of every tensor for ``cfg`` and a ``(B, T)``
    batch; returns the figure."""
    B, T, H, V, E = batch_size, seq_len, cfg.hidden_size, cfg.vocab_size, cfg.num_experts
    fig, ax = canvas(5.6)
    left, mid, right, w = 1.2, 3.4, 5.6, 2.2
    box(ax, left, 5.25, w, 0.4, f"input_ids ({B}, {T})", COLORS["embed"])
    box(ax, left, 4.3, w, 0.55, f"trunk: embed,\n{cfg.num_hidden_layers} layers, final norm",
        COLORS["linear_attention"])
    box(ax, right, 4.3, w, 0.55, "MTP: fc(cat[norm e,\nnorm h]) -> layer", COLORS["full_attention"])
    arrow(ax, (left, 5.05), (left, 4.58))
    arrow(ax, (left + w / 2, 5.2), (right - 0.4, 4.58))
    note(ax, mid + 0.3, 5.1, f"ids[:, 1:] ({B}, {T - 1})")
    arrow(ax, (left + w / 2, 4.3), (right - w / 2, 4.3))
    note(ax, mid, 4.05, f"h[:, :-1]\n({B}, {T - 1}, {H})", ha="center", va="top")
    box(ax, left, 3.25, w, 0.4, f"lm_head ({B}, {T}, {V})", COLORS["embed"])
    box(ax, right, 3.25, w, 0.4, f"norm, lm_head ({B}, {T - 1}, {V})", COLORS["embed"])
    arrow(ax, (left, 4.02), (left, 3.45), f"h ({B}, {T}, {H})")
    arrow(ax, (right, 4.02), (right, 3.45))
    box(ax, mid, 2.2, 1.8, 0.55, f"router logits\n({B * T}, {E}) per layer", COLORS["moe"])
    arrow(ax, (left + w / 2, 4.1), (mid - 0.4, 2.48))
    arrow(ax, (right - w / 2, 4.1), (mid + 0.4, 2.48))
    box(ax, left, 2.2, w, 0.4, "CE on x[t+1]: lm", LOSS_COLORS["lm"] + "55")
    box(ax, right, 2.2, w, 0.4, "CE on x[t+2]: mtp", LOSS_COLORS["mtp"] + "55")
    arrow(ax, (left, 3.05), (left, 2.4))
    arrow(ax, (right, 3.05), (right, 2.4))
    box(ax, mid, 1.35, 1.8, 0.4, "balance: E sum f P", LOSS_COLORS["balance"] + "55")
    arrow(ax, (mid, 1.92), (mid, 1.55))
    coef = cfg.router_aux_loss_coef
    box(ax, mid, 0.45, 5.2, 0.55, f"loss = lm + {mtp_weight} mtp + {coef:g} balance;\n"
        "backward, clip, AdamW step", COLORS["norm"])
    arrow(ax, (left, 2.0), (left, 0.73))
    arrow(ax, (right, 2.0), (right, 0.73))
    arrow(ax, (mid, 1.15), (mid, 0.73))
    return fig


def plot_losses(records: list[dict], floor: float, axes=None):
    """Left: training (thin) and validation (markers) losses against tokens seen, with the entropy floor.
    Right: how far the validation losses are above the floor (log scale)."""
    if axes is None:
        axes = plt.subplots(1, 2, figsize=(COLUMN_INCHES, 3.2), width_ratios=(3, 2))[1]
    ax, gap = axes
    steps = [r for r in records if "lm" in r]
    evals = [r for r in steps if "val_lm" in r]
    tokens = [r["tokens"] / 1e6 for r in steps]
    eval_tokens = [r["tokens"] / 1e6 for r in evals]
    series = [("lm", "val_lm", "o", "next token")]
    if "val_mtp" in evals[0]:
        series.append(("mtp", "val_mtp", "s", "MTP (token after next)"))
    for train_key, val_key, marker, label in series:
        color = LOSS_COLORS[train_key]
        ax.plot(tokens, [r[train_key] for r in steps], color=color, lw=0.5, alpha=0.4)
        ax.plot(eval_tokens, [r[val_key] for r in evals], marker + "-", ms=3, color=color, label=label)
        gap.plot(eval_tokens, [r[val_key] - floor for r in evals], marker + "-", ms=3, color=color)
    ax.axhline(floor, color=LOSS_COLORS["floor"], ls="--", lw=1, label=f"floor {floor:.3f}")
    ax.set_ylim(floor * 0.9, 1.6)
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("nats per token")
    ax.legend(loc="upper right")
    gap.set_yscale("log")
    gap.yaxis.set_major_locator(FixedLocator([0.01, 0.02, 0.05, 0.1, 0.2, 0.5]))
    gap.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    gap.yaxis.set_minor_formatter(NullFormatter())
    gap.set_xlabel("tokens seen (millions)")
    gap.set_ylabel("validation loss - floor")
    return axes


def plot_schedule(records: list[dict], clip: float, axes=None):
    """The learning rate of every step (left) and the gradient norm before clipping (right)."""
    ax1, ax2 = axes if axes is not None else plt.subplots(1, 2, figsize=(COLUMN_INCHES, 2.6))[1]
    steps = [r["step"] for r in records]
    ax1.plot(steps, [r["lr"] for r in records])
    ax1.set_xlabel("step")
    ax1.set_ylabel("learning rate")
    ax2.plot(steps, [r["grad_norm"] for r in records], lw=0.6)
    ax2.axhline(clip, color=LOSS_COLORS["floor"], ls="--", lw=1, label=f"clipped to {clip:g}")
    ax2.set_yscale("log")
    ax2.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax2.yaxis.set_minor_formatter(NullFormatter())
    ax2.set_xlabel("step")
    ax2.set_ylabel("gradient norm")
    ax2.legend()
    return ax1, ax2


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
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.set_yticks(range(len(named_alphas)), list(named_alphas))
    ax.set_ylim(-0.6, len(named_alphas) - 0.4)
    ax.set_xlabel("memory span 1 / (1 - alpha), tokens (log scale)")
    return ax


def plot_recall(results: list[dict], ax=None):
    """Accuracy on MQAR during training, one line per run."""
    ax = ax or plt.subplots(figsize=(COLUMN_INCHES, 4.6), layout="constrained")[1]
    for r in results:
        steps, _, acc = zip(*r["curve"], strict=True)
        ax.plot(steps, acc, label=f"{r['name']} ({acc[-1]:.2f})", lw=1.2)
    chance = results[0]["chance"]
    ax.axhline(chance, color="0.5", ls=":", lw=1)
    # x in axes fractions, y in data: the label sits at the left edge whatever the steps
    ax.text(0.01, chance + 0.02, "chance", fontsize=9, color="0.4", transform=ax.get_yaxis_transform())
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("recall accuracy")
    # below the axes in two columns: a legend at the side would squeeze the curves on a narrow column
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
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
