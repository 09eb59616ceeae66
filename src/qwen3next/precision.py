"""Mixed precision: where the package keeps its own dtype inside a ``torch.autocast`` region.

Under ``torch.autocast(device, dtype=torch.bfloat16)`` PyTorch casts the operands of every matrix
product to bfloat16 and leaves the rest in float32. Training this way (``TrainConfig.mixed_precision``)
keeps float32 weights, gradients and optimiser states. Three parts of the model set their own rule:

* the delta rule (:mod:`qwen3next.delta_rule`) runs with autocast off (:func:`float32_inside_autocast`):
  its state is carried over thousands of tokens and the UT transform inverts a matrix, so rounding
  every product to bfloat16 would pile up;
* the fused loss (:mod:`qwen3next.loss`) casts its two operands as autocast casts a linear layer's
  (:func:`autocast_operands`), then keeps the softmax and the sums in float32;
* the routed experts (:class:`qwen3next.moe.SparseMoeBlock`) stay in float32, for speed: see there.
"""

from __future__ import annotations

import functools

import torch


def float32_inside_autocast(kernel):
    """``kernel`` run with ``torch.autocast`` off on the device of its first argument (a tensor).

    The kernel casts its inputs to float32 itself; its output keeps the dtype it would have anyway.
    Outside an autocast region (every decoding step) it is called as it is, with no context to enter.
    """

    @functools.wraps(kernel)
    def run(x, *args, **kwargs):
        if not torch.is_autocast_enabled(x.device.type):
            return kernel(x, *args, **kwargs)
        with torch.autocast(x.device.type, enabled=False):
            return kernel(x, *args, **kwargs)

    return run


def autocast_operands(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors in the autocast dtype inside an autocast region on their device, else unchanged.

    Differentiable casts: the gradients come back in the tensors' own dtype."""
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) for t in tensors)
