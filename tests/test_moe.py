"""Tests of qwen3next.moe: router, experts, SparseMoeBlock (loop == sorted == grouped == reference),
load-balancing loss, routing statistics, and the MoE exercise checks.

Reference: ``Qwen3NextSparseMoeBlock`` / ``load_balancing_loss_func`` of transformers, with the very same
weights (our stacked experts are the reference's fused tensors, see ``tie_moe_weights``).

How routing near-ties are handled. Two correct implementations may pick a different k-th expert when
the k-th and (k+1)-th router probabilities are (nearly) equal, since any rounding difference can swap
them. We therefore measure each token's top-k margin (gap between the k-th and (k+1)-th probability)
and require: (1) every token whose margin exceeds ``TIE_MARGIN`` routes to exactly the same set of
experts; (2) a token that routes differently has a margin below ``TIE_MARGIN`` and the experts that
differ have probabilities within ``TIE_MARGIN`` of each other (the difference is the tie, nothing else);
(3) outputs are compared at full tolerance on every token that routes identically. In practice our
router computes the same logits as the reference (same matmul on the same numbers), so (2) finds no
such token here; the rule makes the test robust on platforms where the two matmuls round differently.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers.models.qwen3_next.modeling_qwen3_next import (
    load_balancing_loss_func,
)

from qwen3next import moe
from qwen3next.config import Qwen3NextConfig
from qwen3next.experts import StackedExperts
from qwen3next.moe import (
    MLP,
    SparseMoeBlock,
    expert_load,
    experts_grouped,
    experts_loop,
    experts_sorted,
    load_balancing_loss,
    route,
    routing_entropy,
    swiglu,
    topk_margin,
    topk_mass,
)
from qwen3next.reference import moe_state_dict_to_reference, real_width_moe_pair, reference_twin, tie_moe_weights

TIE_MARGIN = 1e-6  # probabilities closer than this may be swapped by rounding alone (float32 ulp of ~0.01 is 1e-9)
DISPATCHES = ("loop", "sorted", "grouped")


# ------------------------------------------------------------------------------------------ helpers
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(**kw) -> Qwen3NextConfig:
    return Qwen3NextConfig.tiny(**kw)


def tiny_pair(cfg: Qwen3NextConfig, seed: int = 0, dtype=torch.float32, experts_implementation: str = "eager"):
    """Our block with random weights, and a reference block holding the same weights."""
    torch.manual_seed(seed)
    ours = SparseMoeBlock(cfg).to(dtype)
    return ours, reference_twin(ours, cfg, experts_implementation=experts_implementation)


def topk_sets(top_i: torch.Tensor) -> list[frozenset]:
    return [frozenset(row) for row in top_i.tolist()]


def check_routing_agrees(logits_a, logits_b, top_k: int) -> torch.Tensor:
    """Apply the near-tie rule of the module docstring; return the mask of identically routed tokens."""
    _, ia, pa = route(logits_a, top_k)
    _, ib, pb = route(logits_b, top_k)
    margin = torch.minimum(topk_margin(logits_a, top_k), topk_margin(logits_b, top_k))
    same = torch.tensor([a == b for a, b in zip(topk_sets(ia), topk_sets(ib), strict=True)])
    assert same[margin > TIE_MARGIN].all(), "a token with a clear top-k margin routes differently"
    for t in torch.nonzero(~same).flatten().tolist():  # only near-ties can get here
        swapped = set(ia[t].tolist()) ^ set(ib[t].tolist())
        kth = pa[t].topk(top_k).values[-1]
        assert all(abs(pa[t, e] - kth) <= TIE_MARGIN for e in swapped), f"token {t}: swap is not a tie"
    return same


class RecordingExperts(torch.nn.Module):
    """Stands in for an offloaded expert list: records which experts are indexed, forbids iteration."""

    def __init__(self, experts):
        super().__init__()
        self._experts = experts
        self.touched: list[int] = []

    def __len__(self):
        return len(self._experts)

    def __getitem__(self, e):
        self.touched.append(int(e))
        return self._experts[e]

    def __iter__(self):
        raise AssertionError("a dispatch path iterated over all experts")


# ------------------------------------------------------------------------------------- structure
def test_mlp_is_swiglu():
    torch.manual_seed(0)
    mlp = MLP(16, 8)
    x = torch.randn(3, 5, 16)
    expected = mlp.down_proj(F.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T))
    assert torch.allclose(mlp(x), expected, atol=1e-6)
    assert {k: tuple(v.shape) for k, v in mlp.state_dict().items()} == {
        "gate_proj.weight": (8, 16), "up_proj.weight": (8, 16), "down_proj.weight": (16, 8)}


def test_state_dict_keys_are_the_hub_keys():
    cfg = Qwen3NextConfig.full()
    with torch.device("meta"):
        block = SparseMoeBlock(cfg)
    shapes = {k: tuple(v.shape) for k, v in block.state_dict().items()}
    assert len(shapes) == 3 * 512 + 1 + 3 + 1
    assert shapes["gate.weight"] == (512, 2048)
    assert shapes["experts.511.gate_proj.weight"] == (512, 2048)
    assert shapes["experts.0.up_proj.weight"] == (512, 2048)
    assert shapes["experts.7.down_proj.weight"] == (2048, 512)
    assert shapes["shared_expert.down_proj.weight"] == (2048, 512)
    assert shapes["shared_expert_gate.weight"] == (1, 2048)
    assert sum(p.numel() for p in block.parameters()) == 1_614_809_088  # parameter counts


def test_state_dict_converter_loads_into_reference():
    cfg = tiny_cfg()
    torch.manual_seed(1)
    ours = SparseMoeBlock(cfg)
    ref = reference_twin(ours, cfg)  # through moe_state_dict_to_reference
    I = cfg.moe_intermediate_size
    assert torch.equal(ref.experts.gate_up_proj[5, :I], ours.experts[5].gate_proj.weight)  # gate rows first
    assert torch.equal(ref.experts.gate_up_proj[5, I:], ours.experts[5].up_proj.weight)
    x = torch.randn(2, 6, cfg.hidden_size)
    assert torch.allclose(ours(x)[0], ref(x), atol=1e-6)
    sd = ours.state_dict()
    del sd["experts.3.up_proj.weight"]
    with pytest.raises(ValueError, match=r"experts\.3: missing \['up_proj'\]"):
        moe_state_dict_to_reference(sd)


def test_tie_shares_memory():
    ours, ref = tiny_pair(tiny_cfg())
    tie_moe_weights(ours, ref, source="reference")
    I = ours.experts[0].gate_proj.weight.shape[0]
    assert ours.experts[6].up_proj.weight.data_ptr() == ref.experts.gate_up_proj[6, I:].data_ptr()
    assert ours.experts[6].down_proj.weight.data_ptr() == ref.experts.down_proj[6].data_ptr()
    assert ours.gate.weight is ref.gate.weight
    with pytest.raises(ValueError, match="source"):
        tie_moe_weights(ours, ref, source="neither")


def test_stacked_experts_index_like_a_list():
    torch.manual_seed(2)
    experts = StackedExperts(6, 8, 4)
    assert len(experts) == 6 and len(list(experts)) == 6
    e3 = experts[3]
    assert e3.gate_proj.weight.data_ptr() == experts.gate_up_proj[3].data_ptr()  # views, gate rows first
    assert e3.up_proj.weight.data_ptr() == experts.gate_up_proj[3, 4:].data_ptr()
    assert e3.down_proj.weight.data_ptr() == experts.down_proj[3].data_ptr()
    assert sum(w.numel() for w in e3.parameters()) == 3 * 8 * 4
    x = torch.randn(5, 8)
    assert torch.equal(e3(x), swiglu(x, e3))
    part = experts[2:4]  # a stack of its own (expert parallelism)
    assert isinstance(part, StackedExperts) and len(part) == 2
    assert torch.equal(part[1].down_proj.weight, e3.down_proj.weight)
    assert part.down_proj.data_ptr() != experts.down_proj[2].data_ptr()
    with pytest.raises(IndexError, match="expert 6 out of range 0..5"):
        experts[6]


def test_stacked_experts_state_dict_round_trip_and_errors():
    torch.manual_seed(3)
    cfg = tiny_cfg(num_experts=4)
    block = SparseMoeBlock(cfg)
    sd = block.state_dict()
    # the Hub keys, as views of the stack (no copy)
    assert sd["experts.2.up_proj.weight"].data_ptr() == block.experts[2].up_proj.weight.data_ptr()
    assert [k for k in sd if k.startswith("experts.")][:3] == [
        "experts.0.gate_proj.weight", "experts.0.up_proj.weight", "experts.0.down_proj.weight"]
    torch.manual_seed(4)
    other = SparseMoeBlock(cfg)
    other.load_state_dict(sd)  # copies into the existing stack
    assert torch.equal(other.experts.gate_up_proj, block.experts.gate_up_proj)
    with torch.device("meta"):
        empty = SparseMoeBlock(cfg)
    empty.load_state_dict(sd, assign=True)  # a block on meta gets stacks built from the tensors
    assert torch.equal(empty.experts.down_proj, block.experts.down_proj)
    assert empty.experts.gate_up_proj.requires_grad
    bad = dict(sd)
    del bad["experts.3.down_proj.weight"]
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*experts\.3\.down_proj\.weight"):
        other.load_state_dict(bad)
    bad = dict(sd, **{"experts.9.gate_proj.weight": sd["experts.0.gate_proj.weight"]})
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*experts\.9\.gate_proj\.weight"):
        other.load_state_dict(bad)
    bad = dict(sd, **{"experts.1.up_proj.weight": torch.zeros(3, 3)})
    with pytest.raises(RuntimeError, match=r"size mismatch for experts\.1\.up_proj\.weight.*\(3, 3\)"):
        other.load_state_dict(bad)


@pytest.mark.parametrize("gather", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_token_on_the_stack_matches_the_loop(dtype, gather, monkeypatch):
    """Decoding (N = 1) on the stack, its k experts gathered for one product (small experts) or one
    after the other (``GATHER_LIMIT`` 0, as for the released width): output and gradients of the loop."""
    if not gather:
        monkeypatch.setattr(moe, "GATHER_LIMIT", 0)
    torch.manual_seed(16)
    cfg = tiny_cfg(num_experts=16, num_experts_per_tok=4)
    block = SparseMoeBlock(cfg).to(dtype)
    out, grads = {}, {}
    x = torch.randn(1, 1, cfg.hidden_size).to(dtype)
    for dispatch in ("loop", "sorted"):
        block.zero_grad(set_to_none=True)
        y, _ = block(x, dispatch=dispatch)
        y.float().pow(2).sum().backward()
        out[dispatch] = y.float()
        grads[dispatch] = {n: p.grad.float() for n, p in block.named_parameters() if p.grad is not None}
    tol = 1e-6 if dtype == torch.float32 else 2 * 2**-8 * out["loop"].abs().max().item()
    assert (out["sorted"] - out["loop"]).abs().max() <= tol
    assert grads["sorted"].keys() == grads["loop"].keys() >= {"experts.gate_up_proj", "experts.down_proj"}
    rel = 1e-5 if dtype == torch.float32 else 4 * 2**-8  # bfloat16: a few roundings of the products
    for name, g in grads["loop"].items():
        assert (grads["sorted"][name] - g).abs().max() <= rel * g.abs().max(), name


# ---------------------------------------------------------------------------------------- router
def test_route_softmax_topk_renormalise():
    torch.manual_seed(0)
    logits = torch.randn(20, 16)
    w, i, p = route(logits, 4, norm_topk_prob=True)
    assert torch.allclose(p, logits.softmax(-1), atol=1e-7)
    assert torch.allclose(w.sum(-1), torch.ones(20), atol=1e-6)
    assert torch.equal(i, logits.topk(4).indices)  # softmax is monotone: same experts as the raw logits
    w_raw, _, _ = route(logits, 4, norm_topk_prob=False)
    assert torch.allclose(w_raw, p.gather(1, i))
    assert (w_raw.sum(-1) < 1).all()
    w16, _, _ = route(logits.bfloat16(), 4, dtype=torch.bfloat16)
    assert w16.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="top_k"):
        route(logits, 17)
    with pytest.raises(ValueError, match="router_logits"):
        route(logits[0], 2)


def test_router_logits_match_reference():
    cfg = tiny_cfg()
    ours, ref = tiny_pair(cfg)
    x = torch.randn(3, 5, cfg.hidden_size)
    _, logits = ours(x)
    ref_logits, ref_scores, ref_idx = ref.gate(x)
    assert torch.equal(logits, ref_logits)
    w, i, _ = route(logits, cfg.num_experts_per_tok, cfg.norm_topk_prob)
    assert torch.equal(i, ref_idx) and torch.allclose(w, ref_scores, atol=1e-7)


# ------------------------------------------------------------------------ block against reference
@pytest.mark.parametrize("norm_topk_prob", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (2, 9), (3, 40)])
def test_tiny_block_matches_reference_float32(norm_topk_prob, shape):
    cfg = tiny_cfg(norm_topk_prob=norm_topk_prob)
    ours, ref = tiny_pair(cfg, seed=sum(shape))
    x = torch.randn(*shape, cfg.hidden_size)
    expected = ref(x)
    for dispatch in DISPATCHES:
        y, logits = ours(x, dispatch=dispatch)
        assert y.shape == x.shape and logits.shape == (x.shape[0] * x.shape[1], cfg.num_experts)
        assert (y - expected).abs().max() < 1e-6, dispatch


@pytest.mark.parametrize("impl", ["batched_mm", "grouped_mm"])
def test_tiny_block_matches_reference_fused_kernels(impl):
    cfg = tiny_cfg()
    ours, ref = tiny_pair(cfg, seed=3, experts_implementation=impl)
    x = torch.randn(2, 11, cfg.hidden_size)
    assert (ours(x)[0] - ref(x)).abs().max() < 1e-6


class Float32Experts:
    """The experts with weights upcast to float32 one expert at a time, when indexed (like offloading)."""

    def __init__(self, experts):
        self.experts = experts

    def __len__(self):
        return len(self.experts)

    def __getitem__(self, e):
        m = self.experts[e]
        up = lambda w: SimpleNamespace(weight=w.float())  # noqa: E731
        return SimpleNamespace(gate_proj=up(m.gate_proj.weight), up_proj=up(m.up_proj.weight),
                               down_proj=up(m.down_proj.weight))


@torch.no_grad()  # no graph: it would keep every upcast expert alive
def fp32_truth(block: SparseMoeBlock, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The block in float32 with the same (low-precision) weights and the same routing decisions."""
    top_w, top_i, _ = route(logits.float(), block.top_k, block.norm_topk_prob, dtype=torch.float32)
    x32 = x.reshape(-1, x.shape[-1]).float()
    routed = experts_loop(x32, Float32Experts(block.experts), top_i, top_w)
    gate = torch.sigmoid(x32 @ block.shared_expert_gate.weight.float().T)  # (N, 1)
    shared = gate * swiglu(x32, Float32Experts([block.shared_expert])[0])  # (N, H)
    return (routed + shared).view(x.shape)


