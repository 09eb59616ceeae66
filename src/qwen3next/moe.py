"""The sparse mixture-of-experts block of Qwen3-Next: 512 small experts, 10 per token, plus a shared one.

Papers: Shazeer et al., "Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts
Layer" (2017) for top-k routing; Fedus et al., "Switch Transformers" (2021) for the load-balancing
loss; Dai et al., "DeepSeekMoE" (2024) for many fine-grained experts plus a shared expert.
Mirrors ``Qwen3NextMLP``, ``Qwen3NextTopKRouter``, ``Qwen3NextExperts`` and
``Qwen3NextSparseMoeBlock`` and the function ``load_balancing_loss_func`` in
``transformers/models/qwen3_next/modeling_qwen3_next.py``.

For each token ``x`` (hidden size H):

* router: ``p = softmax(W_r x)`` over all E experts in float32; keep the top k; optionally
  renormalise the k kept probabilities to sum to 1 (``norm_topk_prob``); cast to the activation dtype.
* routed experts: ``y = sum_{e in topk} p_e * down_e(silu(gate_e(x)) * up_e(x))`` (SwiGLU, width I).
* shared expert: every token also goes through one more SwiGLU MLP, scaled by ``sigmoid(w_s . x)``.

The routed experts are a :class:`~qwen3next.experts.StackedExperts`: two 3-D parameters, gate and up
rows together ``(E, 2I, H)`` and down ``(E, H, I)``, the reference's layout, so
:func:`qwen3next.reference.tie_moe_weights` shares them with the reference as they are. ``experts[e]``
is still expert e (views into the stack) and the ``state_dict`` keys are still the Hub checkpoint's
(``mlp.experts.{e}.gate_proj.weight`` ...).

Two dispatch paths compute the same thing (the block's ``dispatch`` attribute picks one):

* ``"loop"``: for each expert that received a token, gather its tokens, run the expert, scatter back.
  Readable; the same algorithm as the reference's eager path.
* ``"sorted"`` (default): sort the (token, slot) assignments by expert once, run every hit expert on a
  contiguous slice of the sorted rows, and add its weighted output straight into its tokens' rows
  (``index_add_``, in float32, expert by expert like the reference's loop). With many tokens nearly
  every expert is hit by a few rows, every path reads all the weights once, and the time is the
  streaming of the weights through the matmul kernel. On a stack, gate and up are one product per
  expert, and a single decoding token whose k experts are small (``GATHER_LIMIT``) gathers their
  weights and runs them as one batched product: at small widths the time of a step is the count of
  small operations, not the arithmetic.

All products but the one-token batched one go through ``F.linear``. For a single row in bfloat16,
PyTorch's own kernel can stream a weight matrix faster than oneDNN's on some CPUs, but only a
process-wide switch selects it (``torch.backends.mkldnn.flags(enabled=False)``), so the block leaves
that choice to its caller.

``experts_grouped`` is a third strategy kept for the chapter's comparison: it stacks the hit experts'
weights into 3-D tensors and runs one batched matmul over padded token groups. Stacking copies the
weights on every call, which costs more than it saves on a CPU.

Every path touches only experts that received at least one token. Given anything else than a stack
(an object that loads experts from disk when indexed, a rank's share of them), every path reaches the
experts only through ``experts[e]``.

Leaves out: expert parallelism, capacity limits / token dropping (Qwen3-Next has none), router
jitter noise, and the fused grouped-GEMM kernels of the reference (``experts_implementation``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .experts import MLP, StackedExperts, swiglu
from .linear import Linear

DISPATCHES = ("loop", "sorted", "grouped")
# weights (elements) of a decoding token's k experts up to which "sorted" copies them together for one
# batched product (1 MB in float32: the copy stays in the cache). Small experts: fewer, larger operations
# win. Larger ones: the copy costs more than it saves (the released width, 31M elements in bfloat16:
# 4x slower than one product per expert on a CPU)
GATHER_LIMIT = 2**18


# ------------------------------------------------------------------------------------------- router
def route(
    router_logits: torch.Tensor, top_k: int, norm_topk_prob: bool = True, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k routing from router logits (N, E).

    Returns ``(weights (N, k) in dtype, experts (N, k) int64, probs (N, E) float32)``. The softmax is
    taken over all E experts in float32 (before the top-k, so the kept weights do not sum to 1 unless
    renormalised); ties in the top-k are broken the way ``torch.topk`` breaks them.
    """
    _check_route_inputs(router_logits, top_k)
    probs = F.softmax(router_logits, dim=-1, dtype=torch.float32)  # (N, E)
    top_p, top_i = torch.topk(probs, top_k, dim=-1)  # (N, k), (N, k)
    if norm_topk_prob:
        top_p = top_p / top_p.sum(dim=-1, keepdim=True)
    return top_p.to(dtype or router_logits.dtype), top_i, probs


