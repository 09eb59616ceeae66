"""Tensor and expert parallelism: one model split over several processes with ``torch.distributed``.

The 80B checkpoint does not fit one consumer machine, so servers split every layer over ``world``
processes (ranks) that each hold a slice of the weights and exchange activations:

* **Tensor parallelism (TP)** (Shoeybi et al., "Megatron-LM", 2019) for the token mixers. Attention
  heads are independent until ``o_proj``, so rank ``r`` keeps ``H / world`` query heads (their rows of
  ``q_proj``, queries and gates interleaved per head), the key/value heads they read, and the matching
  *columns* of ``o_proj``; its output is a partial sum and one ``all_reduce`` adds them up. With 2 KV
  heads, up to ``world = 2`` each rank keeps its own KV head; past that, ranks that serve query heads
  of the same group all keep a copy of that KV head (replicated, so the KV cache per rank stops
  shrinking). The Gated DeltaNet splits the same way by *key heads*, each with its 2 value heads: the
  projections are grouped per key head in the checkpoint, so a rank's rows are contiguous; the conv
  channels, ``A_log`` and ``dt_bias`` follow their heads, ``out_proj`` is split by columns, one
  ``all_reduce``. Each rank's DeltaNet state is then ``1 / world`` of the whole.
* **Expert parallelism (EP)** (Lepikhin et al., "GShard", 2020) for the MoE: rank ``r`` keeps
  ``E / world`` experts (EP 4: 128 of 512). Every rank takes a share of the tokens, routes them with
  the (replicated) router and sends each (token, expert) pair to the rank that holds the expert
  (``all_to_all``); the outputs come back the same way, are weighted and summed, and the ranks
  exchange their tokens' results (``all_gather``). The shared expert is split like an MLP under TP
  (its intermediate dimension), one ``all_reduce``.
* The **embedding** and ``lm_head`` are split by vocabulary rows: a rank looks up only the ids it
  owns (the others give zeros, ``all_reduce``), and computes the logits of its slice of the
  vocabulary (``all_gather``).

Every rank runs the unchanged ``Qwen3NextForCausalLM.forward`` and its own ``HybridCache``: the
layers it holds are smaller, that is all. Launch with ``torchrun --nproc-per-node N -m
qwen3next.parallel`` (gloo on CPU, nccl on GPUs); the demo below checks the logits against one
process. :mod:`qwen3next.parallel_memory` computes the memory per rank of the real model.

Mirrors vLLM's ``ColumnParallelLinear`` / ``RowParallelLinear`` / ``VocabParallelEmbedding`` and its
fused-MoE expert parallelism, at the level of ideas. Leaves out: loading only a rank's shard from the
checkpoint (each rank builds the full model here, then keeps its slice), pipeline and data
parallelism, and training (the collectives here are not differentiable).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .attention import GatedAttention
from .deltanet import GatedDeltaNet
from .moe import SparseMoeBlock, route, swiglu


def check_world(config, world: int) -> None:
    """Refuse a split that does not divide the heads, experts and vocabulary evenly."""
    H, Hkv = config.num_attention_heads, config.num_key_value_heads
    problems = []
    if H % world:
        problems.append(f"{H} query heads")
    if world % Hkv and Hkv % world:
        problems.append(f"{Hkv} KV heads (world must divide them or be a multiple of them)")
    if config.linear_num_key_heads % world:
        problems.append(f"{config.linear_num_key_heads} DeltaNet key heads")
    if config.num_experts % world:
        problems.append(f"{config.num_experts} experts")
    if config.vocab_size % world:
        problems.append(f"a vocabulary of {config.vocab_size}")
    if problems:
        raise ValueError(f"world size {world}: cannot split {', '.join(problems)} evenly")


def kv_heads_of_rank(config, rank: int, world: int) -> range:
    """The KV heads rank ``rank`` keeps: its query heads' groups (one shared head past world = Hkv)."""
    H, Hkv = config.num_attention_heads, config.num_key_value_heads
    group = H // Hkv  # query heads per KV head
    q0, q1 = rank * H // world, (rank + 1) * H // world
    return range(q0 // group, (q1 - 1) // group + 1)


# ------------------------------------------------------------------------------------- mixers
class ShardedAttention(nn.Module):
    """This rank's query heads (and the KV heads they read) of one gated-attention layer."""

    def __init__(self, full: GatedAttention, config, rank: int, world: int):
        super().__init__()
        H, D = config.num_attention_heads, config.head_dim
        q0, q1 = rank * H // world, (rank + 1) * H // world
        kv = kv_heads_of_rank(config, rank, world)
        local_cfg = config.replace(num_attention_heads=q1 - q0, num_key_value_heads=len(kv))
        self.local = GatedAttention(local_cfg, full.layer_idx, implementation=full.implementation)
        with torch.no_grad():
            self.local.q_proj.weight.copy_(full.q_proj.weight[q0 * 2 * D:q1 * 2 * D])  # [query | gate] per head
            self.local.k_proj.weight.copy_(full.k_proj.weight[kv.start * D:kv.stop * D])
            self.local.v_proj.weight.copy_(full.v_proj.weight[kv.start * D:kv.stop * D])
            self.local.o_proj.weight.copy_(full.o_proj.weight[:, q0 * D:q1 * D])  # columns: a partial sum
            self.local.q_norm.weight.copy_(full.q_norm.weight)
            self.local.k_norm.weight.copy_(full.k_norm.weight)

    def forward(self, x, cos, sin, attention_mask=None, cache=None):
        out = self.local(x, cos, sin, attention_mask=attention_mask, cache=cache)
        dist.all_reduce(out)  # sum of the ranks' o_proj partial sums
        return out


class ShardedDeltaNet(nn.Module):
    """This rank's key heads (each with its value heads) of one Gated DeltaNet layer."""

    def __init__(self, full: GatedDeltaNet, config, rank: int, world: int):
        super().__init__()
        Hk, Dk, Dv = config.linear_num_key_heads, config.linear_key_head_dim, config.linear_value_head_dim
        r = config.linear_num_value_heads // Hk  # value heads per key head
        a, b = rank * Hk // world, (rank + 1) * Hk // world
        local_cfg = config.replace(linear_num_key_heads=b - a, linear_num_value_heads=(b - a) * r)
        self.local = GatedDeltaNet(local_cfg, full.layer_idx)
        group = 2 * Dk + 2 * r * Dv  # in_proj_qkvz rows per key head: [q | k | v | z]
        key_dim = Hk * Dk
        conv_rows = torch.cat([torch.arange(a * Dk, b * Dk), key_dim + torch.arange(a * Dk, b * Dk),
                               2 * key_dim + torch.arange(a * r * Dv, b * r * Dv)])  # [q | k | v] channels
        with torch.no_grad():
            self.local.in_proj_qkvz.weight.copy_(full.in_proj_qkvz.weight[a * group:b * group])
            self.local.in_proj_ba.weight.copy_(full.in_proj_ba.weight[a * 2 * r:b * 2 * r])
            self.local.conv1d.weight.copy_(full.conv1d.weight[conv_rows])
            self.local.dt_bias.copy_(full.dt_bias[a * r:b * r])
            self.local.A_log.copy_(full.A_log[a * r:b * r])
            self.local.norm.weight.copy_(full.norm.weight)
            self.local.out_proj.weight.copy_(full.out_proj.weight[:, a * r * Dv:b * r * Dv])

    def forward(self, x, attention_mask=None, cache=None):
        out = self.local(x, attention_mask=attention_mask, cache=cache)
        dist.all_reduce(out)
        return out


# ----------------------------------------------------------------------------------- the MoE
class ExpertParallelMoE(nn.Module):
    """This rank's experts and slice of the shared expert; tokens travel to their experts' ranks."""

    def __init__(self, full: SparseMoeBlock, rank: int, world: int):
        super().__init__()
        self.rank, self.world = rank, world
        self.num_experts, self.top_k, self.norm_topk_prob = full.num_experts, full.top_k, full.norm_topk_prob
        self.per_rank = full.num_experts // world
        self.gate = full.gate  # the router is small: every rank keeps all of it
        self.experts = full.experts[rank * self.per_rank:(rank + 1) * self.per_rank]  # a stack of its own
        inter = full.shared_expert.gate_proj.weight.shape[0]
        i0, i1 = rank * inter // world, (rank + 1) * inter // world
        self.shared_expert = _mlp_slice(full.shared_expert, i0, i1)
        self.shared_expert_gate = full.shared_expert_gate

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, H = hidden_states.shape
        x = hidden_states.reshape(B * T, H)  # (N, H), the same on every rank
        router_logits = self.gate(x)  # (N, E)
        sizes = [len(c) for c in torch.arange(x.shape[0]).tensor_split(self.world)]
        mine = x.split(sizes)[self.rank]  # (n, H): the tokens this rank dispatches
        weights, experts, _ = route(router_logits.split(sizes)[self.rank], self.top_k, self.norm_topk_prob, x.dtype)
        routed = self._dispatch(mine, experts, weights)  # (n, H)
        # every rank gets every token's routed output (all_gather wants equal sizes: pad to the largest)
        padded = routed.new_zeros(max(sizes), H)
        padded[:len(routed)] = routed
        gathered = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(gathered, padded)
        routed = torch.cat([g[:s] for g, s in zip(gathered, sizes, strict=True)])  # (N, H)
        shared = swiglu(x, self.shared_expert)  # (N, H): this rank's share of the shared expert
        dist.all_reduce(shared)
        y = routed + torch.sigmoid(self.shared_expert_gate(x)) * shared
        return y.view(B, T, H), router_logits

    def _dispatch(self, x, experts, weights) -> torch.Tensor:
        """All-to-all there and back: send each (token, expert) row to the expert's rank, get its output."""
        n, k = experts.shape
        flat = experts.reshape(-1)  # (n k,)
        order = torch.argsort(flat // self.per_rank, stable=True)  # assignments grouped by destination rank
        send_counts = torch.bincount(flat // self.per_rank, minlength=self.world)  # (world,)
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts)  # how many rows each rank will send me
        send, recv = send_counts.tolist(), recv_counts.tolist()
        rows = x.index_select(0, order // k)  # (n k, H)
        ids = flat.index_select(0, order)
        rows_in, ids_in = rows.new_empty(sum(recv), x.shape[1]), ids.new_empty(sum(recv))
        dist.all_to_all_single(rows_in, rows, recv, send)
        dist.all_to_all_single(ids_in, ids, recv, send)
        out_in = torch.zeros_like(rows_in)
        for e in torch.unique(ids_in).tolist():  # my experts, on the rows sent to them
            hit = ids_in == e
            out_in[hit] = swiglu(rows_in[hit], self.experts[e - self.rank * self.per_rank])
        out = torch.empty_like(rows)
        dist.all_to_all_single(out, out_in, send, recv)  # back to the ranks that sent them
        y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        y.index_add_(0, order // k, (out * weights.reshape(-1).index_select(0, order)[:, None]).float())
        return y.to(x.dtype)


def _mlp_slice(mlp, i0: int, i1: int) -> nn.Module:
    """Columns ``i0 .. i1`` of an MLP's intermediate dimension: its output is a partial sum."""
    part = type(mlp)(mlp.gate_proj.weight.shape[1], i1 - i0)
    with torch.no_grad():
        part.gate_proj.weight.copy_(mlp.gate_proj.weight[i0:i1])
        part.up_proj.weight.copy_(mlp.up_proj.weight[i0:i1])
        part.down_proj.weight.copy_(mlp.down_proj.weight[:, i0:i1])
    return part.to(mlp.gate_proj.weight.dtype)


# ---------------------------------------------------------------------------- the vocabulary
class VocabParallelEmbedding(nn.Module):
    """Rows ``lo .. hi`` of the embedding; ids outside them look up zeros, and the ranks add up."""

    def __init__(self, full: nn.Embedding, rank: int, world: int):
        super().__init__()
        V = full.weight.shape[0]
        self.lo, self.hi = rank * V // world, (rank + 1) * V // world
        self.weight = nn.Parameter(full.weight[self.lo:self.hi].detach().clone(), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mine = (ids >= self.lo) & (ids < self.hi)
        x = F.embedding((ids - self.lo).clamp(0, self.hi - self.lo - 1), self.weight) * mine[..., None]
        dist.all_reduce(x)
        return x


class VocabParallelLMHead(nn.Module):
    """Rows ``lo .. hi`` of ``lm_head``: this rank's slice of the logits, gathered into all of them."""

    def __init__(self, full: nn.Linear, rank: int, world: int):
        super().__init__()
        V = full.weight.shape[0]
        lo, hi = rank * V // world, (rank + 1) * V // world
        self.weight = nn.Parameter(full.weight[lo:hi].detach().clone(), requires_grad=False)
        self.world = world

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        part = F.linear(h, self.weight).contiguous()  # (..., V / world)
        parts = [torch.empty_like(part) for _ in range(self.world)]
        dist.all_gather(parts, part)
        return torch.cat(parts, dim=-1)  # (..., V)


# ------------------------------------------------------------------------------------- whole
def shard_model(model, rank: int, world: int):
    """Replace ``model``'s layers, embedding and ``lm_head`` by this rank's shards, in place."""
    cfg = model.config
    check_world(cfg, world)
    model.model.embed_tokens = VocabParallelEmbedding(model.model.embed_tokens, rank, world)
    model.lm_head = VocabParallelLMHead(model.lm_head, rank, world)
    for layer in model.model.layers:
        if layer.layer_type == "linear_attention":
            layer.linear_attn = ShardedDeltaNet(layer.linear_attn, cfg, rank, world)
        else:
            layer.self_attn = ShardedAttention(layer.self_attn, cfg, rank, world)
        if isinstance(layer.mlp, SparseMoeBlock):
            layer.mlp = ExpertParallelMoE(layer.mlp, rank, world)
    return model


def init_process_group() -> tuple[int, int]:
    """Join the group ``torchrun`` set up (nccl when there are GPUs, else gloo): ``(rank, world)``."""
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


@torch.no_grad()
def compare_with_one_process(config, seed: int = 0, prompt_len: int = 11, decode_steps: int = 3,
                             batch: int = 2) -> dict[str, float]:
    """On every rank: the model of ``seed``, whole and sharded; the largest logit difference for the
    prefill and for each cached decode step (greedy)."""
    from .model import Qwen3NextForCausalLM

    rank, world = init_process_group()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
    torch.manual_seed(seed)
    whole = Qwen3NextForCausalLM(config).eval().to(device)
    sharded = Qwen3NextForCausalLM(config).eval().to(device)
    sharded.load_state_dict(whole.state_dict())
    shard_model(sharded, rank, world)
    ids = torch.randint(0, config.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(seed))
    ids = ids.to(device)
    caches = whole.new_cache(batch), sharded.new_cache(batch)
    diffs = {}
    for step in range(decode_steps + 1):
        a = whole(ids, cache=caches[0]).logits[:, -1]
        b = sharded(ids, cache=caches[1]).logits[:, -1]
        diffs["prefill" if step == 0 else f"decode {step}"] = float((a - b).abs().max())
        ids = a.argmax(-1, keepdim=True)  # the same next tokens for both
    return diffs


def main() -> None:
    """``torchrun --nproc-per-node 2 -m qwen3next.parallel``: the tiny model split over the ranks."""
    from .config import Qwen3NextConfig
    from .parallel_memory import layer_split

    cfg = Qwen3NextConfig.tiny()
    diffs = compare_with_one_process(cfg)
    rank, world = dist.get_rank(), dist.get_world_size()
    split = layer_split(cfg, rank, world)
    if rank == 0:
        print(f"world size {world} ({dist.get_backend()}); each rank holds: {split}")
        for what, d in diffs.items():
            print(f"{what}: max |logits - one process| {'<= 1e-05' if d <= 1e-5 else f'= {d:.2e}'}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