@torch.no_grad()
def compare_bf16(ours, ref, x, cfg):
    """bfloat16: identical routing (up to ties), and our error against float32 no worse than the reference's."""
    y_ref = ref(x)
    ref_logits = ref.gate(x)[0]
    truth = None
    for dispatch in DISPATCHES if cfg.num_experts <= 64 else ("loop", "sorted"):
        y, logits = ours(x, dispatch=dispatch)
        same = check_routing_agrees(logits.float(), ref_logits.float(), cfg.num_experts_per_tok)
        truth = fp32_truth(ours, x, logits) if truth is None else truth
        N = same.numel()
        err = (y.float() - truth).reshape(N, -1)[same].abs()
        err_ref = (y_ref.float() - truth).reshape(N, -1)[same].abs()
        # ours sums the k expert outputs in float32 (the reference sums in bfloat16): on average it is
        # closer to the float32 result, and no element is off by more than a few bfloat16 roundings
        assert err.mean() <= err_ref.mean(), dispatch
        scale = truth.reshape(N, -1)[same].abs().max()
        assert err.max() <= 4 * 2**-8 * scale, dispatch
        assert (y.float() - y_ref.float()).reshape(N, -1)[same].abs().max() <= 4 * 2**-8 * scale


def test_tiny_block_matches_reference_bfloat16():
    cfg = tiny_cfg()
    ours, ref = tiny_pair(cfg, seed=5, dtype=torch.bfloat16)
    x = torch.randn(4, 32, cfg.hidden_size).bfloat16()
    compare_bf16(ours, ref, x, cfg)


