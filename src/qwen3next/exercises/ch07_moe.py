"""Checks for the exercises of chapter 07, "Mixture of experts: 512 experts, 10 at a time"."""

from __future__ import annotations

import torch

from ..config import Qwen3NextConfig
from ..moe import SparseMoeBlock, load_balancing_loss, route
from . import check_close, check_equal, check_tensor_close, report


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


ROUTER_HINT = ("softmax over all experts in float32 (logits.float().softmax(-1)), keep the k largest "
               "probabilities with topk, divide them by their sum, cast the weights to the logits' dtype.")


def check_router(fn) -> bool:
    """``fn(logits (N, E), k) -> (weights (N, k), experts (N, k))``: the router of the chapter.

    Tried on float32 and bfloat16 logits of several sizes against :func:`qwen3next.moe.route`: the same
    experts in the same order (largest weight first) and the same weights, in the logits' dtype.
    """
    if fn is Ellipsis:
        return check_equal(fn, None, ROUTER_HINT)
    gen = torch.Generator().manual_seed(7)
    for n, e, k, dtype in ((6, 16, 4, torch.float32), (32, 64, 8, torch.float32), (9, 512, 10, torch.bfloat16)):
        logits = (2 * torch.randn(n, e, generator=gen)).to(dtype)
        want_w, want_i, _ = route(logits, k, norm_topk_prob=True)
        try:
            got = fn(logits.clone(), k)
            got_w, got_i = got
        except Exception as err:  # a student's function may fail in any way: say how
            return report(False, f"your function raised {type(err).__name__}: {err}")
        case = f"for {n} tokens, {e} experts, top {k}, {str(dtype).replace('torch.', '')} logits"
        if not (isinstance(got_w, torch.Tensor) and isinstance(got_i, torch.Tensor)):
            return report(False, f"return two tensors, (weights, experts); {ROUTER_HINT}")
        if tuple(got_w.shape) != (n, k) or tuple(got_i.shape) != (n, k):
            return report(False, f"{case} expected two ({n}, {k}) tensors, got {tuple(got_w.shape)} and "
                          f"{tuple(got_i.shape)}.")
        if not torch.equal(got_i.long(), want_i):
            return report(False, f"{case} you chose other experts (or another order). {ROUTER_HINT}")
        if got_w.dtype != want_w.dtype:
            return report(False, f"{case} the weights should be {want_w.dtype}, got {got_w.dtype}. {ROUTER_HINT}")
        if not torch.allclose(got_w.float(), want_w.float(), rtol=0, atol=1e-6 if dtype == torch.float32 else 4e-3):
            return report(False, f"{case} the weights differ. {ROUTER_HINT}")
    return report(True, "")


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


# Exercise 7.7: the trained router's balance, layer by layer, on the chapter's first 8 held-out stories
LAYER_BALANCE_HINT = ("for each layer's router logits (N, E): f_e = the share of the N tokens with e among "
                      "their top k (expert_load / N), P_e = the mean softmax probability of e over the tokens, "
                      "and E * sum_e f_e * P_e; one number per layer, in layer order.")


def check_layer_balance(answer) -> bool:
    """The load-balancing loss of each layer of the trained model alone, on ``generate_stories(8, seed=10_000)``
    (the first 8 of the chapter's held-out stories): a sequence of ``num_hidden_layers`` numbers."""
    from ..lens import story_ids
    from .trained import held_out_stories, trained_model_and_tokenizer

    if answer is Ellipsis:
        return check_equal(answer, None, LAYER_BALANCE_HINT)
    model, tokenizer = trained_model_and_tokenizer()
    cfg = model.config
    with torch.no_grad():
        out = model(story_ids(tokenizer, held_out_stories(8)), output_router_logits=True)
    expected = [load_balancing_loss(lg, cfg.num_experts, cfg.num_experts_per_tok).item() for lg in out.router_logits]
    try:
        got = [float(v) for v in answer]
    except (TypeError, ValueError):
        return report(False, f"answer with a list of {len(expected)} numbers, one per layer. {LAYER_BALANCE_HINT}")
    if len(got) != len(expected):
        return report(False, f"expected {len(expected)} numbers (one per layer), got {len(got)}. {LAYER_BALANCE_HINT}")
    off = [layer for layer, (a, b) in enumerate(zip(got, expected, strict=True)) if not abs(a - b) <= 1e-4 * abs(b)]
    if off:
        return report(False, f"layer {off[0]}'s loss is off (layers counted from 0). {LAYER_BALANCE_HINT}")
    return report(True, "")
