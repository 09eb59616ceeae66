"""The projection layer of every block: ``torch.nn.Linear``, with its random fill skipped on the meta device.

A module built on ``meta`` has shapes and no storage, yet ``nn.Linear`` still runs its default
initialisation there, and a random fill on ``meta`` goes through a slow Python decomposition in
PyTorch. The full model has some 74,000 projections (3 per expert, 512 experts, 48 layers), so that
fill would be most of the time it takes to build the model's shapes. Everywhere else this is exactly
``nn.Linear``: the same parameters, the same default initialisation and random numbers, the same
``state_dict``.
"""

from __future__ import annotations

from torch import nn


class Linear(nn.Linear):
    """``nn.Linear`` that leaves a meta-device weight unfilled (there is nothing to fill)."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()