def _check_route_inputs(router_logits: torch.Tensor, top_k: int) -> None:
    if router_logits.dim() != 2:
        raise ValueError(f"router_logits: expected shape (tokens, experts), found {tuple(router_logits.shape)}")
    num_experts = router_logits.shape[-1]
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k: expected 1..{num_experts} (the number of experts), found {top_k}")


# ----------------------------------------------------------------------------- dispatch strategies
def experts_loop(
    x: torch.Tensor, experts: Sequence, top_i: torch.Tensor, top_w: torch.Tensor
) -> torch.Tensor:
    """Routed experts, one expert at a time: x (N, H), top_i / top_w (N, k) -> (N, H).

    Sums the k weighted expert outputs of each token in float32 and rounds once at the end.
    """
    y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # (N, H)
    # only experts that received a token, in increasing order
    for e in torch.unique(top_i).tolist():
        # (n_e,), (n_e,): which tokens chose e, in which slot
        tok, slot = torch.where(top_i == e)
        out = swiglu(x[tok], experts[e]) * top_w[tok, slot, None]  # (n_e, H)
        y.index_add_(0, tok, out.float())
    return y.to(x.dtype)


def _sort_by_expert(top_i: torch.Tensor) -> tuple[torch.Tensor, list[int], list[int]]:
    """Order of the N*k assignments grouped by expert, with the hit experts and their group sizes."""
    flat = top_i.reshape(-1)  # (N*k,)
    order = torch.argsort(flat, stable=True)  # (N*k,) assignments, expert by expert
    hit, counts = torch.unique_consecutive(flat[order], return_counts=True)
    return order, hit.tolist(), counts.tolist()


def experts_sorted(
    x: torch.Tensor, experts: Sequence, top_i: torch.Tensor, top_w: torch.Tensor
) -> torch.Tensor:
    """Routed experts after one sort by expert: x (N, H), top_i / top_w (N, k) -> (N, H)."""
    N, k = top_i.shape
    if N == 1:  # decoding one token: its k experts are distinct, nothing to sort
        if _gathers(experts, top_i):  # small experts
            return _one_token_stacked(x, experts, top_i[0], top_w[0])
        run = _expert_runner(experts)
        y = (torch.cat([run(e, x) for e in top_i[0].tolist()])
             * top_w[0, :, None])  # (k, H)
        return y.sum(dim=0, keepdim=True, dtype=torch.float32).to(x.dtype)  # (1, H)
    order, hit, counts = _sort_by_expert(top_i)
    token = order // k  # (N*k,) the token of each assignment, in expert order
    weight = top_w.reshape(-1).index_select(0, order)  # (N*k,) its routing weight
    # index_select rather than x[...]: the same gather, several times faster for
    # whole rows on a CPU
    # (N*k, H): a contiguous slice of rows per hit expert
    x_sorted = x.index_select(0, token)
    # (N, H) summed in float32
    y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    run = _expert_runner(experts)
    # split, not slices: autograd then joins the groups' gradients once, instead of
    # one zero-filled (N*k, H) tensor per expert
    groups = zip(hit, x_sorted.split(counts), token.split(counts),
                 weight.split(counts), strict=True)
    for e, x_e, token_e, weight_e in groups:
        out = run(e, x_e)  # (n_e, H)
        # scatter-add straight into the tokens' rows: no concatenation, no inverse
        # permutation
        y.index_add_(0, token_e, (out * weight_e[:, None]).float())
    return y.to(x.dtype)


