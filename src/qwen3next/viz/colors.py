"""The book's colours: one per kind of block, used by every figure so a reader learns them once.

The first six name the model's blocks; the rest are for the parts of data-flow diagrams. Chapters draw
with ``COLORS[name]``, never with a colour of their own for one of these things.
"""

COLORS = {
    "linear_attention": "#4C9BE8",  # Gated DeltaNet
    "full_attention": "#F08A4B",  # gated attention
    "moe": "#7BC67B",  # routed experts
    "dense": "#B0B0B0",
    "norm": "#E6E6E6",
    "embed": "#C9A0DC",  # embedding and LM head
    "shared_expert": "#2E8B57",  # the shared expert and the router: run for every token
    "tensor": "#FFFFFF",  # a tensor (input, output, intermediate) in a data-flow diagram
    "state": "#FFD966",  # a cache or a recurrent state kept between steps
    "rotary": "#E8B4B8",  # rotary position embedding
    "text": "#F4F1E8",  # text and its pieces before they are ids
    "highlight": "#D62728",  # the one thing a figure points at
}
LABELS = {"linear_attention": "Gated DeltaNet", "full_attention": "Gated Attention"}
