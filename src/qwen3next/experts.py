"""The experts of the MoE block: one SwiGLU MLP, and E of them stacked in two 3-D tensors.

* :class:`MLP`: ``down(silu(gate(x)) * up(x))``; the shared expert, a dense layer's MLP, and the
  definition of one routed expert.
* :func:`swiglu`: the same product written with ``F.linear`` on any object holding the three weights.
* :class:`StackedExperts`: the E routed experts of a block as two parameters, ``gate_up_proj``
  (E, 2I, H), expert e's gate rows then its up rows, and ``down_proj`` (E, H, I): the layout of the
  reference's ``Qwen3NextExperts``. One batched product can then gather the k experts of a decoding
  token (small experts), instead of running 3 products per expert one after the other.

A stack still behaves like the list of experts of the Hub checkpoint: ``len(experts)``, and
``experts[e]`` is expert e (an :class:`ExpertWeights`, callable, whose ``gate_proj.weight``,
``up_proj.weight`` and ``down_proj.weight`` are views into the stack, so gradients reach the stack
through them). Its ``state_dict`` keys are the Hub's per-expert ones (``{e}.gate_proj.weight``, ...),
written as views (no copy) and read back into the stack; ``named_parameters`` shows the stack
(``gate_up_proj``, ``down_proj``), as the reference names it.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from .linear import Linear

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


class MLP(nn.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``; an expert, the shared expert or a dense MLP."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        # W_g (I, H)
        self.gate_proj = Linear(hidden_size, intermediate_size, bias=False)
        # W_u (I, H)
        self.up_proj = Linear(hidden_size, intermediate_size, bias=False)
        # W_d (H, I)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., H) -> (..., H)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def swiglu(x: torch.Tensor, expert) -> torch.Tensor:
    """``expert(x)`` written with ``F.linear`` on its three weights: (n, H) -> (n, H).

    Same numbers as ``MLP.forward``; works for any object with ``gate_proj``, ``up_proj`` and
    ``down_proj`` that have a ``weight`` (an offloaded expert need not be an ``nn.Module``).
    """
    h = F.silu(F.linear(x, expert.gate_proj.weight)) * F.linear(x, expert.up_proj.weight)  # (n, I)
    return F.linear(h, expert.down_proj.weight)  # (n, H)


class ExpertWeights:
    """Expert e of a :class:`StackedExperts`: ``gate_proj.weight`` (I, H), ``up_proj.weight`` (I, H) and
    ``down_proj.weight`` (H, I), views into the stack. Calling it runs the expert (:func:`swiglu`)."""

    def __init__(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor):
        self.gate_proj, self.up_proj, self.down_proj = (SimpleNamespace(weight=w) for w in (gate, up, down))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return swiglu(x, self)

    def parameters(self):
        """The three weights (views), like an ``MLP``'s parameters (e.g. to count them)."""
        return iter((self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight))


