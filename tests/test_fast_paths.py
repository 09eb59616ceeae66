"""The optimised paths equal the plain ones: the DeltaNet decoding step, the causal conv as shifted
multiply-adds, the per-width chunk size, the MoE's split groups under autograd, and the loss with shifted
targets computed with the logits (linear_cross_entropy), float32 to rounding; bfloat16 within the
tolerance the other tests give the reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qwen3next.config import Qwen3NextConfig
from qwen3next.deltanet import DeltaNetState, GatedDeltaNet, causal_conv1d
from qwen3next.linear import STREAMED_WEIGHT, Linear, _stream_one_row
from qwen3next.loss import linear_cross_entropy
from qwen3next.model import Qwen3NextForCausalLM
from qwen3next.moe import SparseMoeBlock
from qwen3next.reference import max_abs_diff, reference_twin

pytestmark = pytest.mark.usefixtures("one_thread")


def deltanet(cfg, std=0.2, seed=0):
    torch.manual_seed(seed)
    layer = GatedDeltaNet(cfg, 0)
    with torch.no_grad():
        for p in layer.parameters():
            if p.dim() > 1:
                p.normal_(0, std)
    return layer.eval()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)])
def test_deltanet_decode_step_equals_the_full_forward(dtype, tol):
    cfg = Qwen3NextConfig.tiny()
    layer = deltanet(cfg).to(dtype)
    x = torch.randn(2, 12, cfg.hidden_size).to(dtype)
    with torch.no_grad():
        full = layer(x)  # the plain path: chunked rule over all 12 tokens
        cache = DeltaNetState()
        layer(x[:, :9], cache=cache)
        steps = [layer.decode_step(x[:, t:t + 1], cache) for t in range(9, 12)]
    assert steps[0].shape == (2, 1, cfg.hidden_size) and steps[0].dtype == dtype
    scale = 1 + full.float().abs().max().item()
    assert max_abs_diff(torch.cat(steps, 1), full[:, 9:]) <= tol * scale


def test_forward_takes_the_decode_step_only_when_it_applies():
    cfg = Qwen3NextConfig.tiny()
    layer = deltanet(cfg)
    x = torch.randn(1, 5, cfg.hidden_size)
    cache = DeltaNetState()
    assert not layer._can_step(x[:, :1], None, cache)  # empty cache: the plain path fills it
    with torch.no_grad():
        layer(x[:, :4], cache=cache)
    assert layer._can_step(x[:, 4:], None, cache) and layer._can_step(x[:, 4:], torch.ones(1, 1), cache)
    assert not layer._can_step(x[:, 4:], torch.zeros(1, 1), cache)  # padding: the plain path zeroes it
    assert not layer._can_step(x[:, 3:], None, cache)  # two tokens


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_causal_conv_equals_a_depthwise_conv1d_with_its_gradients(dtype, tol):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 11).to(dtype).requires_grad_()
    w = torch.randn(6, 4).to(dtype).requires_grad_()
    state = torch.randn(2, 6, 4).to(dtype)
    y, _ = causal_conv1d(x, w, state)
    y_ref = F.conv1d(torch.cat([state, x], -1).float(), w.float().unsqueeze(1), groups=6)[..., -11:]
    assert y.dtype == dtype and max_abs_diff(y, y_ref) <= tol * (1 + y_ref.abs().max().item())
    g = torch.randn(y.shape)
    dx, dw = torch.autograd.grad((y.float() * g).sum(), (x, w))
    dx_ref, dw_ref = torch.autograd.grad((y_ref * g).sum(), (x, w))
    for a, b in ((dx, dx_ref), (dw, dw_ref)):
        assert max_abs_diff(a, b) <= max(tol, 1e-5) * (1 + b.float().abs().max().item())


def test_chunk_size_follows_the_head_width_and_does_not_change_the_output():
    assert GatedDeltaNet(Qwen3NextConfig.full(), 0).chunk_size == 32  # the release's 128-wide heads
    cfg = Qwen3NextConfig.tiny(linear_key_head_dim=32, linear_value_head_dim=32)
    layer = deltanet(cfg)
    assert layer.chunk_size == 16
    x = torch.randn(1, 70, cfg.hidden_size)
    with torch.no_grad():
        y16 = layer(x)
        layer.chunk_size = 64
        y64 = layer(x)
    assert max_abs_diff(y16, y64) <= 1e-5 * (1 + y64.abs().max().item())


def test_sorted_dispatch_trains_like_the_loop():
    """The sorted path's groups come from split(): same gradients as the plain per-expert loop."""
    cfg = Qwen3NextConfig.tiny(num_experts=8, num_experts_per_tok=2)
    torch.manual_seed(0)
    block = SparseMoeBlock(cfg)
    x = torch.randn(3, 7, cfg.hidden_size, requires_grad=True)
    grads = {}
    for dispatch in ("loop", "sorted"):
        block.zero_grad()
        y, logits = block(x, dispatch=dispatch)
        (y.square().sum() + logits.sum()).backward()
        grads[dispatch] = [x.grad.clone()] + [p.grad.clone() for p in block.parameters() if p.grad is not None]
        x.grad = None
    assert len(grads["loop"]) == len(grads["sorted"]) > 3
    for a, b in zip(grads["sorted"], grads["loop"], strict=True):
        assert max_abs_diff(a, b) <= 1e-5 * (1 + b.abs().max().item())


