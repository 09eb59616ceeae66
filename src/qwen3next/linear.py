"""The projection layer of every block: ``torch.nn.Linear``, with its random fill skipped on the meta device.

A module built on ``meta`` has shapes and no storage, yet ``nn.Linear`` still runs its default
initialisation there, and a random fill on ``meta`` goes through a slow Python decomposition in
PyTorch. The full model has some 74,000 projections (3 per expert, 512 experts, 48 layers), so that
fill would be most of the time it takes to build the model's shapes. Everywhere else this is exactly
``nn.Linear``: the same parameters, the same default initialisation and random numbers, the same
``state_dict``.

One kernel choice, per call: a single float32 row through a large weight (the vocabulary projection of
a decoding step) goes through oneDNN's matrix-vector product, which streams a weight that is not in the
cache faster than the default BLAS call (measured on one core of an AMD EPYC: a 16 MB weight read cold,
0.7 ms instead of 1.2 ms; in ``benchmarks/bench_model.py``'s decoding about 0.4 ms of 4.8 ms per token);
the same product, summed in another order (float32 rounding). Only without autograd: the kernel has no
backward.

One kernel choice for a whole block of code, on request only: :func:`use_cpu_kernels`. For one bfloat16 row
through a large weight, which is every decoding step of a bfloat16 model, PyTorch's own kernel can stream
the weight faster than oneDNN's; for many rows, as in a prefill, oneDNN's is far faster. PyTorch offers
that choice only as a process-wide flag, so nothing in the package flips it unless its caller asks
(``generate(..., cpu_kernels="native")`` does, around each decoding step and nothing else).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

STREAMED_WEIGHT = 2**20  # elements (4 MB in float32): below that the weight tends to sit in the cache anyway
CPU_KERNELS = ("onednn", "native")  # who runs the CPU products: oneDNN (PyTorch's default) or PyTorch itself
_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def _stream_one_row(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``F.linear(x, weight)`` is one float32 row through a large weight, with nothing to differentiate."""
    return (bias is None and x.numel() == weight.shape[1] and weight.numel() >= STREAMED_WEIGHT
            and x.dtype == weight.dtype == torch.float32 and x.device.type == weight.device.type == "cpu"
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and _ONEDNN_LINEAR is not None)


def check_cpu_kernels(name: str) -> None:
    """A ValueError naming ``cpu_kernels`` unless ``name`` is one of :data:`CPU_KERNELS` (callers check
    before they start, not at their first decoding step)."""
    if name not in CPU_KERNELS:
        raise ValueError(f"cpu_kernels: expected one of {CPU_KERNELS}, found {name!r}")


@contextlib.contextmanager
def use_cpu_kernels(name: str) -> Iterator[None]:
    """Inside the block, the CPU's matrix products run on ``name``'s kernels: ``"onednn"`` (PyTorch's
    default, nothing changes) or ``"native"`` (PyTorch's own kernels: oneDNN switched off).

    The switch is PyTorch's own flag, ``torch.backends.mkldnn.enabled``: it holds for the whole process
    while the block runs (other threads included) and is put back as it was when the block ends. The
    results are the same products summed in another order (rounding differences only)."""
    check_cpu_kernels(name)
    if name == "onednn":  # PyTorch's default: nothing to switch
        yield
        return
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


class Linear(nn.Linear):
    """``nn.Linear`` that leaves a meta-device weight unfilled (there is nothing to fill)."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _stream_one_row(x, self.weight, self.bias):
            return _ONEDNN_LINEAR(x, self.weight, None, "none", [], "")
        return F.linear(x, self.weight, self.bias)
