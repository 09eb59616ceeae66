"""Encode 1 MB of mixed text with our tokenizer and with the Rust ``tokenizers``, one thread each.

The text is built deterministically (seeded shuffle of paragraphs) from fixed local text: the book's
corpus snapshot shipped with the package (English prose, Markdown, Python) and the Chinese / Japanese /
Arabic / Russian / emoji paragraphs written here. Paragraphs repeat (about 90 KB of distinct prose and
code), so the word cache helps; the "cold" time includes filling it.
Prints times (median [range], ``benchmarks/timing.py``), throughput and the ratio ours / reference;
checks the ids agree. The Rust side's threads come from the environment as well (``make bench`` sets
``RAYON_NUM_THREADS=1`` and ``TOKENIZERS_PARALLELISM=false``):

    OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false .venv/bin/python benchmarks/bench_tokenizer.py
"""

from __future__ import annotations

import os
import random
import time

import tokenizers
from timing import measure, ratio, setup

from qwen3next.bpe_trainer import load_corpus
from qwen3next.tokenizer import Tokenizer
from qwen3next.tokenizer_files import qwen3_files_dir

MULTILINGUAL = [
    "通义千问是一个大型语言模型，能够回答问题、创作文字，还能表达观点、撰写代码。",
    "混合注意力把线性注意力和门控注意力结合起来，在长上下文中既快又准。",
    "今天天气很好，我们去公园散步吧！你觉得怎么样？😊",
    "稀疏专家混合模型每个词元只激活十个专家，总参数八百亿，激活参数约三十亿。",
    "東京は日本の首都です。カタカナとひらがなと漢字を混ぜて書きます。",
    "مرحبا بالعالم! هذا نموذج لغوي كبير يدعم العديد من اللغات.",
    "Привет, мир! Это большая языковая модель с гибридным вниманием.",
    "🚀🔥 Emoji run: 👩‍👩‍👧‍👦 👍🏽 🇯🇵 ❤️ 🧑‍💻 🤖✨ — and back to text. 🎉🎉🎉",
    "한국어도 잘 처리합니다. 띄어쓰기가 있는 언어입니다.",
    "Ελληνικά κείμενα με τόνους: άλφα, βήτα, γάμμα.",
]


def mixed_text(n_bytes: int = 1 << 20, seed: int = 0) -> str:
    """About ``n_bytes`` of text: paragraphs of prose, code and other scripts in a seeded order."""
    paragraphs = []
    for text in load_corpus().values():
        paragraphs += [p for p in text.split("\n\n") if p.strip()]
    rng = random.Random(seed)
    out, size = [], 0
    while size < n_bytes:
        p = rng.choice(MULTILINGUAL) if rng.random() < 0.3 else rng.choice(paragraphs)
        out.append(p)
        size += len(p.encode("utf-8")) + 2
    return "\n\n".join(out)


def main() -> None:
    setup()
    print(f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset (all cores)')}")
    text = mixed_text()
    mb = len(text.encode("utf-8")) / 1e6
    ref = tokenizers.Tokenizer.from_file(str(qwen3_files_dir() / "tokenizer.json"))

    t0 = time.perf_counter()
    tok = Tokenizer.qwen3()
    load = time.perf_counter() - t0

    t0 = time.process_time()
    ids = tok.encode(text)  # cold: empty word cache (a single run: the cache is filled after it)
    cold = time.process_time() - t0
    warm = measure(lambda: tok.encode(text), 3, warmup=0)
    ref_time = measure(lambda: ref.encode(text), 3)
    ref_ids = ref.encode(text).ids
    assert ids == ref_ids, "ids differ from the reference"

    # the reference is slow on one 1 MB string (offset bookkeeping); per paragraph it is faster
    paragraphs = text.split("\n\n")
    ref_para = measure(lambda: ref.encode_batch(paragraphs), 3)
    tok_para = measure(lambda: [tok.encode(p) for p in paragraphs], 3)

    # no repetition at all: the corpus once, each run on a fresh tokenizer (empty cache)
    once = "\n\n".join(load_corpus().values()) + "\n\n" + "\n\n".join(MULTILINGUAL)
    once_mb = len(once.encode("utf-8")) / 1e6
    cold_once = measure(lambda: Tokenizer.qwen3().encode(once), 3).median() - measure(Tokenizer.qwen3, 3).median()
    ref_once = measure(lambda: ref.encode(once), 3)

    dec = measure(lambda: tok.decode(ids), 3)
    ref_dec = measure(lambda: ref.decode(ids, skip_special_tokens=False), 3)
    assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False)

    w, r = warm.median(), ref_time.median()
    print(f"text: {mb:.2f} MB, {len(text):,} characters, {len(ids):,} tokens (ids equal to tokenizers: True)")
    print(f"load Tokenizer.qwen3(): {load:.2f} s")
    print(f"encode  ours cold {cold:.3f} s ({mb / cold:.2f} MB/s) | ours warm {warm} ({mb / w:.2f} MB/s) "
          f"| tokenizers {ref_time} ({mb / r:.2f} MB/s)")
    print(f"encode ratio ours/tokenizers: cold {cold / r:.2f}x, warm {ratio(warm, ref_time)} (target < 3x)")
    print(f"per paragraph ({len(paragraphs):,} strings): ours warm {tok_para} | tokenizers encode_batch "
          f"{ref_para} | ratio {ratio(tok_para, ref_para)}")
    print(f"distinct text ({once_mb:.2f} MB, empty cache): ours {cold_once:.3f} s | tokenizers {ref_once} | "
          f"ratio of medians {cold_once / ref_once.median():.2f}x")
    print(f"decode  ours {dec} | tokenizers {ref_dec} | ratio {ratio(dec, ref_dec)}")


if __name__ == "__main__":
    main()