@pytest.mark.slow
@torch.no_grad()
def test_real_width_matches_reference_float32():
    cfg, ours, ref = real_width_moe_pair(torch.float32)
    x = torch.randn(2, 48, cfg.hidden_size, generator=torch.Generator().manual_seed(1))
    y_ref = ref(x)
    ref_logits = ref.gate(x)[0]
    for dispatch in ("loop", "sorted"):
        y, logits = ours(x, dispatch=dispatch)
        same = check_routing_agrees(logits, ref_logits, cfg.num_experts_per_tok)
        assert same.all()  # same logits bit for bit: no tie can split us from the reference here
        assert (y - y_ref).abs().max() < 1e-5, dispatch


@pytest.mark.slow
@torch.no_grad()
def test_real_width_matches_reference_bfloat16():
    cfg, ours, ref = real_width_moe_pair(torch.bfloat16, seed=2)
    x = torch.randn(2, 48, cfg.hidden_size, generator=torch.Generator().manual_seed(3)).bfloat16()
    compare_bf16(ours, ref, x, cfg)
    # bfloat16 logits are coarse: exact ties between the 10th and 11th expert do occur at this width,
    # and both sides break them the same way (torch.topk on the same float32 probabilities)
    _, logits = ours(x)
    ref_logits, _, ref_idx = ref.gate(x)
    assert torch.equal(logits, ref_logits)
    ties = topk_margin(logits, cfg.num_experts_per_tok) == 0  # 8 of these 96 tokens
    assert ties.any()
    assert torch.equal(route(logits, cfg.num_experts_per_tok)[1][ties], ref_idx[ties])


