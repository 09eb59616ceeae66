"""Write the small corpus chapter 02 trains BPE on: the book's own prose and code, and package source.

Usage::

    python -m tools.make_corpus          # rewrites src/qwen3next/data/tokenizer_corpus.json
    python -m tools.make_corpus --check  # exits 1 if the file is not what this script writes now

The corpus is a snapshot (the package ships it, ``qwen3next.bpe_trainer.load_corpus()`` reads it as
``{name: text}``): the first chapters as Markdown (their text cells, and their code cells as fenced
Python, no outputs) and the package modules those chapters build. Every name is the path of a file in
this repository. Chapter 02 holds out ``HELD_OUT`` to measure compression on unseen text, so it must be
one of the documents. Refresh the snapshot when those files changed a lot; chapter 02's outputs change
with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "qwen3next" / "data" / "tokenizer_corpus.json"
LIMIT = 300_000  # bytes of text: BPE training in chapter 02 must stay a matter of seconds
CHAPTERS = ["01_overview", "02_tokenizer", "03_norms_and_rope", "04_gated_attention", "05_delta_rule"]
MODULES = ["config", "accounting", "tokenizer", "bpe", "pretokenizer", "bpe_trainer", "norms", "rope",
           "attention", "delta_rule"]
HELD_OUT = "src/qwen3next/delta_rule.py"


def notebook_as_markdown(path: Path) -> str:
    """A chapter's text cells as they are and its code cells as fenced Python, without outputs."""
    nb = json.loads(path.read_text())
    parts = []
    for cell in nb["cells"]:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "markdown":
            parts.append(source.strip())
        elif cell["cell_type"] == "code":
            parts.append(f"```python\n{source.strip()}\n```")
    return "\n\n".join(parts) + "\n"


def documents(repo: Path = REPO) -> list[tuple[str, str]]:
    docs = []
    for name in CHAPTERS:
        path = repo / "chapters" / f"{name}.ipynb"
        docs.append((path.relative_to(repo).as_posix(), notebook_as_markdown(path)))
    for name in MODULES:
        path = repo / "src" / "qwen3next" / f"{name}.py"
        docs.append((path.relative_to(repo).as_posix(), path.read_text()))
    size = sum(len(text.encode("utf-8")) for _, text in docs)
    if size > LIMIT:
        raise SystemExit(f"make_corpus: the corpus would be {size:,} bytes, over the {LIMIT:,} limit: "
                         "take a chapter or a module out of CHAPTERS / MODULES")
    if HELD_OUT not in dict(docs):
        raise SystemExit(f"make_corpus: chapter 02 holds out {HELD_OUT}, which is not in the corpus")
    return docs


def corpus(repo: Path = REPO) -> dict:
    return {
        "description": "The corpus chapter 02 trains BPE on: the prose and code of the book's first chapters "
                       "and the package modules they build, written by tools/make_corpus.py. Each entry is "
                       "[path in the repository, text].",
        "license": "Apache-2.0 (the book's own files)",
        "documents": [list(d) for d in documents(repo)],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the file instead of writing it")
    args = ap.parse_args(argv)
    text = json.dumps(corpus(), ensure_ascii=False, indent=0) + "\n"
    if args.check:
        same = OUT.is_file() and OUT.read_text() == text
        print(f"{OUT.relative_to(REPO)} is {'up to date' if same else 'out of date: run python -m tools.make_corpus'}")
        return 0 if same else 1
    OUT.write_text(text)
    docs = corpus()["documents"]
    print(f"wrote {OUT.relative_to(REPO)}: {len(docs)} documents, "
          f"{sum(len(t.encode()) for _, t in docs):,} bytes of text")
    return 0


if __name__ == "__main__":
    sys.exit(main())
