"""Multi-query associative recall (MQAR): which token mixers can look up what they were told?

The task of Zoology (Arora et al., "Zoology: Measuring and Improving Recall in Efficient Language Models",
2023), also used by the DeltaNet paper (Yang et al., "Parallelizing Linear Transformers with the Delta
Rule over Sequence Length", 2024): a sequence of ``D`` key-value pairs, then every key again in a new
order; after each query key the model must produce its value::

    k1 v1 k2 v2 ... kD vD | q1 a1 q2 a2 ... qD aD        (a_i = the value that followed q_i)

Only the answers ``a_i`` are scored. A model can only answer by recalling a binding it saw earlier,
which is what a fixed-size recurrent state finds hard and softmax attention (which keeps every key) finds easy.

The study compares mixers at *equal state size*: every recurrent layer keeps ``Hv`` matrices of
``Dk x Dv`` numbers (:func:`state_numbers`), whatever the length; attention keeps all keys and values.
Mixers: softmax attention (:class:`~qwen3next.attention.GatedAttention`), linear attention
(:class:`LinearAttention`, ``S += v k^T``), DeltaNet (:class:`UngatedDeltaNet`, the delta rule without
decay), Gated DeltaNet (the package's :class:`~qwen3next.deltanet.GatedDeltaNet`) and the 3:1 hybrid of
Qwen3-Next; each recurrent one with or without its short convolution, and Gated DeltaNet with either
initialisation (:func:`qwen3next.train.init_for_training` or the reference's).

Leaves out: Zoology's sweep over model widths and learning rates (one width, one learning rate here)
and its other synthetic tasks.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import Qwen3NextConfig
from .delta_rule import l2_normalize
from .deltanet import GatedDeltaNet, causal_conv1d
from .train import IGNORE, clip_gradients, init_for_training, learning_rate, next_token_loss, param_groups

MIXERS = ("attention", "linear_attention", "deltanet", "gated_deltanet", "hybrid")


# -------------------------------------------------------------------------------------------- task
@dataclass(frozen=True)
class MQARTask:
    """``num_pairs`` key-value pairs drawn from ``num_keys`` keys and ``num_values`` values."""

    num_pairs: int = 8
    num_keys: int = 32
    num_values: int = 32

    @property
    def seq_len(self) -> int:
        return 4 * self.num_pairs

    @property
    def vocab_size(self) -> int:
        return self.num_keys + self.num_values


def mqar_batch(task: MQARTask, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)`` of shape ``(B, 4D)``; labels are ``IGNORE`` except at the answers.

    Keys are ids ``0 .. num_keys-1`` (distinct within a row), values ``num_keys ..`` (repeats allowed)."""
    B, D = batch_size, task.num_pairs
    keys = torch.rand(B, task.num_keys, generator=generator).argsort(-1)[:, :D]  # (B, D) distinct keys
    values = task.num_keys + torch.randint(0, task.num_values, (B, D), generator=generator)  # (B, D)
    order = torch.rand(B, D, generator=generator).argsort(-1)  # (B, D) the order of the queries
    ids = torch.empty(B, 4 * D, dtype=torch.long)
    ids[:, 0:2 * D:2], ids[:, 1:2 * D:2] = keys, values
    ids[:, 2 * D::2], ids[:, 2 * D + 1::2] = keys.gather(1, order), values.gather(1, order)
    labels = torch.full_like(ids, IGNORE)
    labels[:, 2 * D + 1::2] = ids[:, 2 * D + 1::2]  # predicted from the query key just before
    return ids, labels


