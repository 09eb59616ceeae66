"""Serve the book's trained model with vLLM and compare it with the book's own decoding (``make vllm``).

Two Python environments take part, each in its own process, talking through JSON files:

* the book's (``.venv``, this process): the prompts (the first tokens of held-out stories of the
  generated corpus), greedy decoding with :func:`qwen3next.generate` in bfloat16 and in float32, the
  book's MTP speculative decoding (:mod:`qwen3next.speculative`), and, where two outputs part, the
  float32 logits there (how close the two candidates were);
* vLLM's (``.venv-vllm``, ``--worker``): ``vllm.LLM`` in bfloat16 (its CPU DeltaNet kernel needs it),
  greedy, once plainly and once per number ``k`` of MTP drafts, with vLLM's own spec-decode counters.

Acceptance at draft position ``j`` is, on both sides, accepted ``j``-th drafts over drafted ``j``-th drafts
(a ``j``-th draft counts as accepted only when drafts ``1..j-1`` were too). vLLM always drafts ``k``
tokens, so its denominator is its number of verification steps; the book drafts no more than the tokens
still wanted, so near the end of an output it drafts fewer.

Writes a small summary to ``src/qwen3next/data/vllm_compare.json`` (chapter 12 reads it as package
data, so neither the book nor Colab needs vLLM) and the per-prompt details, the job and vLLM's log to
``artifacts/vllm_compare/``. Nothing is downloaded; vLLM talks to its engine process on 127.0.0.1 only.
Only the standard library is imported at the top, because the same file runs in both environments, and
vLLM's worker processes re-import it: everything that runs sits behind the ``__main__`` guard.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "src" / "qwen3next" / "data" / "tiny-qwen3-next"
SUMMARY = ROOT / "src" / "qwen3next" / "data" / "vllm_compare.json"  # package data: Colab has it too
DETAILS = ROOT / "artifacts" / "vllm_compare"
PROMPT_SEED = 20_000  # held out: training reads the stream of seed 0, validation the stories of seed 10_000
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
              "DO_NOT_TRACK": "1", "VLLM_HOST_IP": "127.0.0.1", "VLLM_CPU_KVCACHE_SPACE": "1"}
ENGINE_MARK = "=== vllm_compare: engine k="  # printed by the worker before each engine, to split its log


# ------------------------------------------------------------------ arithmetic (no model, no vLLM)
def new_tokens(row, prompt_len: int, eos: int) -> list[int]:
    """The generated part of one output row, up to and including the first end-of-text token."""
    new = [int(t) for t in row[prompt_len:]]
    return new[: new.index(eos) + 1] if eos in new else new


def agreement(ours: list[int], theirs: list[int]) -> dict:
    """How many leading tokens two outputs share, and where they part (None: neither does)."""
    same = 0
    while same < min(len(ours), len(theirs)) and ours[same] == theirs[same]:
        same += 1
    parted = same < min(len(ours), len(theirs))
    return {"identical_prefix": same, "first_divergence": same if parted else None,
            "tokens": max(len(ours), len(theirs)), "equal": ours == theirs}


def compare_outputs(name: str, ours: list[list[int]], theirs: list[list[int]]) -> dict:
    """One row of the greedy table: prompts whose outputs are equal, and shared leading tokens."""
    pairs = [agreement(o, t) for o, t in zip(ours, theirs, strict=True)]
    return {"pair": name, "prompts_equal": sum(p["equal"] for p in pairs), "prompts": len(pairs),
            "identical_tokens": sum(p["identical_prefix"] for p in pairs),
            "tokens": sum(p["tokens"] for p in pairs),
            "first_divergences": [p["first_divergence"] for p in pairs]}


def acceptance_per_position(accepted: list[int], drafted: list[int]) -> list[float | None]:
    """Accepted over drafted at each draft position (None where nothing was drafted)."""
    return [a / d if d else None for a, d in zip(accepted, drafted, strict=True)]


def speculation_row(engine: str, k: int, accepted: list[int], drafted: list[int], steps: int,
                    emitted: int, equal: dict) -> dict:
    """One row of the acceptance table; ``equal`` compares the speculative output with plain greedy."""
    return {"engine": engine, "k": k, "acceptance_per_pos": acceptance_per_position(accepted, drafted),
            "acceptance": sum(accepted) / sum(drafted) if sum(drafted) else None,
            "tokens_per_step": emitted / steps if steps else None, "verify_steps": steps,
            "equal_to_plain": equal["prompts_equal"], "prompts": equal["prompts"]}


def counter_delta(after: dict, before: dict) -> dict:
    """vLLM's counters are cumulative over an engine's life: what one ``generate`` call added."""
    delta = {}
    for name, value in after.items():
        if isinstance(value, list):
            old = before.get(name, [0] * len(value))
            delta[name] = [a - b for a, b in zip(value, old, strict=True)]
        else:
            delta[name] = value - before.get(name, 0)
    return delta


def cache_facts(log: str) -> dict:
    """What vLLM's log says it chose for each engine: the attention block size (tokens) that makes one
    attention page hold a DeltaNet state, and how much it padded the state's page to match."""
    facts = {}
    for part in log.split(ENGINE_MARK)[1:]:
        k = part.split(maxsplit=1)[0]
        block = re.search(r"Setting attention block size to (\d+) tokens", part)
        pad = re.search(r"Padding mamba page size by ([\d.]+)%", part)
        facts[f"k={k}"] = {"attention_block_size": int(block.group(1)) if block else None,
                           "state_page_padding_pct": float(pad.group(1)) if pad else None}
    return facts