def test_loss_with_shifted_targets_and_ignored_positions():
    cfg = Qwen3NextConfig.tiny()
    torch.manual_seed(0)
    ours = Qwen3NextForCausalLM(cfg).eval()
    ref = reference_twin(ours, cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 9))
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt that does not count
    with torch.no_grad():
        out = ours(ids, labels=labels)
        plain = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        assert abs(out.loss.item() - plain.item()) <= 1e-6
        assert abs(out.loss.item() - ref(ids, labels=labels).loss.item()) <= 1e-5


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("logits_too", [False, True])
def test_linear_cross_entropy_equals_the_plain_loss_and_its_gradients(dtype, tol, logits_too):
    """Chunks of 128 rows over 600 (a short last chunk), ignored targets, and the logits used in a second
    loss: the loss, the logits and both gradients are those of F.linear + F.cross_entropy."""
    torch.manual_seed(0)
    h = torch.randn(2, 300, 64, dtype=dtype, requires_grad=True)
    W = (torch.randn(1000, 64) * 0.1).to(dtype).requires_grad_()
    targets = torch.randint(0, 1000, (600,))
    targets[::7] = -100

    def grads(loss, logits):
        total = loss * 3 + (logits.float().pow(2).mean() if logits_too else 0)
        return [g.float() for g in torch.autograd.grad(total, (h, W))]

    loss, logits = linear_cross_entropy(h, W, targets, chunk=128)
    fused = grads(loss, logits)
    plain_logits = F.linear(h, W)
    plain_loss = F.cross_entropy(plain_logits.flatten(0, 1).float(), targets, ignore_index=-100)
    plain = grads(plain_loss, plain_logits)
    assert abs(loss.item() - plain_loss.item()) <= 1e-5
    assert max_abs_diff(logits, plain_logits) == 0
    for a, b in zip(fused, plain, strict=True):
        assert max_abs_diff(a, b) <= tol * b.abs().max().item()
    with torch.no_grad():  # no gradient work without autograd
        loss, logits = linear_cross_entropy(h, W, targets)
    assert not loss.requires_grad and abs(loss.item() - plain_loss.item()) <= 1e-5


def test_one_row_through_a_large_weight_equals_f_linear():
    """The streamed kernel (one float32 row, a weight of STREAMED_WEIGHT elements or more, no autograd) gives
    F.linear's numbers to float32 rounding; with gradients on, or several rows, the plain call runs."""
    torch.manual_seed(0)
    layer = Linear(256, STREAMED_WEIGHT // 256, bias=False)
    x = torch.randn(1, 1, 256)
    with torch.no_grad():
        assert _stream_one_row(x, layer.weight, None)
        y = layer(x)
        assert y.shape == (1, 1, layer.out_features)
        assert max_abs_diff(y, F.linear(x, layer.weight)) <= 1e-5
        assert not _stream_one_row(torch.randn(2, 256), layer.weight, None)
        assert not _stream_one_row(x.double(), layer.weight.double(), None)
    assert not _stream_one_row(x, layer.weight, None)  # the weight requires grad: autograd must see F.linear
    assert layer(x).requires_grad


@pytest.mark.slow
def test_compiled_decoding_equals_eager():
    """model.compile_decoding(): the prompt stays eager, every layer's one-token steps go through torch.compile
    (the attention layers' cache growing, and moving to a larger buffer after the first step); the logits of
    every step equal the eager model's to float32 rounding, and it can be undone."""
    cfg = Qwen3NextConfig.tiny()
    torch.manual_seed(0)
    model = Qwen3NextForCausalLM(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 12))

    padded = torch.ones(2, 12, dtype=torch.long)
    padded[0, :3] = 0  # the first row left-padded

    def logits(mask=None):
        cache = model.new_cache(2)
        out = [model(ids[:, :8], cache=cache, attention_mask=None if mask is None else mask[:, :8]).logits]
        out += [model(ids[:, t:t + 1], cache=cache, attention_mask=None if mask is None else mask[:, :t + 1]).logits
                for t in range(8, 12)]
        return torch.cat(out, dim=1)

    with torch.no_grad():
        eager, eager_padded = logits(), logits(padded)
        model.compile_decoding()
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert all("forward" in vars(layer) for layer in model.model.layers)
        compiled, compiled_padded = logits(), logits(padded)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # the steps did go through it
        model.compile_decoding(False)
        assert not any("forward" in vars(layer) for layer in model.model.layers)
    assert max_abs_diff(compiled, eager) <= 1e-5
    assert max_abs_diff(compiled_padded[1:], eager_padded[1:]) <= 1e-5
    assert max_abs_diff(compiled_padded[0, 3:], eager_padded[0, 3:]) <= 1e-5  # the padding's own rows are noise