@torch.no_grad()
def test_real_width_pair_with_memory_of_its_own():
    """The fill for timings: each expert in its own memory, our experts views of the reference's."""
    cfg = Qwen3NextConfig.full().replace(num_experts=12)  # real widths, fewer experts
    cfg, ours, ref = real_width_moe_pair(torch.bfloat16, cfg=cfg, own_memory=True)
    fused = ref.experts.gate_up_proj
    assert fused.is_contiguous() and fused.untyped_storage().nbytes() == fused.numel() * 2
    assert ours.experts[5].up_proj.weight.data_ptr() == fused[5, cfg.moe_intermediate_size:].data_ptr()
    assert not torch.equal(fused[0], fused[1]) and 0.015 < fused.float().std() < 0.025
    x = torch.randn(1, 4, cfg.hidden_size, generator=torch.Generator().manual_seed(0)).bfloat16()
    y, _ = ours(x, dispatch="loop")
    assert (y.float() - ref(x).float()).abs().max() <= 2 * 2**-8 * y.float().abs().max()


# --------------------------------------------------------------------------- dispatch paths agree
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dispatch_paths_agree(dtype):
    torch.manual_seed(7)
    cfg = tiny_cfg(num_experts=16, num_experts_per_tok=4)
    block = SparseMoeBlock(cfg).to(dtype)
    x = torch.randn(3, 50, cfg.hidden_size).to(dtype)
    y_loop, logits = block(x, dispatch="loop")
    tol = 1e-6 if dtype == torch.float32 else 2 * 2**-8 * y_loop.float().abs().max().item()
    for dispatch in ("sorted", "grouped"):
        y, logits2 = block(x, dispatch=dispatch)
        assert torch.equal(logits, logits2)
        assert (y.float() - y_loop.float()).abs().max() <= tol, dispatch


