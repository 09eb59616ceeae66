"""Benchmark: the whole model against transformers' Qwen3NextForCausalLM, same weights, one CPU thread.

A medium config (hidden 256, 8 layers in the 3:1 DeltaNet/attention pattern, 32 experts with 4 active
plus the shared expert; heads and widths scaled from the release by about 1/8):

1. prefill: one forward pass over 512 tokens;
2. decode: prefill 256 tokens, then 64 one-token steps on the cache (ours: ``HybridCache``; the
   reference: its own ``DynamicCache`` through ``model(..., cache=..., use_cache=True)``); the steps
   alone once more with ``ours.compile_decoding()`` (torch.compile), with what compiling costs;
3. a training step: forward and backward of the loss (cross-entropy plus the load-balancing loss) on a
   batch of 8 sequences of 256 tokens, both models in train mode; the gradients are compared. Then the
   same step in mixed precision (``torch.autocast`` to bfloat16) on both sides, and ours in mixed
   precision against the reference's float32 step.

Both models see the same token ids; logits are compared before timing. Prints the times (median
[range] of alternating runs, ``benchmarks/timing.py``) and the ratio ours / reference (below 1 means
ours is faster).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_model.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse

import torch
from timing import measure, race, report, setup, timed

from qwen3next.config import Qwen3NextConfig
from qwen3next.loss import linear_cross_entropy
from qwen3next.model import Qwen3NextForCausalLM
from qwen3next.reference import max_abs_diff, moe_state_dict_to_reference, reference_config

MEDIUM = dict(
    vocab_size=16384, hidden_size=256, num_hidden_layers=8,
    num_attention_heads=4, num_key_value_heads=2, head_dim=64,
    linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=32, linear_value_head_dim=32,
    num_experts=32, num_experts_per_tok=4, moe_intermediate_size=64, shared_expert_intermediate_size=64,
    intermediate_size=640, max_position_embeddings=4096, rope_theta=10_000_000.0,
    bos_token_id=None, eos_token_id=None, torch_dtype="float32",
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--decode-prompt", type=int, default=256)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-len", type=int, default=256)
    args = parser.parse_args()
    setup()
    import transformers

    cfg = Qwen3NextConfig.tiny(**MEDIUM)
    torch.manual_seed(0)
    ours = Qwen3NextForCausalLM(cfg).eval()
    ref = transformers.Qwen3NextForCausalLM(reference_config(cfg)).eval()
    ref.load_state_dict(moe_state_dict_to_reference(ours.state_dict()))
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"transformers {transformers.__version__}; medium config: hidden {cfg.hidden_size}, "
          f"{cfg.num_hidden_layers} layers, {cfg.num_experts} experts top {cfg.num_experts_per_tok}, "
          f"{n_params / 1e6:.1f}M parameters")

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (1, max(args.prefill, args.decode_prompt + args.steps)), generator=g)
    prompt, steps = ids[:, :args.decode_prompt], ids[:, args.decode_prompt:args.decode_prompt + args.steps]
    s = steps.shape[1]

    def ours_prefilled():
        """Prefill the prompt (not timed); return the decode loop, which appends its logits to ``out``."""
        cache = ours.new_cache(1)
        out = [ours(prompt, cache=cache, logits_to_keep=1).logits]
        return out, lambda: out.extend(ours(steps[:, t:t + 1], cache=cache).logits for t in range(s))

    def ref_prefilled():
        r = ref(prompt, use_cache=True, logits_to_keep=1)
        cache, out = r.cache, [r.logits]
        return out, lambda: out.extend(ref(steps[:, t:t + 1], cache=cache, use_cache=True).logits for t in range(s))

    def decoded(prefilled):
        out, loop = prefilled()
        loop()
        return torch.cat(out, dim=1)

    with torch.no_grad():
        x = ids[:, :args.prefill]
        print(f"check: prefill logits max |diff| = {max_abs_diff(ours(x).logits, ref(x).logits):.2e}")
        print(f"check: decode logits max |diff| = {max_abs_diff(decoded(ours_prefilled), decoded(ref_prefilled)):.2e}")

        t = race({"ours": lambda: ours(x, logits_to_keep=1), "ref": lambda: ref(x, logits_to_keep=1)}, args.repeats)
        report(f"prefill {args.prefill} tokens", t["ours"], t["ref"])
        t = race({"ours": lambda: decoded(ours_prefilled), "ref": lambda: decoded(ref_prefilled)}, args.repeats)
        report(f"prefill {args.decode_prompt} + {s} decode steps", t["ours"], t["ref"])
        t = race({"ours": lambda: timed(ours_prefilled()[1]), "ref": lambda: timed(ref_prefilled()[1])}, args.repeats)
        report(f"{s} decode steps alone", t["ours"], t["ref"],
               f" ({t['ours'].median() / s * 1e3:.2f} vs {t['ref'].median() / s * 1e3:.2f} ms per token)")
        decode_compiled(ours, ours_prefilled, ref_prefilled, s, args.repeats)
        # both pay the same lm_head matmul per token (vocab x hidden)
        h = torch.randn(1, 1, cfg.hidden_size)
        head = measure(lambda: [ours.lm_head(h) for _ in range(s)], args.repeats).median()
        stack = (t["ours"].median() - head) / (t["ref"].median() - head)
        print(f"    of which the shared lm_head matmul (timed alone, its weights warm in the cache: a lower bound): "
              f"{head / s * 1e3:.2f} ms per token; the layer stack alone: ratio of medians {stack:.2f}x")

    train_step(ours, ref, cfg, args.train_batch, args.train_len, args.repeats)


def decode_compiled(ours, ours_prefilled, ref_prefilled, steps: int, repeats: int) -> None:
    """The decode steps again with ``ours.compile_decoding()`` (the layers' one-token steps through torch.compile):
    what the first step costs (compiling), and the steps against the reference's; then back to eager."""
    ours.compile_decoding()
    first = timed(lambda: ours_prefilled()[1]())
    t = race({"ours": lambda: timed(ours_prefilled()[1]), "ref": lambda: timed(ref_prefilled()[1])}, repeats)
    report(f"{steps} decode steps alone, ours with compile_decoding() (the first {steps} steps, compiling "
           f"included: {first.wall:.1f} s wall)", t["ours"], t["ref"],
           f" ({t['ours'].median() / steps * 1e3:.2f} vs {t['ref'].median() / steps * 1e3:.2f} ms per token)")
    ours.compile_decoding(False)


def train_step(ours, ref, cfg, batch: int, length: int, repeats: int) -> None:
    """Forward + backward of the training loss (with the load-balancing term), both in train mode."""
    ours.train()
    ref.train()
    # a new batch at every step, as in training, the same sequence of batches for every side: each expert's
    # share of the tokens, and so the shapes of its products, changes from batch to batch, and a kernel
    # library that builds a kernel per shape (oneDNN, in bfloat16) pays for that only with new batches
    streams = {}

    def step(model, kwargs, mixed=False):
        gen = streams.setdefault((id(model), mixed), torch.Generator().manual_seed(2))
        ids = torch.randint(0, cfg.vocab_size, (batch, length), generator=gen)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            loss = model(ids, labels=ids, output_router_logits=True, **kwargs).loss
        loss.backward()

    sides = {"ours": lambda: step(ours, {}), "ref": lambda: step(ref, {"use_cache": False}),
             "ours, mixed": lambda: step(ours, {}, mixed=True),
             "ref, mixed": lambda: step(ref, {"use_cache": False}, mixed=True)}
    sides["ours"]()
    sides["ref"]()
    grads = dict(ref.named_parameters())
    worst = max(max_abs_diff(p.grad, grads[n].grad) for n, p in ours.named_parameters()
                if n in grads and grads[n].grad is not None)
    # the vocabulary projection and the cross-entropy, forward and backward: the same products on both sides,
    # ours fused (linear_cross_entropy, what our model runs) and written plainly (what the reference runs)
    h = torch.randn(batch, length, cfg.hidden_size, requires_grad=True)
    ids = torch.randint(0, cfg.vocab_size, (batch, length), generator=torch.Generator().manual_seed(2))
    targets = torch.nn.functional.pad(ids[:, 1:], (0, 1), value=-100).flatten()

    def head_and_loss(fused: bool):
        ours.lm_head.weight.grad = h.grad = None
        if fused:
            loss = linear_cross_entropy(h, ours.lm_head.weight, targets)[0]
        else:
            loss = torch.nn.functional.cross_entropy(ours.lm_head(h).flatten(0, 1), targets, ignore_index=-100)
        loss.backward()

    sides["head + loss, fused"] = lambda: head_and_loss(True)
    sides["head + loss, plain"] = lambda: head_and_loss(False)
    t = race(sides, repeats)
    report(f"training step, batch {batch} x {length} tokens (gradients max |diff| {worst:.1e} on the parameters "
           f"both name alike)", t["ours"], t["ref"])
    fused, plain = t["head + loss, fused"], t["head + loss, plain"]
    print(f"    of which the vocabulary projection and the loss: ours (fused) {fused}; the reference's way (plain) "
          f"{plain}; the layers alone: ratio of medians "
          f"{(t['ours'].median() - fused.median()) / (t['ref'].median() - plain.median()):.2f}x")
    report("the same step in mixed precision (torch.autocast to bfloat16, float32 weights), both sides",
           t["ours, mixed"], t["ref, mixed"])
    report("ours in mixed precision against the reference's float32 step (what a reader gains by switching)",
           t["ours, mixed"], t["ref"])
    ours.eval()
    ref.eval()


if __name__ == "__main__":
    main()
