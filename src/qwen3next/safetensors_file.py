"""The safetensors format read by hand: an 8-byte header length, a JSON header, then the raw bytes.

What it implements
    * :func:`read_header`: parse a ``.safetensors`` file's header without reading any tensor data, with
      every check the ``safetensors`` library makes and a few more, so that a file it would refuse is
      refused here first, with the file and the tensor named: a length field past the end, a header that
      is not UTF-8 JSON or nests too deeply, entries of the wrong type, ``__metadata__`` that is not an
      object of strings, byte ranges that overlap, leave a gap, or stop before the end of the file.
    * :func:`read_tensor`: one tensor's bytes read straight into a new tensor (``os.preadv``, no memory map).

Mirrors the format specification and ``Metadata::validate`` of the ``safetensors`` library
(``safetensors/README.md``, ``safetensors/src/tensor.rs``). Leaves out writing (``safetensors.torch.save_file``
does that) and dtypes a Qwen3-Next checkpoint never holds (sub-byte floats, unsigned 16-64 bit, complex).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from .jsonfile import parse_json

MAX_HEADER_BYTES = 100_000_000  # the limit the safetensors library itself enforces
MAX_HEADER_DEPTH = 64  # a header nests 3 levels; the library's JSON reader stops at 128
_USIZE = 2**64  # the library reads shapes and offsets as 64-bit unsigned integers

# safetensors dtype codes -> (torch dtype, bytes per element)
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2), "F8_E4M3": (torch.float8_e4m3fn, 1), "F8_E5M2": (torch.float8_e5m2, 1),
    "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
}
FLOAT_CODES = ("F64", "F32", "F16", "BF16")
FP8_CODES = ("F8_E4M3",)
CODE_OF_DTYPE = {dt: code for code, (dt, _) in DTYPES.items()}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file, tensor or field at fault."""


class MissingFileError(CheckpointError, FileNotFoundError):
    """A file the checkpoint needs (config.json, a shard) is not there."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype code, shape and absolute byte range in the file."""

    name: str
    file: Path
    dtype: str  # safetensors code, e.g. "BF16"
    shape: tuple[int, ...]
    start: int  # absolute offset of the first byte in the file
    end: int  # one past the last byte

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype][0]


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse a ``.safetensors`` file's header without reading any tensor data.

    Layout: ``u64 N`` (little endian) | ``N`` bytes of JSON | data. The JSON maps each tensor name to
    ``{"dtype", "shape", "data_offsets": [begin, end]}`` with offsets relative to the start of the data;
    an optional ``"__metadata__"`` holds string pairs. Returns ``(tensors, metadata)``; every check is in
    :func:`_checked_header` and raises :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    header, data_start, data_size = _checked_header(path)
    metadata = header.pop("__metadata__", None) or {}
    tensors = {name: TensorInfo(name, path, e["dtype"], tuple(e["shape"]), data_start + e["data_offsets"][0],
                                data_start + e["data_offsets"][1]) for name, e in header.items()}
    return tensors, metadata


def _checked_header(path: Path) -> tuple[dict, int, int]:
    """Read and check the header: ``(parsed JSON, where the data starts, how many data bytes follow)``."""
    if not path.is_file():
        raise MissingFileError(f"{path}: no such safetensors file")
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path.name}: {size} bytes is too short for a "
                                  f"safetensors file (expected an 8-byte header "
                                  f"length first)")
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path.name}: corrupt header: its length field "
                                  f"says {n:,} bytes (at most {MAX_HEADER_BYTES:,} "
                                  f"expected)")
        if 8 + n > size:
            raise CheckpointError(f"{path.name}: truncated or corrupt header: "
                                  f"it should span {n:,} bytes but the file has only "
                                  f"{size - 8:,} after the length field")
        raw = f.read(n)
    header = parse_json(raw, f"{path.name}: corrupt header", CheckpointError, strict=True, max_depth=MAX_HEADER_DEPTH)
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name}: corrupt header: expected a JSON object, found {type(header).__name__}")
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise CheckpointError(f"{path.name}: corrupt header: __metadata__ should be an object of strings, "
                              f"found {metadata!r}")
    data_size = size - 8 - n
    for name, entry in header.items():
        if name != "__metadata__":
            _check_entry(path, name, entry, data_size)
    _check_tiling(path, {k: v["data_offsets"] for k, v in header.items() if k != "__metadata__"}, data_size)
    return header, 8 + n, data_size


