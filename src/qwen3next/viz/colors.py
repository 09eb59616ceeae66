"""The book's colours: one per kind of block, used by every figure so a reader learns them once."""

COLORS = {
    "linear_attention": "#4C9BE8",  # Gated DeltaNet
    "full_attention": "#F08A4B",  # gated attention
    "moe": "#7BC67B",
    "dense": "#B0B0B0",
    "norm": "#E6E6E6",
    "embed": "#C9A0DC",
}
LABELS = {"linear_attention": "Gated DeltaNet", "full_attention": "Gated Attention"}