@pytest.mark.parametrize("dispatch", DISPATCHES)
def test_only_hit_experts_are_touched(dispatch):
    torch.manual_seed(8)
    cfg = tiny_cfg(num_experts=32, num_experts_per_tok=3)
    block = SparseMoeBlock(cfg)
    experts = block.experts
    for T in (4, 1):  # several tokens, and one (decoding)
        block.experts = experts
        x = torch.randn(1, T, cfg.hidden_size)
        expected, logits = block(x, dispatch=dispatch)
        hit = set(route(logits, 3)[1].flatten().tolist())
        assert len(hit) < 32  # the check below would be vacuous otherwise
        block.experts = RecordingExperts(experts)
        y, _ = block(x, dispatch=dispatch)
        assert torch.equal(y, expected)
        assert set(block.experts.touched) == hit
        if dispatch == "sorted":
            assert len(block.experts.touched) == len(hit)  # each hit expert fetched exactly once


def test_empty_input_and_errors():
    cfg = tiny_cfg()
    block = SparseMoeBlock(cfg)
    y, logits = block(torch.zeros(2, 0, cfg.hidden_size))
    assert y.shape == (2, 0, cfg.hidden_size) and logits.shape == (0, cfg.num_experts)
    with pytest.raises(ValueError, match="hidden_states"):
        block(torch.zeros(3, cfg.hidden_size))
    with pytest.raises(ValueError, match="hidden_states"):
        block(torch.zeros(1, 3, cfg.hidden_size + 1))
    with pytest.raises(TypeError, match="hidden_states: dtype"):
        block(torch.zeros(1, 3, cfg.hidden_size, dtype=torch.float64))
    with pytest.raises(ValueError, match="dispatch"):
        block(torch.zeros(1, 3, cfg.hidden_size), dispatch="fast")
    with pytest.raises(ValueError, match="dispatch"):
        block.dispatch = "magic"