# --------------------------------------------------------------------------------- the book's side
_MODELS: dict = {}


def book_model(model_dir: str, dtype: str, mtp: bool = False):
    """Loaded once per (dtype, head): decoding leaves the model unchanged."""
    if (dtype, mtp) not in _MODELS:
        import torch

        from qwen3next import Qwen3NextForCausalLM

        model = Qwen3NextForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype), mtp=mtp)
        _MODELS[dtype, mtp] = model.eval()
    return _MODELS[dtype, mtp]


def make_prompts(model_dir: str, n: int, length: int) -> dict:
    from qwen3next import Tokenizer
    from qwen3next.stories import END_OF_TEXT, generate_stories

    tok = Tokenizer.from_pretrained(model_dir)
    ids = [tok.encode(s.text)[:length] for s in generate_stories(n, seed=PROMPT_SEED)]
    return {"ids": ids, "text": [tok.decode(i) for i in ids], "eos": tok.token_to_id(END_OF_TEXT)}


def book_greedy(model_dir: str, prompts: list[list[int]], new: int, eos: int, dtype: str) -> list:
    import torch

    from qwen3next import generate

    model = book_model(model_dir, dtype)
    return [new_tokens(generate(model, torch.tensor([p]), new, eos_token_id=eos)[0], len(p), eos)
            for p in prompts]


def book_speculative(model_dir: str, prompts: list[list[int]], new: int, eos: int, k: int,
                     dtype: str) -> dict:
    """The book's MTP speculative decoding, one prompt at a time, its counters summed over prompts."""
    import torch

    from qwen3next.speculative import speculative_generate

    model = book_model(model_dir, dtype, mtp=True)
    out = {"tokens": [], "accepted": [0] * k, "drafted": [0] * k, "steps": 0, "emitted": 0}
    for p in prompts:
        ids, stats = speculative_generate(model, torch.tensor([p]), new, num_draft_tokens=k,
                                          eos_token_id=eos)
        out["tokens"].append(new_tokens(ids[0], len(p), eos))
        out["accepted"] = [a + b for a, b in zip(out["accepted"], stats.accepted_at, strict=True)]
        out["drafted"] = [a + b for a, b in zip(out["drafted"], stats.drafted_at, strict=True)]
        out["steps"] += stats.row_steps
        out["emitted"] += stats.emitted
    return out


