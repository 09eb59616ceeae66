"""What the exercises of chapters 06-08 read: the book's trained model and its held-out stories."""

from __future__ import annotations

HELD_OUT_SEED = 10_000  # the stories of this seed were never trained on (training reads the stream of seed 0)


def trained_model_and_tokenizer():
    """The book's trained model (eval mode) and its tokenizer, from ``qwen3next.tiny_pretrained_path()``."""
    from .. import Qwen3NextForCausalLM, Tokenizer, tiny_pretrained_path

    path = tiny_pretrained_path()
    return Qwen3NextForCausalLM.from_pretrained(path).eval(), Tokenizer.from_pretrained(path)


def held_out_stories(n: int):
    """The first ``n`` held-out stories (``generate_stories(n, seed=HELD_OUT_SEED)``)."""
    from ..stories import generate_stories

    return generate_stories(n, seed=HELD_OUT_SEED)