# -------------------------------------------------------------------------------------- gradients
def test_gradients_reach_router_and_experts_and_match_reference():
    cfg = tiny_cfg(num_experts=16, num_experts_per_tok=3)
    torch.manual_seed(9)
    x = torch.randn(2, 5, cfg.hidden_size)
    grads = {}
    for dispatch in DISPATCHES:
        torch.manual_seed(10)
        block = SparseMoeBlock(cfg)
        y, logits = block(x, dispatch=dispatch)
        loss = (y ** 2).mean() + 0.01 * load_balancing_loss(logits, cfg.num_experts, cfg.num_experts_per_tok)
        loss.backward()
        hit = set(route(logits, 3)[1].flatten().tolist())
        assert block.gate.weight.grad.abs().sum() > 0
        assert block.shared_expert_gate.weight.grad.abs().sum() > 0
        for e in range(cfg.num_experts):  # the stack's gradient: rows of the hit experts only
            g = block.experts.down_proj.grad[e]
            assert bool(g.abs().sum() > 0) == (e in hit), (dispatch, e)
        grads[dispatch] = {k: p.grad for k, p in block.named_parameters() if p.grad is not None}
    for dispatch in ("sorted", "grouped"):
        assert grads[dispatch].keys() == grads["loop"].keys()
        for k, g in grads[dispatch].items():
            assert torch.allclose(g, grads["loop"][k], atol=1e-6), (dispatch, k)
    # the reference, from the same initial weights
    torch.manual_seed(10)
    block = SparseMoeBlock(cfg)
    ref = reference_twin(block, cfg)
    y_ref = ref(x)
    ref_logits = ref.gate(x)[0]
    loss = (y_ref ** 2).mean() + 0.01 * load_balancing_loss_func((ref_logits,), cfg.num_experts, 3)
    loss.backward()
    assert torch.allclose(ref.gate.weight.grad, grads["loop"]["gate.weight"], atol=1e-6)
    for name in ("gate_up_proj", "down_proj"):  # the same layout on both sides
        assert torch.allclose(getattr(ref.experts, name).grad, grads["loop"][f"experts.{name}"], atol=1e-6)


# ----------------------------------------------------------------------------- load-balancing loss
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_load_balancing_loss_matches_reference(layers, masked):
    torch.manual_seed(11 + layers)
    B, T, E, k = 3, 7, 12, 3
    logits = tuple(torch.randn(B * T, E) * 2 for _ in range(layers))
    mask = (torch.rand(B, T) > 0.3).long() if masked else None
    ours = load_balancing_loss(logits, E, k, attention_mask=mask)
    ref = load_balancing_loss_func(logits, E, k, attention_mask=mask)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-6)


def test_load_balancing_loss_values_and_errors():
    E, k = 8, 2
    # a uniform router: P_e = 1/E, whatever f is, the loss is sum_e f_e = k
    assert torch.allclose(load_balancing_loss(torch.zeros(10, E), E, k), torch.tensor(float(k)))
    # a collapsed router (every token prefers experts 0 and 1) pays about E/k times more
    collapsed = torch.full((10, E), -20.0)
    collapsed[:, :2] = 0.0
    assert load_balancing_loss(collapsed, E, k) > 0.99 * E
    one = torch.randn(6, E)
    assert torch.equal(load_balancing_loss(one, E, k), load_balancing_loss([one], E, k))  # tensor == 1-layer list
    with pytest.raises(ValueError, match="experts"):
        load_balancing_loss(torch.zeros(4, E), E + 1, k)
    with pytest.raises(ValueError, match="attention_mask"):
        load_balancing_loss(torch.zeros(4, E), E, k, attention_mask=torch.ones(5))
    with pytest.raises(ValueError, match="router_logits"):
        load_balancing_loss([], E, k)