def fp32_gaps(model_dir: str, prompts: list[list[int]], outputs: list[list[int]]) -> list[float]:
    """The float32 model's gap between its two best logits at every generated position: how close a
    greedy choice usually is, the scale to judge the gaps at the divergences by."""
    import torch

    model = book_model(model_dir, "float32")
    gaps = []
    with torch.no_grad():
        for p, o in zip(prompts, outputs, strict=True):
            logits = model(torch.tensor([p + o])).logits[0, len(p) - 1: len(p) + len(o) - 1]
            top = logits.float().topk(2, dim=-1).values
            gaps += (top[:, 0] - top[:, 1]).tolist()
    return gaps


def divergence(model_dir: str, pair: str, prompt: list[int], ours: list[int], theirs: list[int],
               at: int, gaps: list[float]) -> dict:
    """Where two outputs part: the two tokens chosen there and the float32 model's logits of them."""
    import torch

    from qwen3next import Tokenizer

    model, tok = book_model(model_dir, "float32"), Tokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ours[:at]])).logits[0, -1].float()
    a, b = ours[at], theirs[at]
    gap = abs(float(logits[a] - logits[b]))
    return {"pair": pair, "position": at, "tokens": [a, b], "words": [tok.decode([a]), tok.decode([b])],
            "fp32_gap": gap, "fp32_best": int(logits.argmax()),
            "share_of_positions_closer": sum(g < gap for g in gaps) / len(gaps)}


# ------------------------------------------------------------------------------------ vLLM's side
def spec_counters(llm) -> dict:
    """vLLM's cumulative spec-decode counters (``vllm:spec_decode_*``) of this engine."""
    counters = {}
    for m in llm.get_metrics():
        if m.name.startswith("vllm:spec_decode_"):
            value = list(m.values) if hasattr(m, "values") else m.value
            counters[m.name.removeprefix("vllm:spec_decode_")] = value
    return counters


