"""Benchmark: speculative decoding with the MTP head against plain greedy decoding, one CPU thread.

The model is the book's trained small Qwen3-Next (``qwen3next.tiny_pretrained_path()``, chapter 10) when it
is there; otherwise a random model of the same config, and every line says RANDOM (its head agrees with
the trunk by chance only, so acceptance is near zero and the "speed-up" is the cost of drafting). Prompts:
the first tokens of held-out stories of the generated corpus (random ids for the random model).

For each number of drafts k (1..4) and each rollback (``replay``, ``checkpoints``), in one process, the
runs taking turns with plain ``generate`` on the same prompts:

1. the speed-up: plain time / speculative time, per repeat; median and spread (min..max) over repeats;
2. acceptance per draft position and tokens per verification step (from ``SpeculativeStats``);
3. the time of one round split into drafting, verification and rollback (CPU time per round), so the
   rollback strategies can be compared;
4. the speed-up the acceptance predicts: ``tau * t_plain / t_round`` (``tau`` tokens per round, ``t_plain``
   the plain time per token, ``t_round`` the measured draft + verify + rollback time of a round), and the
   ideal one, ``tau / (1 + k c)`` with ``c`` = one draft step / one plain step (verification as cheap as
   a plain step, free rollback: the textbook formula's assumptions);
5. controls, wrong wirings of the head (k = 2, replay): its two inputs swapped and its token not
   shifted collapse acceptance; the pre-norm hidden state barely moves it, because the head normalises
   its input again and the final norm's gain is nearly uniform (chapter 11). The output stays exact.

Times come from ``benchmarks/timing.py`` (CPU time, sides taking turns, median [min-max] of the rounds;
speed-ups are the round-by-round ratios plain / speculative).
Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_speculative.py [--repeats 5] [--new 64]``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from timing import race, ratio, setup  # noqa: E402

import qwen3next  # noqa: E402
from qwen3next import Qwen3NextForCausalLM, generate  # noqa: E402
from qwen3next.mtp import mtp_forward, new_mtp_cache  # noqa: E402
from qwen3next.speculative import (  # noqa: E402
    PreNormHidden,
    SpeculativeDecoder,
    SwappedConcat,
    UnshiftedTokens,
    speculative_generate,
)


def load_model():
    """The trained model and story prompts' tokenizer, or a random stand-in (``label`` says which)."""
    try:
        path = qwen3next.tiny_pretrained_path()
    except FileNotFoundError:
        from qwen3next.train import init_for_training, story_model_config

        torch.manual_seed(0)
        model = Qwen3NextForCausalLM(story_model_config(vocab_size=2112), mtp=True).eval()
        init_for_training(model, generator=torch.Generator().manual_seed(0))
        return model, None, "RANDOM model (untrained: no trained checkpoint in the package)"
    return (Qwen3NextForCausalLM.from_pretrained(path, mtp=True).eval(), qwen3next.Tokenizer.from_pretrained(path),
            f"trained model {path.name}")


def prompts(tokenizer, vocab_size: int, n: int, length: int) -> list[torch.Tensor]:
    if tokenizer is None:
        g = torch.Generator().manual_seed(1)
        return [torch.randint(0, vocab_size, (1, length), generator=g) for _ in range(n)]
    from qwen3next.stories import generate_stories

    stories = generate_stories(n, seed=987_654)  # not the training stream's seed
    return [torch.tensor([tokenizer.encode(s.text)[:length]]) for s in stories]


def run_plain(model, batch, new):
    return [generate(model, ids, new) for ids in batch]


def run_spec(model, batch, new, k, rollback, decoder=SpeculativeDecoder):
    outs, stats = [], []
    for ids in batch:
        if decoder is SpeculativeDecoder:
            out, s = speculative_generate(model, ids, new, num_draft_tokens=k, rollback=rollback)
        else:
            d = decoder(model, ids, new, num_draft_tokens=k, rollback=rollback)
            while not d.done:
                d.step()
            out, s = d.output(ids), d.stats
        outs.append(out)
        stats.append(s)
    return outs, stats


def pooled(stats):
    """Acceptance per position, tokens per round and seconds per phase, over several runs' stats."""
    k = stats[0].num_draft_tokens
    drafted = [sum(s.drafted_at[j] for s in stats) for j in range(k)]
    accepted = [sum(s.accepted_at[j] for s in stats) for j in range(k)]
    rounds = sum(s.verify_steps for s in stats)
    return {
        "per_position": [a / d if d else float("nan") for a, d in zip(accepted, drafted, strict=True)],
        "tau": sum(s.emitted for s in stats) / sum(s.row_steps for s in stats),
        "rounds": rounds,
        "phase": {p: sum(s.seconds[p] for s in stats) / rounds for p in ("draft", "verify", "rollback")},
    }