def test_load_balancing_loss_pushes_towards_balance():
    """A few gradient steps on the loss alone spread a skewed toy router's load."""
    torch.manual_seed(12)
    E, k = 8, 2
    x = torch.randn(256, 16)
    W = torch.nn.Parameter(torch.randn(E, 16) * 0.1)
    W.data[0] += 0.5 * x.mean(0) / x.mean(0).norm()  # expert 0 is everyone's favourite
    before = expert_load(x @ W.T, k).float().std()
    opt = torch.optim.SGD([W], lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        load_balancing_loss(x @ W.T, E, k).backward()
        opt.step()
    assert expert_load(x @ W.T, k).float().std() < 0.5 * before


# ---------------------------------------------------------------------------- routing statistics
def test_routing_statistics():
    torch.manual_seed(13)
    N, E, k = 50, 16, 4
    logits = torch.randn(N, E)
    load = expert_load(logits, k)
    assert load.shape == (E,) and load.sum() == N * k
    assert torch.equal(load, torch.bincount(logits.topk(k).indices.flatten(), minlength=E))
    assert torch.allclose(routing_entropy(torch.zeros(3, E)), torch.full((3,), math.log(E)))
    assert torch.allclose(routing_entropy(torch.tensor([[0.0, -1e4, -1e4]])), torch.zeros(1), atol=1e-6)
    mass = topk_mass(logits, k)
    assert ((mass > k / E - 1e-6) & (mass <= 1)).all()  # top-k hold at least their uniform share
    assert torch.allclose(topk_mass(logits, E), torch.ones(N))
    margin = topk_margin(logits, k)
    p = logits.softmax(-1).sort(-1, descending=True).values
    assert torch.allclose(margin, p[:, k - 1] - p[:, k])
    with pytest.raises(ValueError, match="top_k"):
        topk_margin(logits, E)


def test_experts_functions_direct_call():
    """The three strategies as plain functions on a Python list of experts."""
    torch.manual_seed(14)
    experts = [MLP(8, 4) for _ in range(5)]
    x = torch.randn(6, 8)
    top_w, top_i, _ = route(torch.randn(6, 5), 2)
    expected = sum(top_w[:, j, None] * torch.stack([experts[e](x[t]) for t, e in enumerate(top_i[:, j].tolist())])
                   for j in range(2))
    for fn in (experts_loop, experts_sorted, experts_grouped):
        assert torch.allclose(fn(x, experts, top_i, top_w), expected, atol=1e-6), fn.__name__


# ------------------------------------------------------------------------ no process-wide settings
class SettingsProbe(RecordingExperts):
    """Records, each time an expert is fetched to run, whether oneDNN is enabled for the process."""

    def __init__(self, experts):
        super().__init__(experts)
        self.mkldnn_enabled: list[bool] = []

    def __getitem__(self, e):
        self.mkldnn_enabled.append(torch.backends.mkldnn.enabled)
        return super().__getitem__(e)


def test_forward_leaves_the_process_settings_alone():
    """No kernel is chosen for the whole process while the block runs, and decoding agrees with the loop."""
    torch.manual_seed(15)
    cfg = tiny_cfg(num_experts=16, num_experts_per_tok=4, hidden_size=256, moe_intermediate_size=128)
    block = SparseMoeBlock(cfg).bfloat16()
    block.experts = SettingsProbe(block.experts)
    shared_seen = []
    block.shared_expert.register_forward_pre_hook(lambda *_: shared_seen.append(torch.backends.mkldnn.enabled))
    assert torch.backends.mkldnn.enabled
    for T in (1, 3):  # decoding one token (one row per expert), then a short prefill
        x = torch.randn(1, T, cfg.hidden_size).bfloat16()
        with torch.no_grad():
            y_loop, _ = block(x, dispatch="loop")
            y_fast, _ = block(x)
        tol = 2 * 2**-8 * y_loop.float().abs().max().item()
        assert (y_fast.float() - y_loop.float()).abs().max() <= tol
    assert block.experts.mkldnn_enabled and all(block.experts.mkldnn_enabled) and all(shared_seen)
