"""Tests for qwen3next.deltanet: the causal conv and its state; the GatedDeltaNet layer against
Qwen3NextGatedDeltaNet (full sequence, cached prefill / one-token / multi-token steps, padding), tiny and
at the real width."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.qwen3_next import modeling_qwen3_next as ref_mod

from qwen3next.config import Qwen3NextConfig
from qwen3next.deltanet import DeltaNetState, GatedDeltaNet, causal_conv1d, causal_conv1d_step
from qwen3next.reference import max_abs_diff, reference_config, reference_twin

TOL = 1e-5


def test_causal_conv_matches_padded_conv_and_carries_its_state():
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3, bias=False)
    x = torch.randn(2, 6, 11)
    y_ref = conv(x)[..., :11]
    y, state = causal_conv1d(x, conv.weight.squeeze(1))
    assert y.shape == (2, 6, 11) and state.shape == (2, 6, 4)
    assert max_abs_diff(y, y_ref) <= 1e-6
    assert torch.equal(state, x[..., -4:])
    # prefill 2 (shorter than the kernel), one-token steps, then a multi-token step
    y1, s = causal_conv1d(x[..., :2], conv.weight.squeeze(1))
    ys = [y1]
    for t in range(2, 5):
        ys.append(causal_conv1d_step(x[..., t], conv.weight.squeeze(1), s).unsqueeze(-1))
    y3, s = causal_conv1d(x[..., 5:], conv.weight.squeeze(1), s)
    assert max_abs_diff(torch.cat(ys + [y3], -1), y_ref) <= 1e-6 and torch.equal(s, state)
    with pytest.raises(ValueError, match="state"):
        causal_conv1d(x, conv.weight.squeeze(1), torch.zeros(2, 6, 3))


# --------------------------------------------------------------------------------- the state
def test_state_reorder_and_nbytes():
    st_ = DeltaNetState()
    assert st_.is_empty and st_.nbytes() == 0
    st_.conv_state = torch.arange(3.0).view(3, 1, 1).expand(3, 5, 4).clone()
    st_.recurrent_state = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 2, 4, 4).clone()
    assert st_.nbytes() == 3 * 5 * 4 * 4 + 3 * 2 * 4 * 4 * 4
    st_.reorder(torch.tensor([2, 0]))
    assert st_.conv_state[:, 0, 0].tolist() == [2.0, 0.0] and st_.recurrent_state[:, 0, 0, 0].tolist() == [2.0, 0.0]
    with pytest.raises(IndexError, match="batch_index"):
        st_.reorder([5])


def test_full_config_state_size_matches_spec():
    cfg = Qwen3NextConfig.full()
    with torch.device("meta"):
        layer = GatedDeltaNet(cfg, 0)
    assert layer.conv_dim == 8192 and sum(p.numel() for p in layer.parameters()) == 33_718_464
    # conv state in the activation dtype (bf16), recurrent state in fp32: "about 74 MiB" for 36 layers
    st_ = DeltaNetState(torch.empty(1, 8192, 4, dtype=torch.bfloat16), torch.empty(1, 32, 128, 128))
    assert st_.nbytes() * 36 / 2**20 == pytest.approx(74.25)


# --------------------------------------------------------------------------------- the layer
def build_pair(cfg: Qwen3NextConfig, seed=0, std=None):
    torch.manual_seed(seed)
    ours = GatedDeltaNet(cfg, layer_idx=0)
    if std is not None:  # wider weights than the init so that the gates and the conv all matter
        with torch.no_grad():
            for p in ours.parameters():
                p.normal_(0, std)
    ours.eval()
    return ours, reference_twin(ours, cfg)


def test_parameter_names_and_shapes_are_the_hub_keys():
    cfg = Qwen3NextConfig.tiny()
    ours, ref = build_pair(cfg)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert isinstance(ours.conv1d, torch.nn.Conv1d) and ours.conv1d.groups == cfg.linear_conv_dim
    assert ours.conv1d.padding == (cfg.linear_conv_kernel_dim - 1,) and ours.conv1d.bias is None


def test_init_like_the_reference():
    torch.manual_seed(0)
    layer = GatedDeltaNet(Qwen3NextConfig.tiny(linear_num_value_heads=64, linear_num_key_heads=16), 0)
    A = layer.A_log.exp()
    assert torch.all(A >= 0.01 - 1e-6) and torch.all(A <= 16 + 1e-4) and A.std() > 1
    assert torch.equal(layer.dt_bias, torch.ones(64)) and torch.equal(layer.norm.weight, torch.ones(16))
    # the projections and the conv keep torch's default, as the reference's layer built alone does:
    # uniform within 1 / sqrt(fan_in), which for fan_in = 4 (the depthwise conv) is far wider than N(0, 0.02)
    for m in (layer.in_proj_qkvz, layer.in_proj_ba, layer.conv1d, layer.out_proj):
        bound, largest = 1 / math.sqrt(m.weight[0].numel()), float(m.weight.detach().abs().max())
        assert 0.9 * bound < largest <= bound


def test_layer_matches_reference_full_sequence_and_padding():
    cfg = Qwen3NextConfig.tiny()
    ours, ref = build_pair(cfg, std=0.2)
    x = torch.randn(2, 70, cfg.hidden_size)
    mask = torch.ones(2, 70, dtype=torch.long)
    mask[1, :9] = 0  # left padding of the second row
    with torch.no_grad():
        y = ours(x)
        assert y.shape == x.shape and max_abs_diff(y, ref(x)) <= 1e-5 * (1 + y.abs().max().item())
        y_m = ours(x, attention_mask=mask)
        assert max_abs_diff(y_m, ref(x, attention_mask=mask)) <= 1e-5 * (1 + y.abs().max().item())
        # padding only changes the padded row, and a left-padded row equals the unpadded suffix
        assert torch.equal(y_m[0], y[0])
        assert max_abs_diff(y_m[1, 9:], ours(x[1:, 9:])[0]) <= 1e-5 * (1 + y.abs().max().item())
    with pytest.raises(ValueError, match="attention_mask"):
        ours(x, attention_mask=mask[:, :5])


def _cached_run(layer, x, steps, cache):
    outs, t = [], 0
    for n in steps:
        outs.append(layer(x[:, t:t + n], cache=cache))
        t += n
    return torch.cat(outs, 1)


@pytest.mark.parametrize("steps", [[40, 1, 1, 1, 1, 1, 25], [2, 1, 1, 66], [1, 1, 1, 1, 3, 63]])
def test_layer_cache_prefill_steps_and_multitoken_equal_full_forward(steps):
    cfg = Qwen3NextConfig.tiny()
    ours, ref = build_pair(cfg, std=0.2)
    x = torch.randn(2, sum(steps), cfg.hidden_size)
    with torch.no_grad():
        y = ours(x)
        tol = 2e-5 * (1 + y.abs().max().item())
        cache = DeltaNetState()
        y_c = _cached_run(ours, x, steps, cache)
        assert max_abs_diff(y_c, y) <= tol
        assert cache.conv_state.shape == (2, cfg.linear_conv_dim, cfg.linear_conv_kernel_dim)
        assert cache.recurrent_state.shape == (2, 4, 16, 16) and cache.recurrent_state.dtype == torch.float32
        ref_cache = ref_mod.DynamicCache(config=reference_config(cfg))
        y_r = _cached_run(ref, x, steps, ref_cache)
        assert max_abs_diff(y_c, y_r) <= tol
        assert max_abs_diff(cache.recurrent_state, ref_cache.layers[0].recurrent_states[0]) <= tol
        assert max_abs_diff(cache.conv_state, ref_cache.layers[0].conv_states[0]) <= 1e-6


def test_cache_reorder_keeps_rows_consistent():
    cfg = Qwen3NextConfig.tiny()
    ours, _ = build_pair(cfg, std=0.2)
    x = torch.randn(3, 12, cfg.hidden_size)
    with torch.no_grad():
        cache = DeltaNetState()
        ours(x[:, :10], cache=cache)
        cache.reorder([2, 0])
        y = ours(x[[2, 0], 10:], cache=cache)
        assert max_abs_diff(y, ours(x[[2, 0]])[:, 10:]) <= 1e-5
        with pytest.raises(ValueError, match="batch"):
            ours(x[:, 10:], cache=cache)


def test_layer_bfloat16_runs_and_stays_close():
    cfg = Qwen3NextConfig.tiny()
    ours, ref = build_pair(cfg, std=0.1)
    x = torch.randn(1, 30, cfg.hidden_size)
    with torch.no_grad():
        y32 = ours(x)
        ours16, ref16 = ours.to(torch.bfloat16), ref.to(torch.bfloat16)
        cache = DeltaNetState()
        y16 = _cached_run(ours16, x.bfloat16(), [20, 1, 9], cache)
        assert y16.dtype == torch.bfloat16 and cache.recurrent_state.dtype == torch.float32
        scale = y32.abs().max().item()
        assert max_abs_diff(y16, y32) <= 0.05 * scale
        assert max_abs_diff(ours16(x.bfloat16()), ref16(x.bfloat16())) <= 0.02 * scale


@pytest.mark.slow
def test_layer_matches_reference_at_real_width():
    cfg = Qwen3NextConfig.full()
    assert (cfg.hidden_size, cfg.linear_num_key_heads, cfg.linear_num_value_heads) == (2048, 16, 32)
    ours, ref = build_pair(cfg)
    x = torch.randn(1, 70, cfg.hidden_size)
    with torch.no_grad():
        y = ours(x)
        tol = 1e-5 * (1 + y.abs().max().item())
        assert max_abs_diff(y, ref(x)) <= tol
        cache, ref_cache = DeltaNetState(), ref_mod.DynamicCache(config=reference_config(cfg))
        steps = [60, 1, 1, 8]
        y_c, y_rc = _cached_run(ours, x, steps, cache), _cached_run(ref, x, steps, ref_cache)
        assert max_abs_diff(y_c, y) <= tol and max_abs_diff(y_c, y_rc) <= tol
        assert cache.nbytes() == 8192 * 4 * 4 + 32 * 128 * 128 * 4