class StackedExperts(nn.Module):
    """E SwiGLU experts of width I on hidden size H, stored as ``gate_up_proj`` (E, 2I, H) and
    ``down_proj`` (E, H, I); indexed, iterated and saved like a list of E :class:`MLP`."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int):
        super().__init__()
        E, H, I = num_experts, hidden_size, intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, H))
        self.down_proj = nn.Parameter(torch.empty(E, H, I))
        self.reset_parameters()

    @classmethod
    def from_stacks(cls, gate_up: torch.Tensor, down: torch.Tensor) -> StackedExperts:
        """A stack holding these tensors (E, 2I, H) and (E, H, I) as its parameters (not copied)."""
        with torch.device("meta"):
            out = cls(gate_up.shape[0], gate_up.shape[2], down.shape[2])
        out.gate_up_proj, out.down_proj = nn.Parameter(gate_up), nn.Parameter(down)
        return out

    @property
    def intermediate_size(self) -> int:
        return self.down_proj.shape[-1]

    @property
    def expert_size(self) -> int:
        """Elements of one expert's three weights, ``3 I H``."""
        return self.gate_up_proj[0].numel() + self.down_proj[0].numel()

    def __len__(self) -> int:
        return self.gate_up_proj.shape[0]

    def __getitem__(self, e):
        if isinstance(e, slice):  # experts a..b as a stack of their own (a copy: see parallel.py)
            return StackedExperts.from_stacks(self.gate_up_proj[e].detach().clone(),
                                              self.down_proj[e].detach().clone())
        e = int(e)
        if not 0 <= e < len(self):
            raise IndexError(f"expert {e} out of range 0..{len(self) - 1}")
        I = self.intermediate_size
        return ExpertWeights(self.gate_up_proj[e, :I], self.gate_up_proj[e, I:], self.down_proj[e])

    def __iter__(self):
        return (self[e] for e in range(len(self)))

    # ---------------------------------------------------------------------------- initialisation
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``nn.Linear``'s default fill, expert by expert in the order of a list of ``MLP`` (the same
        random numbers); nothing to fill on the meta device."""
        if not self.gate_up_proj.is_meta:
            for weights in self:
                for w in weights.parameters():
                    nn.init.kaiming_uniform_(w, a=math.sqrt(5))

    @torch.no_grad()
    def normal_(self, std: float) -> None:
        """N(0, std) in every weight, drawn expert by expert like a list of ``MLP`` (the model's init)."""
        for weights in self:
            for w in weights.parameters():
                w.normal_(0.0, std)

    # -------------------------------------------------------------------- the Hub's per-expert keys
    def _expected(self, prefix: str) -> dict[str, torch.Tensor]:
        """``{prefix}{e}.{proj}.weight`` -> the view of the stack it names."""
        return {f"{prefix}{e}.{proj}.weight": getattr(weights, proj).weight
                for e, weights in enumerate(self) for proj in PROJECTIONS}

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for key, view in self._expected(prefix).items():
            destination[key] = view if keep_vars else view.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        expected = self._expected(prefix)
        missing_keys.extend(k for k in expected if k not in state_dict)
        if strict:
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k not in expected)
        bad = [k for k, view in expected.items() if k in state_dict and state_dict[k].shape != view.shape]
        error_msgs.extend(f"size mismatch for {k}: copying a param with shape {tuple(state_dict[k].shape)} "
                          f"from checkpoint, the shape in current model is {tuple(expected[k].shape)}." for k in bad)
        if bad:
            return
        assign = local_metadata.get("assign_to_params_buffers", False)
        if (assign or self.gate_up_proj.is_meta) and not any(k not in state_dict for k in expected):
            self._assign(state_dict, prefix)
            return
        with torch.no_grad():
            for key, view in expected.items():
                if key in state_dict:
                    view.copy_(state_dict[key])

    def _assign(self, state_dict, prefix: str) -> None:
        """New stacks built from the state dict's tensors (a module on ``meta``, or ``assign=True``)."""
        w = [[state_dict[f"{prefix}{e}.{p}.weight"] for p in PROJECTIONS] for e in range(len(self))]
        grad = self.gate_up_proj.requires_grad
        self.gate_up_proj = nn.Parameter(torch.stack([torch.cat([g, u]) for g, u, _ in w]), requires_grad=grad)
        self.down_proj = nn.Parameter(torch.stack([d for _, _, d in w]), requires_grad=grad)

    def slot(self, key: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The view that expert weight ``key`` (``"{e}.{proj}.weight"``) fills, for a loader copying into
        it; a stack still on the meta device first gets (empty) storage in ``dtype`` on ``device``."""
        if self.gate_up_proj.is_meta:
            grad = self.gate_up_proj.requires_grad
            self.gate_up_proj = nn.Parameter(torch.empty(self.gate_up_proj.shape, dtype=dtype, device=device),
                                             requires_grad=grad)
            self.down_proj = nn.Parameter(torch.empty(self.down_proj.shape, dtype=dtype, device=device),
                                          requires_grad=grad)
        e, proj, leaf = (key.split(".") + ["", ""])[:3]
        if not (e.isdigit() and int(e) < len(self) and proj in PROJECTIONS and leaf == "weight"):
            raise KeyError(f"{key}: expected '<expert>.<gate_proj|up_proj|down_proj>.weight' with expert "
                           f"0..{len(self) - 1}")
        return getattr(self[int(e)], proj).weight.data

    def extra_repr(self) -> str:
        E, I2, H = self.gate_up_proj.shape
        return f"{E} experts, hidden {H}, width {I2 // 2}: gate_up_proj {(E, I2, H)}, down_proj {(E, H, I2 // 2)}"
