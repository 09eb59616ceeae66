"""Reading JSON files (config, index, safetensors headers) so that every failure names the file.

Python's ``json`` raises ``UnicodeDecodeError`` on bytes that are not UTF-8, ``RecursionError`` on deeply
nested input and accepts things a Rust reader refuses (``NaN``, lone surrogates, duplicate keys). The
functions here turn each of those into the caller's own error type with the file name in front.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["parse_json", "read_json_file"]


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice")
        out[k] = v
    return out


def _check_tree(value: Any, max_depth: int, depth: int = 0) -> None:
    """Strict JSON: every string valid UTF-8 (no lone surrogate), every number finite, bounded nesting."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"the string {value[:40]!r} holds a lone surrogate escape") from None
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"the number {value} is out of range")
    elif isinstance(value, (dict, list)):
        if depth >= max_depth:
            raise RecursionError
        for k, v in (value.items() if isinstance(value, dict) else enumerate(value)):
            _check_tree(k, max_depth, depth + 1)
            _check_tree(v, max_depth, depth + 1)


def parse_json(raw: bytes, where: str, error: type[Exception], *, strict: bool = False,
               max_depth: int = 64) -> Any:
    """Parse UTF-8 JSON bytes; any failure raises ``error`` with ``where`` (a file name) in front.

    ``strict`` (machine-written files: safetensors headers, the shard index) also refuses what the Rust
    ``serde_json`` reader refuses (``NaN``/``Infinity``, lone surrogates, numbers out of range), duplicate
    keys, and nesting deeper than ``max_depth``.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{where}: not UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start})") from None
    hooks = dict(parse_constant=_no_constants, object_pairs_hook=_unique_keys) if strict else {}
    try:
        value = json.loads(text, **hooks)
        if strict:
            _check_tree(value, max_depth)
    except RecursionError:
        raise error(f"{where}: nested too deeply (a file of this kind is a few levels deep)") from None
    except ValueError as err:  # json.JSONDecodeError, or a strict check
        raise error(f"{where}: not valid JSON ({err})") from None
    return value


def read_json_file(path: Path, error: type[Exception], *, where: str | None = None, strict: bool = False) -> Any:
    """Read and parse a JSON file (see :func:`parse_json`); an unreadable file raises ``error`` too."""
    where = where or str(path)
    try:
        raw = Path(path).read_bytes()
    except IsADirectoryError:
        raise error(f"{where}: a directory, expected a JSON file") from None
    except OSError as err:
        raise error(f"{where}: cannot be read ({err.strerror})") from None
    return parse_json(raw, where, error, strict=strict)
