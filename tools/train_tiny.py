"""Train the book's small Qwen3-Next and run the recall study (``make train``).

Writes into ``--out`` (default: the package's ``data/tiny-qwen3-next``): ``config.json``,
``model.safetensors`` (Hub layout, ``mtp.*`` included), ``tokenizer.json`` + ``tokenizer_config.json``,
``train_log.jsonl`` (one record per step) and ``recall_log.jsonl`` (one record per MQAR run). Everything is
seeded; nothing is downloaded. ``--quick`` is a smoke run of a few steps into a scratch directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import time
from pathlib import Path

import torch

from qwen3next import Qwen3NextForCausalLM
from qwen3next.mqar import MQARTask, RecallRun, train_recall
from qwen3next.stories import END_OF_TEXT, train_story_tokenizer
from qwen3next.train import JsonlLog, TrainConfig, init_for_training, sample, save_pretrained, story_model_config, train

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "qwen3next" / "data" / "tiny-qwen3-next"

# The recall study: one mixer per run at equal state size, plus the ablations (no short conv, the
# reference's initialisation), all on the same task, steps and learning rate; then, with more pairs
# than a 32-dimensional key can keep apart additively, linear attention against the delta rule.
RECALL_STUDIES = {
    "recall": (MQARTask(num_pairs=8, num_keys=32, num_values=32), [
        RecallRun("attention"),
        RecallRun("linear_attention"),
        RecallRun("deltanet"),
        RecallRun("gated_deltanet"),
        RecallRun("hybrid"),
        RecallRun("deltanet", short_conv=False),
        RecallRun("gated_deltanet", short_conv=False),
        RecallRun("gated_deltanet", init="reference"),
    ]),
    "capacity": (MQARTask(num_pairs=32, num_keys=32, num_values=32), [
        RecallRun("linear_attention"),
        RecallRun("deltanet"),
    ]),
}


def train_model(out: Path, cfg: TrainConfig, progress: bool) -> dict:
    tok = train_story_tokenizer(num_merges=2000)  # the trainer stops once every word is one token
    eot = tok.token_to_id(END_OF_TEXT)
    config = story_model_config(vocab_size=-(-len(tok) // 64) * 64, eos_token_id=eot)  # rows: a multiple of 64
    torch.manual_seed(cfg.seed)
    model = Qwen3NextForCausalLM(config, mtp=True)
    init_for_training(model, generator=torch.Generator().manual_seed(cfg.seed))
    history = train(model, tok, cfg, log_path=out / "train_log.jsonl", progress=progress)
    save_pretrained(model, out, tok, dtype=torch.float32)
    last = history[-1]
    return {"parameters": model.num_parameters(), "val_lm": last["val_lm"], "val_mtp": last.get("val_mtp"),
            "floor": last["floor"], "sample": sample(model, tok, cfg.sample_prompt)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--recall-steps", type=int, default=RecallRun.steps)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    parser.add_argument("--skip-model", action="store_true", help="only the recall study")
    parser.add_argument("--skip-recall", action="store_true", help="only the model")
    # the shipped recall_log.jsonl is the "recall" study; "capacity" (32 pairs) is extra, about 7 minutes
    parser.add_argument("--studies", default="recall",
                        help=f"which recall studies to run, of {', '.join(RECALL_STUDIES)}")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="bfloat16 products under torch.autocast, float32 weights (faster on CPUs with bfloat16 "
                             "instructions; the shipped model was trained in float32)")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything, into --out")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.recall_steps = 4, 4
    args.out.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    summary = {"threads": args.threads, "load_average_at_start": os.getloadavg()}
    if not args.skip_model:
        # chunk 32: the shipped model's run (its log's config); the layer's own choice would be 16 here
        cfg = TrainConfig(steps=args.steps, eval_every=min(100, args.steps), chunk_size=32,
                          mixed_precision=args.mixed_precision)
        summary["model"] = train_model(args.out, cfg, progress=not args.no_progress)
        summary["model_seconds"] = time.perf_counter() - start
        print(json.dumps(summary["model"], indent=2))
    if not args.skip_recall:
        log = JsonlLog(args.out / "recall_log.jsonl")
        for study in args.studies.split(","):
            task, runs = RECALL_STUDIES[study]
            for run in runs:
                result = train_recall(dataclasses.replace(run, steps=args.recall_steps), task, log=log)
                print(f"{study}: {result['name']:<40} accuracy {result['accuracy']:.3f} "
                      f"({result['seconds']:.0f} s)", flush=True)
    summary.update(seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu_start,
                   peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   load_average_at_end=os.getloadavg())
    (args.out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"done in {summary['seconds'] / 60:.1f} min (CPU {summary['cpu_seconds'] / 60:.1f} min), "
          f"peak memory {summary['peak_rss_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
