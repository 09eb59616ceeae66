"""Tensor and expert parallelism: two gloo processes give the logits of one; memory per rank from the config."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from qwen3next.accounting import parameter_counts
from qwen3next.config import Qwen3NextConfig
from qwen3next.model import Qwen3NextForCausalLM
from qwen3next.parallel import check_world, kv_heads_of_rank, shard_model
from qwen3next.parallel_memory import memory_per_rank, parameters_per_rank

TOL = 1e-5
# 4 DeltaNet key heads so that 4 ranks can split them too
CFG4 = Qwen3NextConfig.tiny(linear_num_key_heads=4, linear_num_value_heads=8)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from qwen3next.parallel import compare_with_one_process

    results = {f"batch {b}": compare_with_one_process(Qwen3NextConfig.tiny(), batch=b, decode_steps=3)
               for b in (1, 3)}  # one decode token: a rank gets no token to dispatch
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_logits_of_one(tmp_path):
    out = tmp_path / "diffs.json"
    mp.start_processes(_worker, args=(2, _free_port(), str(out)), nprocs=2, start_method="spawn")
    results = json.loads(out.read_text())
    assert set(results["batch 1"]) == {"prefill", "decode 1", "decode 2", "decode 3"}
    for diffs in results.values():
        assert max(diffs.values()) <= TOL, diffs


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("world", [2, 4])
def test_each_shard_holds_what_the_memory_formula_says(world):
    """Sharding needs no process group (only the forward pass talks): count each rank's parameters."""
    torch.manual_seed(0)
    for rank in range(world):
        model = shard_model(Qwen3NextForCausalLM(CFG4), rank, world)
        layer = model.model.layers
        attn = sum(_count(m.self_attn) for m in layer if m.layer_type == "full_attention")
        expected = parameters_per_rank(CFG4, world, world)
        assert attn == expected["attention"]
        assert sum(_count(m.linear_attn) for m in layer if m.layer_type == "linear_attention") == expected["deltanet"]
        assert sum(_count(m.mlp.experts) for m in layer) == expected["routed experts"]
        assert _count(model) == sum(expected.values())


def test_memory_per_rank_of_the_released_model():
    cfg = Qwen3NextConfig.full()
    one = memory_per_rank(cfg, 1)
    assert one.total_parameters == parameter_counts(cfg).total == 79_674_391_296
    assert one.kv_bytes_per_token == 12 * 2 * 2 * 256 * 2  # 24 KiB per token over the 12 attention layers
    assert one.state_bytes_per_sequence == 36 * (8192 * 4 * 2 + 32 * 128 * 128 * 4)  # about 74 MiB
    rows = {n: memory_per_rank(cfg, n) for n in (2, 4, 8)}
    assert rows[4].parameters["routed experts"] == 48 * 128 * 3 * 2048 * 512  # EP 4: 128 experts per rank
    # the KV cache per rank halves at TP 2, then stays: 2 KV heads, replicated past TP = 2
    assert rows[2].kv_bytes_per_token == rows[4].kv_bytes_per_token == rows[8].kv_bytes_per_token == 12_288
    assert rows[8].state_bytes_per_sequence * 8 == one.state_bytes_per_sequence
    # every rank holds the router, the norms and the shared expert's 1-wide gate; the rest is divided
    replicated = one.parameters["router"] + one.parameters["norms"] + 12 * 2 * 256 + 36 * 128 + 48 * 2048
    assert 2 * rows[2].total_parameters == one.total_parameters + replicated
    assert rows[8].weight_bytes < 21 * 2**30 < rows[4].weight_bytes  # bf16: ~20 GiB at 8 ranks, ~38 at 4


def test_kv_heads_are_replicated_past_two_ranks():
    cfg = Qwen3NextConfig.full()
    assert [list(kv_heads_of_rank(cfg, r, 2)) for r in range(2)] == [[0], [1]]
    assert [list(kv_heads_of_rank(cfg, r, 4)) for r in range(4)] == [[0], [0], [1], [1]]
    assert [kv_heads_of_rank(cfg, r, 8).start for r in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_a_split_that_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="world size 3: cannot split 4 query heads"):
        check_world(Qwen3NextConfig.tiny(), 3)
    with pytest.raises(ValueError, match="2 DeltaNet key heads"):
        check_world(Qwen3NextConfig.tiny(), 4)
