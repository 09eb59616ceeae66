"""Training a small Qwen3-Next from scratch: the pieces of one step, and the loop that repeats them.

One step of the book's training (chapter 10), piece by piece:

* :func:`init_for_training`: the Mamba-2-style initialisation of the DeltaNet decay (Dao & Gu, "Transformers
  are SSMs", 2024, as flash-linear-attention sets it): ``dt ~ logU[1e-3, 1e-1]``, ``dt_bias = softplus^-1(dt)``,
  ``A ~ U(0, 16)``. The reference's ``dt_bias = 1``, ``A ~ U(0.01, 16)`` gives a log decay ``g`` of about
  ``-10`` per token (each head forgets everything at once); it stays the model's default init, this
  function overwrites it for training.
* :func:`next_token_loss` and :func:`mtp_loss`: cross-entropy on ``x_{t+1}`` from the trunk and on ``x_{t+2}``
  from the MTP head (:mod:`qwen3next.mtp`; weighted as in DeepSeek-V3, section 2.2).
* :func:`balance_loss`: the Switch-Transformer load-balancing loss ``E sum_e f_e P_e`` per MoE layer,
  with ``f`` counted over the *global* batch (Qiu et al., "Demons in the Detail: On Implementing Load
  Balancing Loss for Training Specialized Mixture-of-Expert Models", 2025; used for Qwen3's MoE models),
  or over each micro-batch for comparison.
* :func:`param_groups`: AdamW (Loshchilov & Hutter, 2019) with weight decay on every matrix *and* on the
  zero-centred norm gains ``1 + w`` (decay pulls them to 1); none on ``A_log``, ``dt_bias`` and the plain
  gain of the gated norm (decay would pull those to 0).
* :func:`learning_rate` (linear warm-up, cosine decay) and :func:`clip_gradients` (global norm).
* :func:`train`: the loop, with a tqdm progress bar, evaluation against the corpus' entropy floor
  (:mod:`qwen3next.stories`), samples, and a JSON-lines log (:class:`JsonlLog`).
* :func:`save_pretrained`: the Hub layout (``config.json``, ``model.safetensors`` with ``mtp.*``, tokenizer).

Leaves out: mixed precision, data/expert/tensor parallelism, gradient accumulation and checkpointing.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import Qwen3NextConfig
from .deltanet import GatedDeltaNet
from .norms import RMSNormGated

IGNORE = -100  # label of a position that is not scored


# ------------------------------------------------------------------------------------- the model
def story_model_config(vocab_size: int, eos_token_id: int | None = None) -> Qwen3NextConfig:
    """The book's trained model: the release's structure at a small width.

    8 layers in the 3:1 pattern (6 Gated DeltaNet, 2 gated attention), 16 routed experts (top 2) plus a
    shared expert in every layer, and an MTP head (built by ``Qwen3NextForCausalLM(config, mtp=True)``).
    Head sizes a serving engine's kernels accept: DeltaNet key/value heads of 64, attention heads of 32.
    The balancing coefficient is Switch Transformer's 0.01 (the release uses 0.001 with far more tokens).
    """
    return Qwen3NextConfig.tiny(
        vocab_size=vocab_size, hidden_size=128, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=64, linear_value_head_dim=64,
        num_experts=16, num_experts_per_tok=2, moe_intermediate_size=64, shared_expert_intermediate_size=128,
        router_aux_loss_coef=0.01, max_position_embeddings=4096, bos_token_id=eos_token_id,
        eos_token_id=eos_token_id, torch_dtype="float32",
    )


# ------------------------------------------------------------------------------ initialisation
@torch.no_grad()
def init_for_training(model: nn.Module, dt_min: float = 1e-3, dt_max: float = 1e-1,
                      dt_floor: float = 1e-4, A_max: float = 16.0,
                      generator: torch.Generator | None = None) -> None:
    """Give every DeltaNet head a slow, spread-out forgetting rate (Mamba-2 / flash-linear-attention init).

    ``dt`` is log-uniform in ``[dt_min, dt_max]`` and ``dt_bias = softplus^-1(dt) = dt + log(1 - e^-dt)``,
    so with ``a = 0`` the per-token log decay ``g = -A softplus(dt_bias) = -A dt`` lies in ``[-1.6, 0]``.
    """
    for layer in model.modules():
        if isinstance(layer, GatedDeltaNet):
            n = layer.dt_bias.numel()
            u = torch.rand(n, generator=generator)
            log_dt = math.log(dt_min) + u * (math.log(dt_max) - math.log(dt_min))
            dt = log_dt.exp().clamp_min(dt_floor)  # log-uniform in [dt_min, dt_max]
            layer.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1
            A = torch.rand(n, generator=generator) * A_max  # U(0, A_max)
            A = A.clamp_min(1e-6)  # log(0) would be -inf
            layer.A_log.copy_(A.log())


@torch.no_grad()
def resting_decay(layer: GatedDeltaNet) -> torch.Tensor:
    """Each value head's decay per token ``alpha = exp(g)`` when its input ``a`` is 0: ``(Hv,)``."""
    g = -layer.A_log.float().exp() * F.softplus(layer.dt_bias.float())
    return g.exp()


