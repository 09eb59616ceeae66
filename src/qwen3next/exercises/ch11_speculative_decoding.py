"""Checks for the exercises of chapter 11, "Speculative decoding with the MTP head"."""

from __future__ import annotations

import textwrap

from ..config import Qwen3NextConfig
from . import check_close, check_function


def _hint(text: str) -> str:
    """A hint on lines of its own, wrapped to 80 columns (inside the book's 84, with room to spare)."""
    return "\n" + textwrap.fill(text, 80)


def _greedy_cases():
    import torch

    from ..speculative import accept_greedy

    g = torch.Generator().manual_seed(11)
    cases = []
    for B, k, V in ((1, 1, 5), (3, 2, 6), (4, 3, 4), (2, 4, 3), (5, 3, 2)):
        logits = torch.randn(B, k + 1, V, generator=g)
        target = logits.argmax(-1)
        guess = torch.randint(0, V, (B, k), generator=g)
        drafts = torch.where(torch.rand(B, k, generator=g) < 0.7, target[:, :k], guess)  # mostly right
        cases.append(((drafts, logits), torch.stack(accept_greedy(drafts, logits), -1)))
    return cases


def check_accept_greedy(fn) -> bool:
    """``fn(drafts (B, k), target_logits (B, k + 1, V)) -> (accepted (B,), next_token (B,))``."""
    import torch

    def both(drafts, logits):  # the two answers side by side, as one (B, 2) tensor to compare
        accepted, following = fn(drafts, logits)
        return torch.stack([torch.as_tensor(accepted), torch.as_tensor(following)], -1)

    return check_function(both if callable(fn) else fn, _greedy_cases(), _hint(
        "compare each draft with the trunk's arg-max at the position before it (target_logits[:, :k]); "
        "the number accepted is the length of the run of matches from the left (a cumulative product "
        "of the matches, summed); the next token is the trunk's arg-max at that position, "
        "target_logits[b, accepted[b]]."))


def _residual_cases():
    import torch

    from ..speculative import residual_distribution

    g = torch.Generator().manual_seed(12)
    cases = []
    for shape in ((1, 4), (3, 6), (2, 5, 3)):
        p = torch.rand(*shape, generator=g).softmax(-1)
        q = (3 * torch.rand(*shape, generator=g)).softmax(-1)
        cases.append(((p, q), residual_distribution(p, q)))
    return cases


def check_residual(fn) -> bool:
    """``fn(p, q) -> (..., V)``: the distribution to sample from after a draft from ``q`` is rejected."""
    return check_function(fn, _residual_cases(), _hint(
        "keep what p has more of than q, max(p - q, 0), and divide by its sum so that each row sums to 1."),
        atol=1e-6)


def check_expected_tokens(answer: float) -> bool:
    """Expected tokens per verification with k = 3 drafts, each accepted with probability 0.7 on its own."""
    alpha, k = 0.7, 3
    expected = sum(alpha**j for j in range(k + 1))
    return check_close(answer, expected, _hint(
        "the round always gives the trunk's own token; it also gives draft j when drafts 1..j are all "
        "accepted, which happens with probability 0.7^j. Add 1 + 0.7 + 0.7^2 + 0.7^3."), rel=1e-3)


def check_checkpoint_bytes(answer: int) -> bool:
    """Bytes the checkpoints strategy holds for one sequence of the released model with k = 3 drafts
    (conv windows in bf16, recurrent states in float32, every DeltaNet layer, one copy per verified token)."""
    cfg = Qwen3NextConfig.full()
    layers = cfg.layer_types.count("linear_attention")
    conv = cfg.linear_conv_dim * cfg.linear_conv_kernel_dim * 2
    state = cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim * 4
    expected = (3 + 1) * layers * (conv + state)
    return check_close(answer, expected, _hint(
        "per DeltaNet layer the conv window is 8192 x 4 numbers (2 bytes each) and the recurrent state "
        "32 x 128 x 128 numbers (4 bytes each); there are 36 such layers, and verification keeps one "
        "copy after each of the k + 1 = 4 tokens it reads."), rel=1e-9)
