"""The DeltaNet state pool: slots, batched reads and writes by slot index, snapshots."""

from __future__ import annotations

import pytest
import torch

from qwen3next.config import Qwen3NextConfig
from qwen3next.deltanet import DeltaNetState, GatedDeltaNet
from qwen3next.state_pool import StatePool, copy_slot

CFG = Qwen3NextConfig.tiny()


def test_a_new_slot_is_empty_and_freed_slots_come_back():
    pool = StatePool.for_config(CFG, 3)
    assert pool.conv.shape == (6, 3, CFG.linear_conv_dim, 4)
    assert pool.recurrent.shape == (6, 3, 4, 16, 16)
    a = pool.allocate()
    pool.recurrent[:, a] = 1.0
    pool.free(a)
    assert pool.allocate() == a and torch.count_nonzero(pool.recurrent[:, a]) == 0
    with pytest.raises(ValueError, match="not an allocated slot"):
        pool.free(2)


def test_the_recurrent_state_stays_float32_with_bfloat16_activations():
    pool = StatePool.for_config(CFG, 2, dtype=torch.bfloat16)
    assert pool.conv.dtype == torch.bfloat16 and pool.recurrent.dtype == torch.float32
    state = pool.gather(0, [1, 0])
    assert state.recurrent_state.dtype == torch.float32 and state.conv_state.shape[0] == 2


@torch.no_grad()
def _prefill(layer, pool, slots, x):
    """Read all but the last token of each row of ``x`` into its slot, one sequence at a time."""
    for b, slot in enumerate(slots):
        state = DeltaNetState()
        layer(x[b:b + 1, :-1], cache=state)
        pool.scatter(0, [slot], state)


@torch.no_grad()
def _decode(layer, pool, slots, x):
    """The last token of every row as one batch, each row continuing the state in ``slots[row]``."""
    state = pool.gather(0, slots)
    out = layer(x[:, -1:], cache=state)
    pool.scatter(0, slots, state)
    return out


def _prefilled(slots: list[int], num_slots: int):
    """A DeltaNet layer, inputs ``(len(slots), 10, hidden)`` and a pool with all but their last token read."""
    torch.manual_seed(0)
    layer = GatedDeltaNet(CFG, 0).eval()
    x = torch.randn(len(slots), 10, CFG.hidden_size)
    pool = StatePool.for_config(CFG, num_slots)
    _prefill(layer, pool, slots, x)
    return layer, x, pool


@torch.no_grad()
def test_a_batch_read_by_slot_index_equals_each_sequence_alone():
    slots = [4, 0, 2]  # not in order: the index, not the position in the batch, finds a row's state
    layer, x, pool = _prefilled(slots, 5)
    out = _decode(layer, pool, slots, x)
    for b, slot in enumerate(slots):
        state = DeltaNetState()
        alone = layer(x[b:b + 1], cache=state)
        assert (out[b] - alone[0, -1]).abs().max() < 1e-5
        assert (pool.recurrent[0, slot] - state.recurrent_state[0]).abs().max() < 1e-5


@torch.no_grad()
def test_a_wrong_slot_index_is_caught():
    """Reading row 0's state from row 1's slot gives row 0 the other sequence's memory."""
    layer, x, pool = _prefilled([0, 1], 2)
    before = pool.recurrent.clone(), pool.conv.clone()
    right = _decode(layer, pool, [0, 1], x)
    pool.recurrent.copy_(before[0])
    pool.conv.copy_(before[1])
    wrong = _decode(layer, pool, [1, 0], x)
    assert (right - wrong).abs().max() > 1e-3


def test_a_snapshot_restores_the_states_exactly():
    pool, snaps = StatePool.for_config(CFG, 1), StatePool.for_config(CFG, 2)
    slot = pool.allocate()
    pool.recurrent[:, slot].normal_()
    pool.conv[:, slot].normal_()
    keep = snaps.allocate()
    copy_slot(pool, slot, snaps, keep)
    before = pool.recurrent[:, slot].clone(), pool.conv[:, slot].clone()
    pool.recurrent[:, slot].add_(1.0)  # the request moves on
    copy_slot(snaps, keep, pool, slot)  # ... and comes back
    assert torch.equal(pool.recurrent[:, slot], before[0]) and torch.equal(pool.conv[:, slot], before[1])
    assert pool.nbytes_per_slot() == 6 * (CFG.linear_conv_dim * 4 + 4 * 16 * 16) * 4


def test_writing_two_rows_to_one_slot_is_refused():
    pool = StatePool.for_config(CFG, 2)
    state = pool.gather(0, [0, 0])  # reading a slot twice is harmless; writing it twice is ambiguous
    with pytest.raises(ValueError, match=r"slots \[0, 0\] repeat a slot"):
        pool.scatter(0, [0, 0], state)
