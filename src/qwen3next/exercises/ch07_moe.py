"""Checks for the exercises of chapter 07, "Mixture of experts: 512 experts, 10 at a time"."""

from __future__ import annotations

import torch

from ..config import Qwen3NextConfig
from ..moe import SparseMoeBlock, load_balancing_loss, route
from . import check_close, check_equal, check_tensor_close, report


def exercise_router_logits() -> torch.Tensor:
    """Router logits of exercise 7.2: 6 tokens, 16 experts, seeded."""
    return 2 * torch.randn(6, 16, generator=torch.Generator().manual_seed(7))


def exercise_block() -> tuple[SparseMoeBlock, torch.Tensor]:
    """The small MoE block and input of exercise 7.4: 8 experts, top 2, hidden 64; x of shape (1, 5, 64)."""
    torch.manual_seed(74)
    block = SparseMoeBlock(Qwen3NextConfig.tiny())
    x = torch.randn(1, 5, block.hidden_size, generator=torch.Generator().manual_seed(75))
    return block, x


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_active_moe_params(answer: int) -> bool:
    """Parameters one token uses in one MoE block of the released model (router, 10 experts, shared part)."""
    cfg = Qwen3NextConfig.full()
    with torch.device("meta"):  # shapes only: no memory for 1.6B numbers
        block = SparseMoeBlock(cfg)
    expected = (_count(block.gate) + cfg.num_experts_per_tok * _count(block.experts[0])
                + _count(block.shared_expert) + _count(block.shared_expert_gate))
    return check_equal(answer, expected, "the router scores all 512 experts (512 x 2048), then 10 routed experts "
                       "and the shared expert each use 3 matrices of 512 x 2048, plus the 1 x 2048 shared gate.")


def check_topk_weights(answer) -> bool:
    """Top-4 renormalised routing weights of ``exercise_router_logits()``, in order of decreasing weight."""
    expected = route(exercise_router_logits(), 4, norm_topk_prob=True)[0]
    return check_tensor_close(answer, expected, "softmax over all 16 logits first (in float32), keep the 4 largest "
                              "probabilities, then divide them by their sum.", atol=1e-6)


def check_uniform_balance_loss(answer: float) -> bool:
    """Load-balancing loss (before the 0.001 coefficient) of a router whose probabilities are all 1/512."""
    cfg = Qwen3NextConfig.full()
    expected = load_balancing_loss(torch.zeros(4, cfg.num_experts), cfg.num_experts, cfg.num_experts_per_tok).item()
    return check_close(answer, expected, "with P_e = 1/E for every expert, E * sum_e f_e * P_e = sum_e f_e; how many "
                       "experts does each token count towards?", rel=1e-6)


def check_dense_moe(answer) -> bool:
    """The output of ``exercise_block()`` computed densely: every expert on every token, weights zero off top-k."""
    block, x = exercise_block()
    with torch.no_grad():
        expected = block(x)[0]
    if isinstance(answer, torch.Tensor) and answer.requires_grad:
        answer = answer.detach()
    if isinstance(answer, torch.Tensor) and answer.shape != expected.shape:
        return report(False, f"expected shape {tuple(expected.shape)} (like x), got {tuple(answer.shape)}.")
    return check_tensor_close(answer, expected, "build a (tokens, experts) weight matrix that is zero outside each "
                              "token's top 2 (scatter the renormalised weights), sum weight x expert(x) over all "
                              "experts, then add sigmoid(shared_expert_gate(x)) * shared_expert(x).", atol=1e-5)