# ------------------------------------------------------------------------------------------ mixers
class UngatedDeltaNet(GatedDeltaNet):
    """DeltaNet: the Gated DeltaNet layer with its decay switched off (``g = 0``, nothing is forgotten)."""

    def gates(self, b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        beta, g = super().gates(b, a)
        return beta, torch.zeros_like(g)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal linear attention ``o_t = sum_{s <= t} (q_t . k_s) v_s``, i.e. the state update ``S += v k^T``
    with no correction: q, k (B, T, Hk, Dk) L2-normalised here, v (B, T, Hv, Dv) -> (B, T, Hv, Dv)."""
    r = v.shape[2] // q.shape[2]
    q, k = (l2_normalize(x.float()).repeat_interleave(r, dim=2) for x in (q, k))  # (B, T, Hv, Dk)
    scores = torch.einsum("bthd,bshd->bhts", q * q.shape[-1] ** -0.5, k)  # (B, Hv, T, T)
    scores = scores.tril()  # causal; no softmax: every past write adds up
    return torch.einsum("bhts,bshd->bthd", scores, v.float()).to(v.dtype)


class LinearAttention(GatedDeltaNet):
    """Linear attention with the Gated DeltaNet layer's projections, short conv and output norm.

    Only the memory rule differs: ``S += v k^T`` instead of the delta rule (so ``beta``, ``A_log`` and
    ``dt_bias`` are unused). Training only: no padding mask, no cache.
    """

    def forward(self, x: torch.Tensor, attention_mask=None, cache=None) -> torch.Tensor:
        if attention_mask is not None or cache is not None:
            raise ValueError("LinearAttention: a study mixer, trained on whole sequences (no mask, no cache)")
        B, T, _ = x.shape
        q, k, v, z, _, _ = self.split_projections(self.in_proj_qkvz(x), self.in_proj_ba(x))
        qkv = torch.cat([q.reshape(B, T, -1), k.reshape(B, T, -1), v.reshape(B, T, -1)], dim=-1).transpose(1, 2)
        qkv = F.silu(causal_conv1d(qkv, self.conv1d.weight.squeeze(1))[0]).transpose(1, 2)  # (B, T, conv_dim)
        q, k, v = torch.split(qkv, [self.key_dim, self.key_dim, self.value_dim], dim=-1)
        o = linear_attention(q.reshape(B, T, self.num_k_heads, -1), k.reshape(B, T, self.num_k_heads, -1),
                             v.reshape(B, T, self.num_v_heads, -1))
        return self.out_proj(self.norm(o, z).reshape(B, T, self.value_dim))


# ------------------------------------------------------------------------------------------ models
def recall_config(mixer: str, task: MQARTask, hidden_size: int = 128, num_layers: int = 4,
                  head_dim: int = 32) -> Qwen3NextConfig:
    """A small Qwen3-Next with dense SwiGLU MLPs whose every mixer is ``mixer`` (``"hybrid"``: 3 recurrent
    layers to 1 attention layer). Recurrent layers have 2 heads of ``head_dim x head_dim`` state."""
    if mixer not in MIXERS:
        raise ValueError(f"mixer: expected one of {MIXERS}, found {mixer!r}")
    kinds = {"attention": ["full_attention"] * num_layers, "hybrid": None}
    layer_types = kinds.get(mixer, ["linear_attention"] * num_layers)
    return Qwen3NextConfig.tiny(
        vocab_size=task.vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        layer_types=layer_types, full_attention_interval=4,
        num_attention_heads=hidden_size // head_dim, num_key_value_heads=hidden_size // head_dim, head_dim=head_dim,
        linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=head_dim,
        linear_value_head_dim=head_dim, num_experts=0, intermediate_size=2 * hidden_size,
        max_position_embeddings=max(256, task.seq_len),
    )


def state_numbers(config: Qwen3NextConfig, seq_len: int) -> list[int]:
    """Numbers each layer keeps between tokens after ``seq_len`` tokens (recurrent state or K and V)."""
    out = []
    for kind in config.layer_types:
        if kind == "linear_attention":
            out.append(config.linear_num_value_heads * config.linear_key_head_dim * config.linear_value_head_dim)
        else:
            out.append(2 * seq_len * config.num_key_value_heads * config.head_dim)
    return out


def recall_model(mixer: str, task: MQARTask, short_conv: bool = True, init: str = "mamba2", seed: int = 0,
                 **config_kwargs) -> nn.Module:
    """The model of one study run. ``init``: ``"mamba2"`` (:func:`init_for_training`) or ``"reference"``;
    ``short_conv=False`` freezes every conv at the identity (each channel sees only its own token)."""
    from .model import Qwen3NextForCausalLM

    if init not in ("mamba2", "reference"):
        raise ValueError(f"init: expected 'mamba2' or 'reference', found {init!r}")
    cfg = recall_config(mixer, task, **config_kwargs)
    torch.manual_seed(seed)
    model = Qwen3NextForCausalLM(cfg)
    swap = {"linear_attention": LinearAttention, "deltanet": UngatedDeltaNet}.get(mixer)
    for i, layer in enumerate(model.model.layers):
        if swap is not None and hasattr(layer, "linear_attn"):
            new = swap(cfg, i)
            new.load_state_dict(layer.linear_attn.state_dict())
            layer.linear_attn = new
    if init == "mamba2":
        init_for_training(model, generator=torch.Generator().manual_seed(seed))
    if not short_conv:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, GatedDeltaNet):
                    m.conv1d.weight.zero_()[..., -1] = 1.0  # the kernel's last tap is the current token
                    m.conv1d.weight.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------------------- training
@torch.no_grad()
def recall_accuracy(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of the answers the model gets right (greedy)."""
    model.eval()
    pred = model(ids).logits[:, :-1].argmax(-1)  # (B, T-1): the prediction for each next token
    target = labels[:, 1:]
    scored = target != IGNORE
    return float((pred[scored] == target[scored]).float().mean())


@dataclass
class RecallRun:
    """One run of the study: what was trained, and how its accuracy went."""

    mixer: str
    short_conv: bool = True
    init: str = "mamba2"
    seed: int = 0
    hidden_size: int = 128
    num_layers: int = 4
    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    eval_every: int = 100

    @property
    def name(self) -> str:
        conv = "" if self.short_conv else ", no conv"
        init = "" if self.init == "mamba2" else ", reference init"
        return f"{self.mixer.replace('_', ' ')}{conv}{init}"


def train_recall(run: RecallRun, task: MQARTask, log=None) -> dict:
    """Train one study model; returns the run, its curve ``[(step, loss, accuracy)]`` and its final
    accuracy on 256 held-out sequences (also written to ``log``, a :class:`qwen3next.train.JsonlLog`)."""
    model = recall_model(run.mixer, task, run.short_conv, run.init, run.seed,
                         hidden_size=run.hidden_size, num_layers=run.num_layers)
    gen = torch.Generator().manual_seed(run.seed)
    held_out = mqar_batch(task, 256, torch.Generator().manual_seed(10_000 + run.seed))
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=run.lr, betas=(0.9, 0.95))
    curve, start = [], time.perf_counter()
    for step in range(run.steps):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, run.steps, run.lr, max(1, run.steps // 20))
        ids, labels = mqar_batch(task, run.batch_size, gen)
        loss = next_token_loss(model(ids).logits, labels)
        loss.backward()
        clip_gradients(model, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % run.eval_every == 0 or step + 1 == run.steps:
            curve.append((step + 1, float(loss.detach()), recall_accuracy(model, *held_out)))
    result = {"run": asdict(run), "name": run.name, "curve": curve, "accuracy": curve[-1][2],
              "state_numbers": state_numbers(model.config, task.seq_len), "seconds": time.perf_counter() - start,
              "chance": 1 / task.num_values, "task": asdict(task)}
    if log is not None:
        log.write(result)
    return result


def chance_loss(task: MQARTask) -> float:
    """The loss of a model that knows the answer is a value but not which one: ``log(num_values)``."""
    return math.log(task.num_values)