def vllm_run(job: dict, k: int) -> dict:
    """One engine (with ``k`` MTP drafts, or none), all prompts in one batch, greedy."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    print(f"{ENGINE_MARK}{k}", flush=True)
    spec = {"method": "qwen3_next_mtp", "num_speculative_tokens": k} if k else None
    start = time.perf_counter()
    # Prefix caching off: vLLM's CPU build does not support it together with MTP.
    # enforce_eager skips torch.compile, about 20 s per engine here; --compiled turns it back on.
    llm = LLM(model=job["model"], dtype="bfloat16", max_model_len=job["max_model_len"], seed=0,
              enable_prefix_caching=False, max_num_seqs=len(job["prompts"]), disable_log_stats=False,
              enforce_eager=not job["compiled"], speculative_config=spec)
    started = time.perf_counter()
    before = spec_counters(llm)
    prompts = [TokensPrompt(prompt_token_ids=p) for p in job["prompts"]]
    results = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=job["new"]), use_tqdm=False)
    run = {"k": k, "tokens": [list(r.outputs[0].token_ids) for r in results],
           "startup_seconds": started - start, "generate_seconds": time.perf_counter() - started}
    if k:
        c = counter_delta(spec_counters(llm), before)
        run.update(accepted=c["num_accepted_tokens_per_pos"], drafted=[c["num_drafts"]] * k,
                   steps=c["num_drafts"], emitted=c["num_accepted_tokens"] + c["num_drafts"])
    if k == 0:  # vLLM's own tokenizer (transformers, from tokenizer.json) on the prompt texts
        tok = llm.get_tokenizer()
        run["tokenizer_ids"] = [tok.encode(t, add_special_tokens=False) for t in job["prompt_text"]]
    del llm  # the engine process goes with it before the next one starts
    return run


def vllm_worker(job: dict) -> dict:
    import torch
    import vllm

    runs = {f"k={k}": vllm_run(job, k) for k in [0, *job["ks"]]}
    return {"vllm_version": vllm.__version__, "torch_version": torch.__version__, "runs": runs}


# ----------------------------------------------------------------------------------- comparing
def summarize(job: dict, book: dict, spec: dict, vllm_out: dict, log: str, gaps: list[float]) -> dict:
    """The small JSON the chapter shows: the greedy table, the divergences, the acceptance table."""
    plain = vllm_out["runs"]["k=0"]["tokens"]
    pairs = {"book bf16 vs vLLM bf16": (book["bfloat16"], plain),
             "book fp32 vs vLLM bf16": (book["float32"], plain),
             "book fp32 vs book bf16": (book["float32"], book["bfloat16"])}
    greedy = [compare_outputs(name, ours, theirs) for name, (ours, theirs) in pairs.items()]
    divergences = [divergence(job["model"], row["pair"], job["prompts"][i], pairs[row["pair"]][0][i],
                              pairs[row["pair"]][1][i], at, gaps)
                   for row in greedy for i, at in enumerate(row["first_divergences"]) if at is not None]
    rows = []
    for k in job["ks"]:
        v = vllm_out["runs"][f"k={k}"]
        rows.append(speculation_row("vLLM bf16", k, v["accepted"], v["drafted"], v["steps"], v["emitted"],
                                    compare_outputs("", plain, v["tokens"])))
        for dtype, short in (("bfloat16", "bf16"), ("float32", "fp32")):
            b = spec[dtype, k]
            rows.append(speculation_row(f"book {short}", k, b["accepted"], b["drafted"], b["steps"],
                                        b["emitted"], compare_outputs("", book[dtype], b["tokens"])))
    runs = vllm_out["runs"].values()
    return {"settings": {"prompts": len(job["prompts"]), "prompt_tokens": job["prompt_tokens"],
                         "max_new_tokens": job["new"], "ks": job["ks"], "prompt_seed": PROMPT_SEED,
                         "vllm": vllm_out["vllm_version"], "vllm_torch": vllm_out["torch_version"],
                         "torch_compile": job["compiled"]},
            "greedy": greedy, "divergences": divergences,
            "fp32_top2_gap_median": sorted(gaps)[len(gaps) // 2], "speculation": rows,
            "tokenizer_agrees": vllm_out["runs"]["k=0"]["tokenizer_ids"] == job["prompts"],
            "vllm_cache": cache_facts(log),
            "seconds": {"vllm_startup": [round(r["startup_seconds"], 1) for r in runs],
                        "vllm_generate": [round(r["generate_seconds"], 2) for r in runs]}}


def fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def print_tables(s: dict) -> None:
    st = s["settings"]
    print(f"\nGreedy: {st['prompts']} prompts of {st['prompt_tokens']} tokens, up to "
          f"{st['max_new_tokens']} new (vLLM {st['vllm']}, bf16)")
    print(f"{'pair':<24} {'prompts equal':>13} {'shared tokens':>14}  first divergence")
    for r in s["greedy"]:
        firsts = " ".join(fmt(f, "d") for f in r["first_divergences"])
        print(f"{r['pair']:<24} {r['prompts_equal']:>7}/{r['prompts']:<5} "
              f"{r['identical_tokens']:>7}/{r['tokens']:<6}  {firsts}")
    for d in s["divergences"]:
        print(f"  {d['pair']}, token {d['position']}: {d['words']}, fp32 gap {d['fp32_gap']:.4f} "
              f"({d['share_of_positions_closer']:.0%} of positions closer)")
    print(f"median fp32 top-2 gap: {s['fp32_top2_gap_median']:.3f}; "
          f"vLLM's tokenizer agrees: {s['tokenizer_agrees']}")
    print("\nMTP: acceptance per draft position, tokens per verification step, outputs equal to greedy")
    for r in s["speculation"]:
        per = " ".join(fmt(a) for a in r["acceptance_per_pos"])
        print(f"{r['engine']:<10} k={r['k']}  {per:<18} {fmt(r['acceptance']):>6} "
              f"{fmt(r['tokens_per_step'], '.2f'):>5}  {r['equal_to_plain']}/{r['prompts']}")
    print(f"\nvLLM's cache: {s['vllm_cache']}\nseconds: {s['seconds']}")


# ------------------------------------------------------------------------------------- driving
def run_vllm(python: str, job_path: Path, log_path: Path) -> dict:
    """The vLLM worker in its own environment; its whole output goes to ``log_path``."""
    result_path = job_path.with_name("vllm_result.json")
    with open(log_path, "w") as log:
        proc = subprocess.run([python, str(Path(__file__).resolve()), "--worker", str(job_path),
                               str(result_path)], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, **WORKER_ENV}, cwd=ROOT, check=False)
    if proc.returncode:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"the vLLM worker ({python}) failed with exit code {proc.returncode}; "
                         f"log: {log_path}\n{tail}")
    return json.loads(result_path.read_text())


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(MODEL_DIR))
    parser.add_argument("--prompts", type=int, default=8, help="held-out stories to prompt with")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new", type=int, default=48, help="at most this many new tokens")
    parser.add_argument("--ks", default="1,2,3", help="numbers of MTP draft tokens")
    parser.add_argument("--compiled", action="store_true",
                        help="let vLLM torch.compile the model (about 3x the start-up time here; its bf16 "
                             "outputs part from the eager ones at near-ties, as the book's do)")
    parser.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--out", type=Path, default=SUMMARY)
    parser.add_argument("--details", type=Path, default=DETAILS)
    parser.add_argument("--worker", nargs=2, type=Path, help=argparse.SUPPRESS)  # JOB RESULT
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        job_path, result_path = args.worker
        result_path.write_text(json.dumps(vllm_worker(json.loads(job_path.read_text()))))
        return 0
    if not Path(args.vllm_python).exists():
        raise SystemExit(f"--vllm-python: {args.vllm_python} does not exist; `make vllm` builds it")
    start = time.perf_counter()
    args.details.mkdir(parents=True, exist_ok=True)
    ks = [int(k) for k in args.ks.split(",")]
    prompts = make_prompts(args.model, args.prompts, args.prompt_tokens)
    job = {"model": str(Path(args.model).resolve()), "prompts": prompts["ids"], "eos": prompts["eos"],
           "prompt_text": prompts["text"], "prompt_tokens": args.prompt_tokens, "new": args.new,
           "ks": ks, "compiled": args.compiled, "max_model_len": args.prompt_tokens + args.new + 16}
    job_path = args.details / "job.json"
    job_path.write_text(json.dumps(job))
    book = {dtype: book_greedy(args.model, prompts["ids"], args.new, prompts["eos"], dtype)
            for dtype in ("bfloat16", "float32")}
    spec = {(dtype, k): book_speculative(args.model, prompts["ids"], args.new, prompts["eos"], k, dtype)
            for dtype in ("bfloat16", "float32") for k in ks}
    print(f"book done; vLLM with {args.vllm_python}, one engine per k (log: {args.details}/vllm.log)",
          flush=True)
    vllm_out = run_vllm(args.vllm_python, job_path, args.details / "vllm.log")
    gaps = fp32_gaps(args.model, prompts["ids"], book["float32"])
    summary = summarize(job, book, spec, vllm_out, (args.details / "vllm.log").read_text(), gaps)
    summary["seconds"]["total"] = round(time.perf_counter() - start)
    details = {"job": job, "book": book, "vllm": vllm_out,
               "speculative": {f"{d}/k={k}": v for (d, k), v in spec.items()}}
    (args.details / "details.json").write_text(json.dumps(details) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print_tables(summary)
    print(f"\nwritten: {args.out} (details: {args.details})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