def _gathers(experts: Sequence, top_i: torch.Tensor) -> bool:
    """Whether one token's k experts are a stack's, small enough to gather (``GATHER_LIMIT``)."""
    N, k = top_i.shape
    return N == 1 and isinstance(experts, StackedExperts) and k * experts.expert_size <= GATHER_LIMIT


def _one_token_stacked(x: torch.Tensor, experts: StackedExperts, ids: torch.Tensor,
                       w: torch.Tensor) -> torch.Tensor:
    """One token through its k experts of a stack: x (1, H), ids / w (k,) -> (1, H).

    Gathers the k experts' weights (a copy, worth it for small experts: ``GATHER_LIMIT``) and runs
    them as one batched product: 2 products in all instead of 3 per expert.
    """
    gate_up = experts.gate_up_proj.index_select(0, ids)  # (k, 2I, H)
    g, u = torch.matmul(x, gate_up.transpose(1, 2)).chunk(2, dim=-1)  # (k, 1, I) each
    down = experts.down_proj.index_select(0, ids)  # (k, H, I)
    y = torch.matmul(F.silu(g) * u, down.transpose(1, 2))[:, 0]  # (k, H)
    return (y * w[:, None]).sum(dim=0, keepdim=True, dtype=torch.float32).to(x.dtype)  # (1, H)


def _expert_runner(experts: Sequence):
    """``run(e, x_e)``: expert e on its rows (n_e, H) -> (n_e, H), the stack's own way if it is one."""
    if not isinstance(experts, StackedExperts):  # an offloaded or sharded list: expert by expert
        return lambda e, x_e: swiglu(x_e, experts[e])
    gate_up, down = experts.gate_up_proj, experts.down_proj
    if torch.is_grad_enabled():
        # unbind: autograd joins the experts' gradients once; indexing the stack instead would
        # make one zero-filled gradient of the whole stack per expert
        gate_up, down = gate_up.unbind(0), down.unbind(0)

    def run(e: int, x_e: torch.Tensor) -> torch.Tensor:
        g, u = F.linear(x_e, gate_up[e]).chunk(2, dim=-1)  # gate and up: one product
        return F.linear(F.silu(g) * u, down[e])

    return run