def _is_usize(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _USIZE


def _check_entry(path: Path, name: str, entry, data_size: int) -> None:
    where = f"{path.name}: tensor {name!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"{where}: corrupt header entry, expected dtype, shape and data_offsets, found {entry!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CheckpointError(f"{where}: unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    if not isinstance(shape, list) or not all(_is_usize(d) for d in shape):
        raise CheckpointError(f"{where}: corrupt shape {shape!r}, expected a list of non-negative integers")
    if not all(_is_usize(math.prod(shape[:i + 1])) for i in range(len(shape))):  # the library multiplies in u64
        raise CheckpointError(f"{where}: corrupt shape {shape!r}: its element count overflows 64 bits")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_usize(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise CheckpointError(f"{where}: corrupt data_offsets {offsets!r}, expected [begin, end] with begin <= end")
    expected = math.prod(shape) * DTYPES[dtype][1]
    if offsets[1] - offsets[0] != expected:
        raise CheckpointError(f"{where}: data_offsets span {offsets[1] - offsets[0]:,} bytes but "
                              f"{dtype} {shape} needs {expected:,}")
    if offsets[1] > data_size:
        raise CheckpointError(f"{path.name}: truncated: tensor {name!r} ends at data byte {offsets[1]:,} "
                              f"but the file holds only {data_size:,} data bytes")


def _check_tiling(path: Path, offsets: dict[str, list[int]], data_size: int) -> None:
    """The tensors must cover the data bytes exactly, in order: no overlap, no gap, nothing after the last."""
    at, last = 0, None
    for name, (begin, end) in sorted(offsets.items(), key=lambda kv: tuple(kv[1])):
        if begin < at:
            raise CheckpointError(f"{path.name}: corrupt header: tensors {last!r} and {name!r} overlap "
                                  f"(data bytes {begin:,}..{at:,})")
        if begin > at:
            after = f"after tensor {last!r}" if last else "before the first tensor"
            raise CheckpointError(f"{path.name}: corrupt header: a gap of {begin - at:,} unused bytes {after} "
                                  f"(data bytes {at:,}..{begin:,}); safetensors files have none")
        at, last = end, name
    if at != data_size:
        raise CheckpointError(f"{path.name}: corrupt file: {data_size - at:,} bytes after the last tensor "
                              f"(the tensors end at data byte {at:,} of {data_size:,})")


def read_tensor(info: TensorInfo, fd: int | None = None) -> torch.Tensor:
    """Read one tensor's bytes straight into a new tensor with ``os.preadv`` (no memory map).

    Reading into fresh memory keeps the resident size honest: pages of a memory-mapped file that
    were touched count as resident until the map is closed, a plain read leaves them in the page cache.
    """
    out = torch.empty(info.nbytes, dtype=torch.uint8)
    view = memoryview(out.numpy())
    own = fd is None
    if own:
        fd = os.open(info.file, os.O_RDONLY)
    try:
        done = 0
        while done < info.nbytes:  # preadv may return fewer bytes than asked
            got = os.preadv(fd, [view[done:]], info.start + done)
            if got <= 0:
                raise CheckpointError(f"{info.file.name}: truncated: tensor {info.name!r} ended after "
                                      f"{done:,} of {info.nbytes:,} bytes")
            done += got
    finally:
        if own:
            os.close(fd)
    return out.view(info.torch_dtype).reshape(info.shape)
