"""The pieces of the rollback: the DeltaNet layer keeping its state per token (``keep_steps``), the two
strategies on one layer, and the attention caches cut with holes."""

from __future__ import annotations

import pytest
import torch

from qwen3next import Qwen3NextConfig, Qwen3NextForCausalLM
from qwen3next.deltanet import DeltaNetState, GatedDeltaNet
from qwen3next.rollback import Checkpoints, Replay, make_rollback, truncate_attention
from qwen3next.train import init_for_training

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = Qwen3NextConfig.tiny()


@pytest.fixture(scope="module")
def layer():
    torch.manual_seed(0)
    m = GatedDeltaNet(CFG, 0).eval()
    with torch.no_grad():
        for p in (m.in_proj_qkvz.weight, m.in_proj_ba.weight, m.out_proj.weight, m.conv1d.weight):
            p.normal_(0, 0.2)
    return m


def warm_state(layer, x):
    state = DeltaNetState()
    with torch.no_grad():
        layer(x, cache=state)
    return state


def copy(state):
    return DeltaNetState(state.conv_state.clone(), state.recurrent_state.clone())


@torch.no_grad()
def test_keep_steps_gives_each_tokens_state_and_the_same_output(layer):
    g = torch.Generator().manual_seed(1)
    prefix, new = torch.randn(2, 7, CFG.hidden_size, generator=g), torch.randn(2, 4, CFG.hidden_size, generator=g)
    base = warm_state(layer, prefix)
    normal, keeping = copy(base), copy(base)
    keeping.keep_steps = True
    out_normal = layer(new, cache=normal)
    out_keeping = layer(new, cache=keeping)
    assert (out_normal - out_keeping).abs().max() < 1e-5  # chunked kernel vs token by token: rounding only
    assert keeping.conv_steps.shape == (2, 4, 2 * layer.key_dim + layer.value_dim, CFG.linear_conv_kernel_dim)
    assert keeping.recurrent_steps.shape == (2, 4, *base.recurrent_state.shape[1:])
    one_by_one = copy(base)
    for t in range(4):  # plain decoding: the very same path, so the very same numbers
        out_t = layer(new[:, t:t + 1], cache=one_by_one)
        assert torch.equal(out_keeping[:, t:t + 1], out_t)
        assert torch.equal(keeping.conv_steps[:, t], one_by_one.conv_state)
        assert torch.equal(keeping.recurrent_steps[:, t], one_by_one.recurrent_state)
    assert torch.equal(keeping.recurrent_state, keeping.recurrent_steps[:, -1]) and keeping.keep_steps
    assert normal.conv_steps is None and normal.recurrent_steps is None  # off by default: nothing kept


@pytest.mark.parametrize("strategy", ["replay", "checkpoints"])
@torch.no_grad()
def test_each_strategy_leaves_the_state_after_the_kept_tokens(strategy):
    """On a model: verify 4 tokens, keep 1..4 per row, compare with feeding only the kept tokens."""
    torch.manual_seed(0)
    model = Qwen3NextForCausalLM(Qwen3NextConfig.tiny(num_hidden_layers=4)).eval()
    init_for_training(model, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(2)
    prompt, new = torch.randint(0, 512, (4, 6), generator=g), torch.randint(0, 512, (4, 4), generator=g)
    keep = torch.tensor([1, 4, 2, 3])
    cache = model.new_cache(4)
    model(prompt, cache=cache)
    rollback = make_rollback(strategy)
    rollback.before_verify(model, cache)
    model(new, cache=cache)
    truncate_attention(cache, 6, keep)
    rollback.after_verify(model, cache, keep)
    for b in range(4):
        alone = model.new_cache(1)
        model(torch.cat([prompt[b], new[b, : keep[b]]])[None], cache=alone)
        for i, kind in enumerate(cache.layer_types):
            if kind == "linear_attention":
                assert (cache[i].conv_state[b] - alone[i].conv_state[0]).abs().max() < 1e-5
                assert (cache[i].recurrent_state[b] - alone[i].recurrent_state[0]).abs().max() < 1e-5
                assert cache[i].conv_steps is None and not cache[i].keep_steps
    assert not any(layer.linear_attn._forward_pre_hooks for layer in model.model.layers
                   if layer.layer_type == "linear_attention")  # replay's hooks are gone


@torch.no_grad()
def test_truncate_attention_cuts_to_the_longest_and_masks_the_rest():
    torch.manual_seed(0)
    model = Qwen3NextForCausalLM(Qwen3NextConfig.tiny(num_hidden_layers=4)).eval()
    cache = model.new_cache(3)
    model(torch.randint(0, 512, (3, 5)), cache=cache)
    model(torch.randint(0, 512, (3, 4)), cache=cache)
    truncate_attention(cache, 5, torch.tensor([1, 3, 2]))
    assert cache.seq_len == 8 and cache[3].length == 8
    assert cache.attention_mask[:, 5:].tolist() == [[1, 0, 0], [1, 1, 1], [1, 1, 0]]
    assert bool(cache.attention_mask[:, :5].all())
    same = model.new_cache(1)
    model(torch.randint(0, 512, (1, 5)), cache=same)
    model(torch.randint(0, 512, (1, 4)), cache=same)
    truncate_attention(same, 5, torch.tensor([2]))
    assert same.attention_mask is None and same.seq_len == 7  # one row: a cut, no holes


def test_strategies_by_name():
    assert isinstance(make_rollback("replay"), Replay) and isinstance(make_rollback("checkpoints"), Checkpoints)
    custom = Checkpoints()
    assert make_rollback(custom) is custom
    with pytest.raises(ValueError, match="rollback"):
        make_rollback("truncate")
