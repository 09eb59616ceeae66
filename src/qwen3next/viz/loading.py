"""The loading path as a data-flow diagram with shapes and sizes (chapter 09).

From the files of a checkpoint to a model in memory: the headers are read (no tensor data), every key,
shape and dtype is checked against the layout the config implies and against a model built on the meta
device, then the tensors are copied shard by shard, FP8 blocks are dequantised, and with offloading the
routed experts stay on disk and are read when the router picks them. Counts and sizes come from the
config (``qwen3next.hub_layout.hub_layout``); the number of shards, a property of the files, is passed in.
"""

from __future__ import annotations

import math

from ..config import Qwen3NextConfig
from ..hub_layout import component_of, hub_layout, mtp_layout
from .colors import COLORS
from .diagram import arrow, box, canvas, note

DISK = "#F3E9B5"  # files on disk
CHECK = "#F7D2C4"  # checks before anything is allocated


def draw_loading_path(cfg: Qwen3NextConfig, shards: int, fp8_block: tuple[int, int] = (128, 128)):
    """``from_pretrained`` step by step for a checkpoint of ``cfg`` in ``shards`` files; returns the figure."""
    layout = hub_layout(cfg)
    n_tensors = len(layout) + len(mtp_layout(cfg))
    expert_numel = sum(math.prod(e.shape) for k, e in layout.items() if component_of(k) == "routed experts")
    rest_numel = sum(math.prod(e.shape) for e in layout.values()) - expert_numel
    moe_layers = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
    I, H = cfg.moe_intermediate_size, cfg.hidden_size
    scale = (-(-I // fp8_block[0]), -(-H // fp8_block[1]))
    gib = 2 * 2**-30  # bf16 bytes per parameter, in GiB

    fig, ax = canvas(6.7)
    cx, w = 2.05, 3.9  # the main path
    sx, sw = 5.45, 2.55  # the side paths
    files = [(0.8, 1.4, "config.json\nhyper-parameters"),
             (2.85, 2.4, f"model.safetensors.index.json\n{n_tensors:,} names -> their shard"),
             (5.45, 2.55, f"{shards} shards, each one\n[ 8-byte N | JSON header | bytes ]")]
    for x, fw, text in files:
        box(ax, x, 6.15, fw, 0.5, text, DISK)
        arrow(ax, (x, 5.9), (cx + (x - cx) * 0.4, 5.35))
    note(ax, 0.1, 6.55, "on disk", color="black", fontweight="bold")
    steps = [  # (y, height, text, colour)
        (5.05, 0.56, "read_header, shard by shard: the first 8 + N bytes\n"
         "name -> dtype, shape, byte range (no tensor data)", COLORS["norm"]),
        (4.2, 0.56, "Qwen3NextForCausalLM(config) on the meta device:\nevery shape, no storage",
         COLORS["norm"]),
        (3.25, 0.72, "check against hub_layout(config) and the model:\nevery key, shape and dtype; mtp.* "
         "set aside;\na problem names its file, tensor, config field", CHECK),
        (2.1, 0.72, "copy shard by shard: safe_open (memory-mapped),\ncopy each tensor, convert its dtype,\n"
         "put it in place; one shard mapped at a time", COLORS["embed"]),
        (1.0, 0.56, f"the model in memory (bf16): {rest_numel * gib:.1f} GiB without\n"
         f"the routed experts, {(rest_numel + expert_numel) * gib:.0f} GiB with them", "white"),
    ]
    for i, (y, h, text, color) in enumerate(steps):
        box(ax, cx, y, w, h, text, color)
        if i + 1 < len(steps):
            ny, nh = steps[i + 1][0], steps[i + 1][1]
            arrow(ax, (cx, y - h / 2), (cx, ny + nh / 2))
    note(ax, cx + 0.06, 2.67, "nothing allocated before this point")
    box(ax, sx, 3.55, sw, 0.9, f"FP8 weight (-FP8 release)\nW_fp8 ({I}, {H}) e4m3\n+ scale_inv {scale} fp32"
        f"\nW = W_fp8 x scale, one per block", COLORS["linear_attention"])
    arrow(ax, (cx + w / 2, 2.25), (sx - 0.4, 3.1), style="<|-|>")
    box(ax, sx, 1.5, sw, 1.2, f"offload_experts=True:\n{moe_layers} x {cfg.num_experts} routed experts "
        f"stay\non disk ({expert_numel * gib:.0f} GiB); OffloadedExperts\nasks an LRU store "
        f"({cfg.num_experts_per_tok * moe_layers} experts)\nto read expert e with os.preadv\nwhen the router picks it",
        COLORS["moe"])
    arrow(ax, (cx + w / 2, 1.9), (sx - sw / 2, 1.75))
    note(ax, 0.1, 0.35, f"{n_tensors:,} tensors in {shards} files; with offloading, one token reads up to "
         f"{cfg.num_experts_per_tok} experts x {moe_layers} layers")
    return fig
