"""Downloading a checkpoint from the Hugging Face Hub, for readers with internet and disk to spare.

A thin wrapper over ``huggingface_hub.snapshot_download``: it shows progress bars, resumes an
interrupted download where it stopped, and skips files already in the local cache. By default it
fetches only what this package reads (config, safetensors shards and index, tokenizer files), never
pickle files. Nothing in the tests or the chapters calls it: the real checkpoint is 163 GB (bf16) or
about 82 GB (FP8).

Mirrors the download step of ``transformers``' ``from_pretrained``; leaves out authentication
prompts (pass ``token`` through ``huggingface-cli login`` or ``HF_TOKEN``) and uploading.
"""

from __future__ import annotations

from pathlib import Path

REPOS = {
    "instruct": "Qwen/Qwen3-Next-80B-A3B-Instruct",
    "thinking": "Qwen/Qwen3-Next-80B-A3B-Thinking",
    "instruct-fp8": "Qwen/Qwen3-Next-80B-A3B-Instruct-FP8",
    "thinking-fp8": "Qwen/Qwen3-Next-80B-A3B-Thinking-FP8",
}

# What the loader and the tokenizer read; "*.safetensors" covers every shard.
DEFAULT_PATTERNS = [
    "config.json", "generation_config.json", "model.safetensors.index.json", "*.safetensors",
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
]


def download(repo_id: str, revision: str | None = None, allow_patterns: list[str] | str | None = None,
             local_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """Download (or resume) a checkpoint; returns the local directory to pass to ``from_pretrained``.

    ``repo_id`` is a Hub id such as ``"Qwen/Qwen3-Next-80B-A3B-Instruct"`` or one of the short names
    of ``REPOS``; ``revision`` a branch, tag or commit (pin a commit for reproducible results);
    ``allow_patterns`` the glob patterns of the files to fetch (default ``DEFAULT_PATTERNS``).
    """
    from huggingface_hub import snapshot_download

    repo_id = REPOS.get(repo_id, repo_id)
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ValueError(f"repo_id: expected 'owner/name' (e.g. {REPOS['instruct']!r}) or one of "
                         f"{sorted(REPOS)}, found {repo_id!r}")
    patterns = DEFAULT_PATTERNS if allow_patterns is None else allow_patterns
    path = snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=patterns,
                             local_dir=local_dir, cache_dir=cache_dir)
    return Path(path)
