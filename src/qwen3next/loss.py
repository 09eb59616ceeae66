"""The language-model loss of a training step, computed where the logits are made.

:func:`linear_cross_entropy` multiplies the final hidden states by the vocabulary projection and takes the
cross-entropy in one pass, a few hundred rows at a time, making the loss's gradient while each block of
logits is still in the CPU's cache. It gives the same numbers as ``F.cross_entropy(F.linear(h, W))``: only
the memory traffic of the backward pass changes (no ``(B T, V)`` log-softmax kept for it). Used by
:meth:`qwen3next.model.Qwen3NextForCausalLM.forward` when labels are given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import autocast_operands


def next_token_targets(labels: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Position t predicts token t + 1: the labels shifted left, the last position -100 (counts for nothing).

    The targets are shifted rather than the logits cut: slicing (B, T, V) logits would copy them."""
    return F.pad(labels[:, 1:].to(hidden.device), (0, 1), value=-100).flatten()  # (B T,)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits = hidden W^T`` and the mean cross-entropy of ``softmax(logits)`` against ``targets``.

    ``hidden (B, T, H)``, ``weight (V, H)``, ``targets (B T,)`` with -100 for positions that do not count.
    Returns ``(loss, logits (B, T, V))``: the same numbers as ``F.cross_entropy(F.linear(hidden,
    weight).flatten(0, 1).float(), targets, ignore_index=-100)``, softmax in float32. The gradient of the
    loss, ``(softmax - onehot(target)) / count`` per row, is made in the same pass, ``chunk`` rows at a
    time while their logits are still in the cache: no (B T, V) log-softmax to keep for the backward
    pass, nor a second one to write in it (:class:`_LinearCrossEntropy`). The logits keep their own
    gradient, for a caller who puts them into another loss.

    Under ``torch.autocast`` the two operands are cast to the autocast dtype first, as autocast casts
    those of a linear layer: the products run in bfloat16, the softmax and the sums stay in float32.
    """
    hidden, weight = autocast_operands(hidden, weight)
    needs = torch.is_grad_enabled() and (hidden.requires_grad, weight.requires_grad)
    with torch.autocast(hidden.device.type, enabled=False):  # the dtypes are settled: no casts inside
        loss, logits = _LinearCrossEntropy.apply(hidden.flatten(0, 1), weight, targets, chunk,
                                                 needs or (False, False))
    return loss, logits.view(*hidden.shape[:-1], -1)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, chunk, needs):  # h (N, H), weight (V, H), targets (N,)
        N, V = h.shape[0], weight.shape[0]
        logits = h.new_empty(N, V)
        counted = targets != -100
        count = counted.sum()
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        acc = torch.promote_types(weight.dtype, torch.float32)  # a bfloat16 dW is summed over chunks in float32
        dh = torch.empty_like(h) if needs[0] else None
        dW = torch.zeros_like(weight, dtype=acc) if needs[1] else None
        softmax = None if dh is None and dW is None else h.new_empty(min(chunk, N), V, dtype=torch.float32)
        for s in range(0, N, chunk):
            rows = slice(s, min(s + chunk, N))
            z = torch.mm(h[rows], weight.t(), out=logits[rows]).float()  # (n, V)
            target, keep = targets[rows].clamp(min=0), counted[rows]
            if softmax is None:
                lse = torch.logsumexp(z, dim=-1)  # (n,)
                total += ((lse - z.gather(1, target[:, None])[:, 0]) * keep).sum()
                continue
            # exp once, for the log-sum-exp and the softmax alike: exp(z - max) / its sum
            top = z.amax(dim=-1, keepdim=True)  # (n, 1)
            grad = torch.sub(z, top, out=softmax[: z.shape[0]]).exp_()  # (n, V)
            norm = grad.sum(dim=-1, keepdim=True)  # (n, 1)
            lse = (top + norm.log())[:, 0]  # (n,)
            total += ((lse - z.gather(1, target[:, None])[:, 0]) * keep).sum()
            grad.div_(norm)  # softmax
            grad[torch.arange(grad.shape[0], device=h.device), target] -= keep.float()  # minus onehot(target)
            grad = grad.mul_((keep.float() / count)[:, None]).to(weight.dtype)  # d loss / d logits
            if dh is not None:
                torch.mm(grad, weight, out=dh[rows])
            if dW is not None and dW.dtype == weight.dtype:
                dW.addmm_(grad.t(), h[rows])
            elif dW is not None:  # each chunk's product in the weight's dtype, their sum in float32
                dW.add_(grad.t() @ h[rows])
        ctx.save_for_backward(dh, None if dW is None else dW.to(weight.dtype), h, weight)
        ctx.set_materialize_grads(False)
        return total / count, logits

    @staticmethod
    def backward(ctx, dloss, dlogits):
        dh, dW, h, weight = ctx.saved_tensors
        grads = [None, None]
        for i, (ready, through_logits) in enumerate(((dh, lambda: dlogits @ weight), (dW, lambda: dlogits.t() @ h))):
            if not ctx.needs_input_grad[i]:
                continue
            if dloss is not None and ready is not None:
                grads[i] = ready * dloss.to(ready.dtype)
            if dlogits is not None:  # the logits were also used elsewhere
                grads[i] = through_logits() if grads[i] is None else grads[i] + through_logits()
        return grads[0], grads[1], None, None, None