# ------------------------------------------------------------------------------------- losses
def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction=reduction)


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``labels[:, t+1]`` under ``logits[:, t]``: logits (B, T, V), labels (B, T)."""
    return _cross_entropy(logits[:, :-1], labels[:, 1:], reduction)


def mtp_loss(mtp_logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``labels[:, t+2]`` under the MTP head's row ``t``: mtp_logits (B, T-1, V)."""
    return _cross_entropy(mtp_logits[:, :-1], labels[:, 2:], reduction)


def balance_loss(router_logits: Sequence[torch.Tensor], num_experts: int,
                 top_k: int, micro_batches: int = 1) -> torch.Tensor:
    """Load-balancing loss ``E sum_e f_e P_e`` of each MoE layer, averaged over layers.

    ``f_e``: share of tokens with ``e`` in their top-k (no gradient); ``P_e``: mean router probability of
    ``e`` (the gradient flows through it). With ``micro_batches=1`` both are taken over the whole batch
    (global-batch balancing); with ``m`` the N rows are cut into ``m`` equal micro-batches, the loss is
    computed in each and averaged (what a framework does that balances every micro-batch on its own).
    A perfectly balanced router scores ``top_k``.
    """
    losses = []
    for logits in router_logits:  # (N, E) per layer
        N = logits.shape[0]
        if N % micro_batches:
            raise ValueError(f"micro_batches: {micro_batches} does not divide {N}")
        probs = F.softmax(logits.float(), dim=-1)  # (N, E)
        probs = probs.view(micro_batches, N // micro_batches, -1)  # (m, n, E)
        chosen = torch.topk(probs, top_k, dim=-1).indices  # (m, n, k)
        counts = torch.zeros_like(probs).scatter_(-1, chosen, 1.0).sum(1)  # (m, E)
        f = counts / probs.shape[1]  # (m, E): share of the tokens routed to e
        P = probs.mean(1)  # (m, E)
        losses.append((num_experts * (f * P).sum(-1)).mean())
    return torch.stack(losses).mean()


@dataclass
class Losses:
    """The parts of one step's objective (tensors; ``total`` is what is back-propagated)."""

    total: torch.Tensor
    lm: torch.Tensor
    mtp: torch.Tensor | None
    balance: torch.Tensor


def compute_losses(model: nn.Module, input_ids: torch.Tensor,
                   labels: torch.Tensor | None = None, mtp_weight: float = 0.3,
                   balance_coef: float | None = None,
                   micro_batches: int = 1) -> Losses:
    """``lm + mtp_weight * mtp + balance_coef * balance`` for one batch ``input_ids (B, T)``.

    ``labels`` default to ``input_ids`` (``IGNORE`` marks padding); ``balance_coef`` defaults to the
    config's ``router_aux_loss_coef``. The MTP term is there when the model has a head (``model.mtp``).
    """
    from .mtp import mtp_forward

    labels = input_ids if labels is None else labels
    cfg = model.config
    # the trunk: hidden states after the final norm, each MoE layer's router logits
    hidden, _, router_logits = model.model(input_ids, return_router_logits=True)
    lm = next_token_loss(model.lm_head(hidden), labels)
    total, mtp = lm, None
    if getattr(model, "mtp", None) is not None:
        out = mtp_forward(model, input_ids[:, 1:], hidden[:, :-1])  # (x_{t+1}, h_t)
        mtp = mtp_loss(out.logits, labels)
        router_logits = [*router_logits, out.router_logits]
        total = total + mtp_weight * mtp
    E, k = cfg.num_experts, cfg.num_experts_per_tok
    balance = balance_loss(router_logits, E, k, micro_batches)
    coef = cfg.router_aux_loss_coef if balance_coef is None else balance_coef
    return Losses(total + coef * balance, lm, mtp, balance)


# ---------------------------------------------------------------------------------- optimiser
def no_weight_decay(model: nn.Module) -> set[str]:
    """Parameters that weight decay must not touch: ``A_log`` and ``dt_bias`` (they set the forgetting
    rates) and the plain gain of the DeltaNet output norm (decay would shrink it towards 0)."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, GatedDeltaNet):
            names |= {f"{prefix}.A_log", f"{prefix}.dt_bias"}
        elif isinstance(module, RMSNormGated):
            names.add(f"{prefix}.weight")
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed (matrices, embeddings, conv, zero-centred gains) and not decayed."""
    skip = no_weight_decay(model)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and n not in skip]
    keep = [p for n, p in model.named_parameters() if p.requires_grad and n in skip]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int, final_ratio: float = 0.1) -> float:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then a cosine down to ``final_ratio * peak``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``; return the norm before."""
    return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))


# --------------------------------------------------------------------------------------- data
def packed_batches(tokenizer, batch_size: int, seq_len: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """Batches ``(B, T)`` of whole stories: each row starts with a story and holds stories, each followed
    by an end-of-text token, until it is full (the last one cut). A story thus starts both at position 0
    (as a prompt does) and after an end-of-text token."""
    from .stories import END_OF_TEXT, story_stream

    eot = tokenizer.token_to_id(END_OF_TEXT)
    stream = story_stream(seed)
    while True:
        rows = []
        for _ in range(batch_size):
            row = []
            while len(row) < seq_len:
                row += tokenizer.encode(next(stream).text) + [eot]
            rows.append(row[:seq_len])
        yield torch.tensor(rows)


def story_batch(stories, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """One row per story, ``[eot, story, eot]`` right-padded: ``(input_ids, labels)`` with padding ``IGNORE``.

    Exactly the tokens :func:`qwen3next.stories.entropy_floor` counts are scored."""
    from .stories import END_OF_TEXT

    eot = tokenizer.token_to_id(END_OF_TEXT)
    rows = [[eot, *tokenizer.encode(s.text), eot] for s in stories]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), eot)
    labels = torch.full((len(rows), width), IGNORE)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, : len(row)] = torch.tensor(row)
    return ids, labels


@torch.no_grad()
def evaluate(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> dict:
    """Mean nats per scored token on ``story_batch`` rows: the trunk (``lm``), the MTP head from the
    second story token on (``mtp``), and the top-1 accuracy of the trunk."""
    from .mtp import mtp_forward

    sums = {"lm": 0.0, "mtp": 0.0, "correct": 0.0}
    counts = {"lm": 0, "mtp": 0}
    for i in range(0, ids.shape[0], batch_size):
        x, y = ids[i:i + batch_size], labels[i:i + batch_size]
        hidden = model.model(x)[0]
        logits = model.lm_head(hidden)
        sums["lm"] += float(next_token_loss(logits, y, reduction="sum"))
        counts["lm"] += int((y[:, 1:] != IGNORE).sum())
        sums["correct"] += float(((logits[:, :-1].argmax(-1) == y[:, 1:]) & (y[:, 1:] != IGNORE)).sum())
        if getattr(model, "mtp", None) is not None:
            out = mtp_forward(model, x[:, 1:], hidden[:, :-1])
            sums["mtp"] += float(mtp_loss(out.logits, y, reduction="sum"))
            counts["mtp"] += int((y[:, 2:] != IGNORE).sum())
    result = {"val_lm": sums["lm"] / counts["lm"], "val_accuracy": sums["correct"] / counts["lm"]}
    if counts["mtp"]:
        result["val_mtp"] = sums["mtp"] / counts["mtp"]
    return result


# ------------------------------------------------------------------------------------ logging
class JsonlLog:
    """Append one JSON object per line; :meth:`read` gives the records back."""

    def __init__(self, path: str | Path | None):
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def write(self, record: dict) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    @staticmethod
    def read(path: str | Path) -> list[dict]:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------- loop
@dataclass
class TrainConfig:
    """Everything that decides a training run (logged as its first record)."""

    steps: int = 2000
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 3e-3
    warmup_steps: int = 50
    final_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0
    mtp_weight: float = 0.3
    balance_coef: float | None = None  # None: the model config's router_aux_loss_coef
    seed: int = 0
    chunk_size: int | None = None  # of the chunked delta rule (None: the layer's own); speed, not result
    mixed_precision: bool = False  # bfloat16 products under torch.autocast; float32 weights and optimiser
    eval_every: int = 100
    eval_stories: int = 128
    sample_prompt: str = "Once upon a time, there was"
    sample_tokens: int = 64


def sample(model, tokenizer, prompt: str, max_new_tokens: int = 200) -> str:
    """The greedy continuation of ``prompt`` (as ``python -m qwen3next generate`` writes it), until end-of-text."""
    from .generate import generate
    from .stories import END_OF_TEXT

    eot = tokenizer.token_to_id(END_OF_TEXT)
    out = generate(model, torch.tensor([tokenizer.encode(prompt)]), max_new_tokens, temperature=0.0, eos_token_id=eot)
    # the embedding has rows past the tokenizer's last id (a multiple of 64): an untrained model may pick one
    return tokenizer.decode([i for i in out[0].tolist() if i < len(tokenizer)], skip_special_tokens=True)


def train(model: nn.Module, tokenizer, cfg: TrainConfig,
          log_path: str | Path | None = None, progress: bool = True) -> list[dict]:
    """Train ``model`` in place on the story stream of ``cfg.seed``; return (and log) one record per step.

    Every ``eval_every`` steps (and at the end) the record also holds the validation losses on
    ``eval_stories`` held-out stories, their entropy floor, and a greedy sample of ``sample_prompt``.
    """
    from tqdm.auto import tqdm

    from .stories import entropy_floor, generate_stories

    torch.manual_seed(cfg.seed)
    for layer in model.modules():
        if isinstance(layer, GatedDeltaNet) and cfg.chunk_size is not None:
            layer.chunk_size = cfg.chunk_size  # changes the speed, not the result
    log = JsonlLog(log_path)
    log.write({"config": asdict(cfg), "model": model.config.to_dict()})
    held_out = generate_stories(cfg.eval_stories, seed=10_000 + cfg.seed)  # unseen
    val_ids, val_labels = story_batch(held_out, tokenizer)
    floor = entropy_floor(held_out, tokenizer)
    groups = param_groups(model, cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    batches = packed_batches(tokenizer, cfg.batch_size, cfg.seq_len, seed=cfg.seed)
    device = model.lm_head.weight.device.type
    history, start, cpu_start = [], time.perf_counter(), time.process_time()
    bar = tqdm(range(cfg.steps), disable=not progress, desc="training")
    for step in bar:
        model.train()
        lr = learning_rate(step, cfg.steps, cfg.lr, cfg.warmup_steps,
                           cfg.final_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.mixed_precision):
            losses = compute_losses(model, next(batches), mtp_weight=cfg.mtp_weight,
                                    balance_coef=cfg.balance_coef)
        losses.total.backward()
        grad_norm = clip_gradients(model, cfg.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        record = {"step": step + 1, "lr": lr, "loss": losses.total.item(),
                  "lm": losses.lm.item(), "balance": losses.balance.item(),
                  "grad_norm": grad_norm,
                  "tokens": (step + 1) * cfg.batch_size * cfg.seq_len,
                  "seconds": time.perf_counter() - start,
                  "cpu_seconds": time.process_time() - cpu_start}
        if losses.mtp is not None:
            record["mtp"] = losses.mtp.item()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            model.eval()
            record.update(evaluate(model, val_ids, val_labels))
            record["floor"] = floor.nats_per_token
            record["sample"] = sample(model, tokenizer, cfg.sample_prompt,
                                      cfg.sample_tokens)
        bar.set_postfix(lm=f"{record['lm']:.3f}", refresh=False)
        log.write(record)
        history.append(record)
    model.eval()
    return history


# --------------------------------------------------------------------------------------- save
def save_pretrained(model: nn.Module, directory: str | Path, tokenizer=None, dtype: torch.dtype | None = None) -> Path:
    """Write a Hub-format checkpoint: ``config.json``, one ``model.safetensors`` (``mtp.*`` included) and,
    if given, the tokenizer files. ``dtype`` defaults to the model's."""
    from safetensors.torch import save_file

    from .stories import save_tokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = dtype or model.lm_head.weight.dtype
    model.config.replace(torch_dtype=str(dtype).removeprefix("torch.")).to_json(directory / "config.json")
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory)
    return directory