def cpu_time(fn):
    t0 = time.process_time()
    result = fn()
    return time.process_time() - t0, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=24)
    parser.add_argument("--new", type=int, default=64)
    args = parser.parse_args()
    setup()
    model, tokenizer, label = load_model()
    batch = prompts(tokenizer, model.config.vocab_size, args.prompts, args.prompt_len)
    n_tokens = args.prompts * args.new
    print(f"{label}; {model.num_parameters() / 1e6:.2f}M parameters with the head")
    print(f"{args.prompts} prompts of {args.prompt_len} tokens, {args.new} new tokens each, "
          f"{args.repeats} rounds, sides taking turns")

    configs = [(k, r) for k in (1, 2, 3, 4) for r in ("replay", "checkpoints")]
    stats = {c: [] for c in configs}

    def spec_side(c):
        def run():
            stats[c].extend(run_spec(model, batch, args.new, *c)[1])
        return run

    with torch.no_grad():
        plain_out = run_plain(model, batch, args.new)  # the tokens to compare with
        for c in configs:
            outs, _ = run_spec(model, batch, args.new, *c)
            assert all(torch.equal(a, b) for a, b in zip(outs, plain_out, strict=True)), c
        sides = {"plain": lambda: run_plain(model, batch, args.new)}
        sides.update({c: spec_side(c) for c in configs})
        times = race(sides, repeats=args.repeats)
        t_token = times["plain"].median() / n_tokens

        # one draft step of the head against one plain decoding step of the trunk
        cache, head_cache = model.new_cache(1), new_mtp_cache()
        hidden = model.model(batch[0], cache=cache)[0]
        mtp_forward(model, batch[0][:, 1:], hidden[:, :-1], cache=head_cache)
        one, h = batch[0][:, -1:], hidden[:, -1:]
        t_draft = min(cpu_time(lambda: mtp_forward(model, one, h, cache=head_cache))[0] for _ in range(50))
        t_step = min(cpu_time(lambda: model(one, cache=cache, logits_to_keep=1))[0] for _ in range(50))
        c_ratio = t_draft / t_step

    print(f"\nplain greedy: {1e3 * t_token:.2f} ms per token (median); one head step / one trunk step "
          f"c = {c_ratio:.2f}")
    print(f"plain greedy: {times['plain']} per run")
    print("\n k  rollback     speed-up: median [min-max]  tokens/round  accepted by position")
    for k, r in configs:
        p = pooled(stats[(k, r)])
        per = " ".join(f"{a:.2f}" for a in p["per_position"])
        print(f" {k}  {r:<11}  {str(ratio(times['plain'], times[(k, r)])):<26}  {p['tau']:5.2f}      {per}")
    print("\n k  rollback     ms per round: draft  verify  rollback   expected speed-up: from the")
    print("                                                          measured round   ideal formula")
    for k, r in configs:
        p = pooled(stats[(k, r)])
        ph = p["phase"]
        t_round = sum(ph.values())
        expected = p["tau"] * t_token / t_round
        ideal = p["tau"] / (1 + k * c_ratio)
        print(f" {k}  {r:<11}  {1e3 * ph['draft']:17.2f}  {1e3 * ph['verify']:6.2f}  {1e3 * ph['rollback']:8.2f}"
              f"   {expected:14.2f}   {ideal:13.2f}")

    print("\ncontrols (k = 2, replay): acceptance of draft 1 and 2, tokens per round")
    with torch.no_grad():
        for name, decoder in (("engines' wiring", SpeculativeDecoder), ("pre-norm hidden", PreNormHidden),
                              ("swapped [h, e]", SwappedConcat), ("token not shifted", UnshiftedTokens)):
            outs, s = run_spec(model, batch, args.new, 2, "replay", decoder)
            assert all(torch.equal(a, b) for a, b in zip(outs, plain_out, strict=True)), name  # still exact
            p = pooled(s)
            print(f"  {name:<18} {p['per_position'][0]:.2f} {p['per_position'][1]:.2f}   {p['tau']:.2f}")
    if tokenizer is None:
        print("\n(RANDOM model: acceptance near 0 is expected; rerun once the trained model is in the package)")


if __name__ == "__main__":
    main()