def experts_grouped(
    x: torch.Tensor, experts: Sequence, top_i: torch.Tensor, top_w: torch.Tensor
) -> torch.Tensor:
    """Routed experts as one batched matmul over the hit experts: x (N, H), top_i / top_w (N, k) -> (N, H).

    Stacks the hit experts' weights into (n_hit, I, H) tensors (a copy, every call) and pads every
    expert's token group to the largest one. Kept to measure what gathering weights costs.
    """
    N, k = top_i.shape
    order, hit, counts = _sort_by_expert(top_i)
    G, M = len(hit), max(counts)
    W_g = torch.stack([experts[e].gate_proj.weight for e in hit])  # (G, I, H)
    W_u = torch.stack([experts[e].up_proj.weight for e in hit])  # (G, I, H)
    W_d = torch.stack([experts[e].down_proj.weight for e in hit])  # (G, H, I)
    # position of each sorted assignment inside its expert's padded group
    group = torch.repeat_interleave(torch.arange(G, device=x.device), torch.tensor(counts, device=x.device))
    starts = torch.tensor([0] + counts[:-1], device=x.device).cumsum(0)
    pos = torch.arange(order.numel(), device=x.device) - starts[group]  # (N*k,)
    X = x.new_zeros(G, M, x.shape[-1])  # (G, M, H) zero rows pad the short groups
    X[group, pos] = x[order // k]
    Hh = F.silu(X @ W_g.transpose(1, 2)) * (X @ W_u.transpose(1, 2))  # (G, M, I)
    Y = Hh @ W_d.transpose(1, 2)  # (G, M, H)
    y_sorted = Y[group, pos] * top_w.reshape(-1)[order, None]  # (N*k, H)
    y = torch.zeros(N * k, x.shape[-1], dtype=y_sorted.dtype, device=x.device)
    y[order] = y_sorted
    return y.view(N, k, -1).sum(dim=1, dtype=torch.float32).to(x.dtype)


# never traced by torch.compile (DecoderLayer.compile_decoding): which experts run depends on the data, and a
# compiled graph would be specialised to (and recompiled for) every choice of experts. The one exception is
# the gathered product of one token's experts, whose operations do not depend on which experts they are
_DISPATCH = {name: torch.compiler.disable(fn) for name, fn in
             (("loop", experts_loop), ("sorted", experts_sorted), ("grouped", experts_grouped))}


# -------------------------------------------------------------------------------------------- block
class SparseMoeBlock(nn.Module):
    """Router + E routed SwiGLU experts (k per token) + one gated shared expert.

    ``forward(x (B, T, H)) -> (y (B, T, H), router_logits (B*T, E))``; the logits feed the
    load-balancing loss. ``dispatch`` chooses the routed-expert strategy (see the module docstring).
    """

    def __init__(self, config, dispatch: str = "sorted"):
        super().__init__()
        H, E = config.hidden_size, config.num_experts
        self.hidden_size = H
        self.num_experts = E
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.dispatch = dispatch
        self.gate = Linear(H, E, bias=False)  # W_r (E, H): the router
        self.experts = StackedExperts(E, H, config.moe_intermediate_size)
        self.shared_expert = MLP(H, config.shared_expert_intermediate_size)
        self.shared_expert_gate = Linear(H, 1, bias=False)  # w_s (1, H)

    @property
    def dispatch(self) -> str:
        return self._dispatch

    @dispatch.setter
    def dispatch(self, value: str) -> None:
        if value not in DISPATCHES:
            raise ValueError(f"dispatch: expected one of {DISPATCHES}, found {value!r}")
        self._dispatch = value

    def forward(self, hidden_states: torch.Tensor, dispatch: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_forward_inputs(hidden_states, dispatch)
        B, T, H = hidden_states.shape
        x = hidden_states.reshape(B * T, H)  # (N, H) tokens are independent here
        router_logits = self.gate(x)  # (N, E)
        top_w, top_i, _ = route(router_logits, self.top_k, self.norm_topk_prob,
                                dtype=x.dtype)  # (N, k)
        if x.shape[0] == 0:  # no tokens, nothing to route
            routed = torch.zeros_like(x)
        else:
            routed = self._routed(x, top_i, top_w, dispatch or self.dispatch)  # (N, H)
        # (N, 1) * (N, H)
        shared = torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return (routed + shared).view(B, T, H), router_logits

    def _routed(self, x: torch.Tensor, top_i: torch.Tensor, top_w: torch.Tensor, dispatch: str) -> torch.Tensor:
        """The routed experts' sum for the tokens x (N, H), in float32 inside ``torch.autocast``.

        Each expert's share of the tokens changes from batch to batch, and oneDNN builds a new
        bfloat16 kernel for every new matrix shape: at the experts' sizes that costs more than
        bfloat16 saves, so mixed-precision training keeps them in float32."""
        run, device = _DISPATCH[dispatch], x.device.type
        if not torch.is_autocast_enabled(device):
            if dispatch == "sorted" and _gathers(self.experts, top_i):
                # experts_sorted's path for one token, called here so that torch.compile traces it
                return _one_token_stacked(x, self.experts, top_i[0], top_w[0])
            return run(x, self.experts, top_i, top_w)
        with torch.autocast(device, enabled=False):
            return run(x.float(), self.experts, top_i, top_w.float()).to(x.dtype)

    def _check_forward_inputs(self, hidden_states: torch.Tensor, dispatch: str | None) -> None:
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.hidden_size:
            raise ValueError(
                f"hidden_states: expected shape (batch, seq, {self.hidden_size}), found {tuple(hidden_states.shape)}"
            )
        autocast = torch.is_autocast_enabled(hidden_states.device.type)  # it settles the products' dtype
        if hidden_states.dtype != self.gate.weight.dtype and not autocast:
            raise TypeError(
                f"hidden_states: dtype {hidden_states.dtype} does not match the router weight's "
                f"{self.gate.weight.dtype}"
            )
        if dispatch is not None and dispatch not in DISPATCHES:
            raise ValueError(f"dispatch: expected one of {DISPATCHES}, found {dispatch!r}")


# --------------------------------------------------------------------------- load-balancing loss
def load_balancing_loss(
    router_logits: torch.Tensor | Sequence[torch.Tensor],
    num_experts: int,
    top_k: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Switch-Transformer auxiliary loss ``E * sum_e f_e * P_e`` over all layers' tokens.

    ``f_e``: share of tokens that put expert e in their top-k (so ``sum_e f_e = k``); ``P_e``: mean
    router probability of e. Both are averaged over every layer's (non-padding) tokens. Minimal
    (= k) when both are uniform. ``router_logits`` is one (N, E) tensor or one per layer, N = B*T;
    ``attention_mask`` (B, T) excludes padding (1 keep, 0 pad). The model multiplies this by
    ``router_aux_loss_coef``. Softmax in float32; the reference takes it in the logits' dtype, which
    is the same for float32 logits.
    """
    layers = _check_loss_inputs(router_logits, num_experts, attention_mask)  # one (N, E) tensor per layer
    mask = None if attention_mask is None else attention_mask.reshape(-1).float()  # (N,)
    counts = torch.zeros(num_experts, dtype=torch.float32,
                         device=layers[0].device)  # sum_t 1[e in topk(t)]
    prob_sum = torch.zeros(num_experts, dtype=torch.float32,
                           device=layers[0].device)  # sum_t p_e(t)
    rows = 0.0
    for logits in layers:
        probs = F.softmax(logits, dim=-1, dtype=torch.float32)  # (N, E)
        chosen = F.one_hot(torch.topk(probs, top_k, dim=-1).indices,
                           num_experts).sum(1).float()  # (N, E)
        w = (torch.ones(probs.shape[0], device=probs.device) if mask is None
             else mask.to(probs.device))
        counts = counts + (w[:, None] * chosen).sum(0)
        prob_sum = prob_sum + (w[:, None] * probs).sum(0)
        rows = rows + w.sum()
    f = counts / rows  # (E,) fraction of tokens routed to e
    P = prob_sum / rows  # (E,) mean router probability of e
    return num_experts * (f * P).sum()


def _check_loss_inputs(router_logits, num_experts: int, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
    """The router logits as a list of (N, E) tensors, one per layer, or a clear error."""
    layers = [router_logits] if isinstance(router_logits, torch.Tensor) else list(router_logits)
    if not layers:
        raise ValueError("router_logits: expected one tensor per MoE layer, found none")
    for i, t in enumerate(layers):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            found = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"router_logits[{i}]: expected a (tokens, experts) tensor, found {found}")
        if t.shape[-1] != num_experts:
            raise ValueError(f"router_logits[{i}]: expected {num_experts} experts (last dim), found {t.shape[-1]}")
    if attention_mask is not None and attention_mask.numel() != layers[0].shape[0]:
        raise ValueError(
            f"attention_mask: expected {layers[0].shape[0]} entries (B*T, one per router row), "
            f"found {attention_mask.numel()}"
        )
    return layers


# ------------------------------------------------------------------------------ routing statistics
def expert_load(router_logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """How many tokens chose each expert (in their top-k): (N, E) logits -> (E,) int64 counts."""
    _, top_i, _ = route(router_logits, top_k)
    return torch.bincount(top_i.reshape(-1), minlength=router_logits.shape[-1])


def routing_entropy(router_logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each token's full router distribution: (N, E) -> (N,). Uniform gives log E."""
    logp = F.log_softmax(router_logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def topk_mass(router_logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Probability the top-k experts hold before renormalisation: (N, E) -> (N,) in (0, 1]."""
    probs = F.softmax(router_logits, dim=-1, dtype=torch.float32)
    return torch.topk(probs, top_k, dim=-1).values.sum(-1)


def topk_margin(router_logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Gap between the k-th and (k+1)-th largest router probability: (N, E) -> (N,).

    A margin near zero is a near-tie: rounding alone can swap the k-th expert for the next one.
    """
    if top_k >= router_logits.shape[-1]:
        raise ValueError(f"top_k: the margin needs top_k < {router_logits.shape[-1]} experts, found {top_k}")
    probs = F.softmax(router_logits, dim=-1, dtype=torch.float32)
    v = torch.topk(probs, top_k + 1, dim=-1).values  # (N, k+1)
    return v[:, -2] - v[:, -1]
