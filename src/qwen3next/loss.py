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
    The weight's gradient is then one product over the whole batch, whose (B T, V) input, the loss's
    gradient in bfloat16, is kept until the end of the pass (as large as the bfloat16 logits).
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
        dh = torch.empty_like(h) if needs[0] else None
        # a float32 (or float64) dW is summed chunk by chunk; a bfloat16 one is made at the end by one product
        # over every chunk's gradient, kept for it in the weight's dtype (summed in float32 inside the
        # product, rounded once)
        low_dW = needs[1] and torch.promote_types(weight.dtype, torch.float32) != weight.dtype
        dW = torch.zeros_like(weight) if needs[1] and not low_dW else None
        # buffers made once: a fresh (chunk, V) tensor per chunk would be fresh pages of memory, and the
        # first write to each page costs more than the arithmetic on it
        work = h.new_empty(min(chunk, N), V, dtype=torch.float32)  # the logits in float32, then the softmax
        cast = (None if weight.dtype == torch.float32
                else h.new_empty(N if low_dW else min(chunk, N), V, dtype=weight.dtype))
        for s in range(0, N, chunk):
            rows = slice(s, min(s + chunk, N))
            z = torch.mm(h[rows], weight.t(), out=logits[rows])  # (n, V) in the products' dtype
            n = z.shape[0]
            z = z if z.dtype == torch.float32 else work[:n].copy_(z)  # float32
            target, keep = targets[rows].clamp(min=0), counted[rows]
            picked = z.gather(1, target[:, None])[:, 0]  # (n,) the target's logit
            if not any(needs):
                total += ((torch.logsumexp(z, dim=-1) - picked) * keep).sum()
                continue
            # exp once, for the log-sum-exp and the softmax alike: exp(z - max) / its sum
            top = z.amax(dim=-1, keepdim=True)  # (n, 1)
            grad = torch.sub(z, top, out=work[:n]).exp_()  # (n, V)
            norm = grad.sum(dim=-1, keepdim=True)  # (n, 1)
            total += ((top[:, 0] + norm.log()[:, 0] - picked) * keep).sum()
            grad.div_(norm)  # softmax
            grad[torch.arange(n, device=h.device), target] -= keep.float()  # minus onehot(target)
            grad = grad.mul_((keep.float() / count)[:, None])  # d loss / d logits
            grad = grad if cast is None else cast[rows if low_dW else slice(0, n)].copy_(grad)  # weight's dtype
            if dh is not None:
                torch.mm(grad, weight, out=dh[rows])
            if dW is not None:
                dW.addmm_(grad.t(), h[rows])
        if low_dW:
            dW = cast.t() @ h  # (V, H)
        ctx.save_for_backward(dh, dW, h, weight)
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
