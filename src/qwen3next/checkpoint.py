"""Reading and checking a Qwen3-Next checkpoint directory, before any weight is loaded.

What it implements
    * The safetensors format read by hand (:func:`read_header`, :func:`read_tensor`): an 8-byte
      little-endian header length, a JSON header naming every tensor's dtype, shape and byte range, then
      the raw bytes. Corrupt headers, truncated files and overlapping byte ranges are reported by name.
    * A checkpoint directory (:func:`open_checkpoint`): ``config.json`` plus either one
      ``model.safetensors`` or ``model.safetensors.index.json`` and its shards. Every file is checked
      before a single weight is read: shards listed but absent, truncated files, corrupt headers,
      tensors the index and the shard disagree about, pickle-only checkpoints (refused, never opened).
    * The Hub key layout of a config (:func:`hub_layout`, :func:`mtp_layout`, SPEC section 4) with the
      config field behind every dimension, and :func:`component_of`, the part of the model a key belongs to.
    * :func:`check_checkpoint`: every key, shape and dtype against that layout (FP8 weights need their
      ``weight_scale_inv``), with a diagnosis of which ``config.json`` field disagrees with the weights.

Mirrors the checks of ``transformers``' ``PreTrainedModel.from_pretrained`` (``modeling_utils.py``) and
the header parsing of the ``safetensors`` library (its format specification, ``safetensors/README.md``).

Leaves out: ``pytorch_model.bin`` (pickle can run arbitrary code, so it is refused), reading any tensor
into the model (:mod:`qwen3next.weights`), FP8 arithmetic (:mod:`qwen3next.fp8`).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import ConfigError, Qwen3NextConfig

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.bin")
MAX_HEADER_BYTES = 100_000_000  # the limit the safetensors library itself enforces

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
SCALE_SUFFIX = "_scale_inv"  # "<module>.weight" -> "<module>.weight_scale_inv"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file, tensor or field at fault."""


class MissingFileError(CheckpointError, FileNotFoundError):
    """A file the checkpoint needs (config.json, a shard) is not there."""


# ------------------------------------------------------------------------------- safetensors by hand
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
    an optional ``"__metadata__"`` holds string pairs. Returns ``(tensors, metadata)`` and raises
    :class:`CheckpointError` naming the file for a corrupt header or a truncated file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such safetensors file")
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path.name}: {size} bytes is too short for a safetensors file "
                                  f"(expected an 8-byte header length first)")
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path.name}: corrupt header: its length field says {n:,} bytes "
                                  f"(at most {MAX_HEADER_BYTES:,} expected)")
        if 8 + n > size:
            raise CheckpointError(f"{path.name}: truncated or corrupt header: it should span {n:,} bytes "
                                  f"but the file has only {size - 8:,} after the length field")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path.name}: corrupt header: not valid UTF-8 JSON ({err})") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name}: corrupt header: expected a JSON object, found {type(header).__name__}")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path.name}: corrupt header: __metadata__ should be an object of strings")
    data_start, data_size = 8 + n, size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        tensors[name] = _tensor_entry(path, name, entry, data_start, data_size)
    _check_no_overlap(path, tensors.values())
    return tensors, metadata


def _tensor_entry(path: Path, name: str, entry, data_start: int, data_size: int) -> TensorInfo:
    where = f"{path.name}: tensor {name!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"{where}: corrupt header entry, expected dtype, shape and data_offsets, found {entry!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise CheckpointError(f"{where}: unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise CheckpointError(f"{where}: corrupt shape {shape!r}, expected a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise CheckpointError(f"{where}: corrupt data_offsets {offsets!r}, expected [begin, end] with begin <= end")
    expected = math.prod(shape) * DTYPES[dtype][1]
    if offsets[1] - offsets[0] != expected:
        raise CheckpointError(f"{where}: data_offsets span {offsets[1] - offsets[0]:,} bytes but "
                              f"{dtype} {shape} needs {expected:,}")
    if offsets[1] > data_size:
        raise CheckpointError(f"{path.name}: truncated: tensor {name!r} ends at data byte {offsets[1]:,} "
                              f"but the file holds only {data_size:,} data bytes")
    return TensorInfo(name, path, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def _check_no_overlap(path: Path, infos: Iterable[TensorInfo]) -> None:
    last_end, last_name = -1, None
    for info in sorted(infos, key=lambda t: (t.start, t.end)):
        if info.start < last_end:
            raise CheckpointError(f"{path.name}: corrupt header: tensors {last_name!r} and {info.name!r} overlap")
        if info.end > info.start:
            last_end, last_name = info.end, info.name


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


# ----------------------------------------------------------------------------------- the Hub layout
@dataclass(frozen=True)
class Expected:
    """The shape a checkpoint tensor must have, and the config field (or formula) behind each dim."""

    shape: tuple[int, ...]
    dims: tuple[str, ...]

    def describe(self) -> str:
        parts = [d if d.isdigit() else f"{d}={s}" for d, s in zip(self.dims, self.shape, strict=True)]
        return "[" + ", ".join(parts) + "]"


_DIM_FIELDS = (
    "vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
    "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
    "linear_conv_kernel_dim", "num_experts", "moe_intermediate_size", "shared_expert_intermediate_size",
    "intermediate_size",
)


def _dim_values(cfg: Qwen3NextConfig) -> dict[str, int]:
    """Every dimension name used in the layout: config fields, and the few products of them."""
    v = {name: getattr(cfg, name) for name in _DIM_FIELDS}
    v.update({
        "1": 1,
        "2*hidden_size": 2 * cfg.hidden_size,
        "2*num_attention_heads*head_dim": 2 * cfg.num_attention_heads * cfg.head_dim,
        "num_attention_heads*head_dim": cfg.num_attention_heads * cfg.head_dim,
        "num_key_value_heads*head_dim": cfg.num_key_value_heads * cfg.head_dim,
        "2*linear_key_dim+2*linear_value_dim": 2 * cfg.linear_key_dim + 2 * cfg.linear_value_dim,
        "2*linear_num_value_heads": 2 * cfg.linear_num_value_heads,
        "linear_conv_dim": cfg.linear_conv_dim,
        "linear_value_dim": cfg.linear_value_dim,
    })
    return v


def _E(v: dict[str, int], *dims: str) -> Expected:
    """An Expected shape from dimension names, ``v`` being ``_dim_values(cfg)``."""
    return Expected(tuple(v[d] for d in dims), dims)


def _attention_layout(v: dict[str, int], p: str) -> dict[str, Expected]:
    return {
        f"{p}.q_proj.weight": _E(v, "2*num_attention_heads*head_dim", "hidden_size"),  # query + gate
        f"{p}.k_proj.weight": _E(v, "num_key_value_heads*head_dim", "hidden_size"),
        f"{p}.v_proj.weight": _E(v, "num_key_value_heads*head_dim", "hidden_size"),
        f"{p}.o_proj.weight": _E(v, "hidden_size", "num_attention_heads*head_dim"),
        f"{p}.q_norm.weight": _E(v, "head_dim"),
        f"{p}.k_norm.weight": _E(v, "head_dim"),
    }


def _deltanet_layout(v: dict[str, int], p: str) -> dict[str, Expected]:
    return {
        f"{p}.in_proj_qkvz.weight": _E(v, "2*linear_key_dim+2*linear_value_dim", "hidden_size"),
        f"{p}.in_proj_ba.weight": _E(v, "2*linear_num_value_heads", "hidden_size"),
        f"{p}.conv1d.weight": _E(v, "linear_conv_dim", "1", "linear_conv_kernel_dim"),
        f"{p}.dt_bias": _E(v, "linear_num_value_heads"),
        f"{p}.A_log": _E(v, "linear_num_value_heads"),
        f"{p}.norm.weight": _E(v, "linear_value_head_dim"),
        f"{p}.out_proj.weight": _E(v, "hidden_size", "linear_value_dim"),
    }


def _mlp_layout(v: dict[str, int], p: str, width: str) -> dict[str, Expected]:
    return {
        f"{p}.gate_proj.weight": _E(v, width, "hidden_size"),
        f"{p}.up_proj.weight": _E(v, width, "hidden_size"),
        f"{p}.down_proj.weight": _E(v, "hidden_size", width),
    }


def _moe_layout(v: dict[str, int], p: str, num_experts: int) -> dict[str, Expected]:
    out = {f"{p}.gate.weight": _E(v, "num_experts", "hidden_size")}
    for e in range(num_experts):
        out.update(_mlp_layout(v, f"{p}.experts.{e}", "moe_intermediate_size"))
    out.update(_mlp_layout(v, f"{p}.shared_expert", "shared_expert_intermediate_size"))
    out[f"{p}.shared_expert_gate.weight"] = _E(v, "1", "hidden_size")
    return out


def _layer_layout(v: dict[str, int], p: str, kind: str, moe: bool) -> dict[str, Expected]:
    out = {f"{p}.input_layernorm.weight": _E(v, "hidden_size"),
           f"{p}.post_attention_layernorm.weight": _E(v, "hidden_size")}
    if kind == "full_attention":
        out.update(_attention_layout(v, f"{p}.self_attn"))
    else:
        out.update(_deltanet_layout(v, f"{p}.linear_attn"))
    if moe:
        out.update(_moe_layout(v, f"{p}.mlp", v["num_experts"]))
    else:
        out.update(_mlp_layout(v, f"{p}.mlp", "intermediate_size"))
    return out


def hub_layout(cfg: Qwen3NextConfig) -> dict[str, Expected]:
    """Every tensor of the model in the Hub checkpoint (SPEC section 4), with its expected shape.

    This is the checkpoint's contract; ``weights.load_weights`` also checks that the model's own
    ``state_dict`` has exactly these keys and shapes.
    """
    v = _dim_values(cfg)
    out = {"model.embed_tokens.weight": _E(v, "vocab_size", "hidden_size")}
    for i, kind in enumerate(cfg.layer_types):
        out.update(_layer_layout(v, f"model.layers.{i}", kind, cfg.is_moe_layer(i)))
    out["model.norm.weight"] = _E(v, "hidden_size")
    out["lm_head.weight"] = _E(v, "vocab_size", "hidden_size")
    return out


def mtp_layout(cfg: Qwen3NextConfig) -> dict[str, Expected]:
    """The multi-token-prediction module of the release (SPEC section 2), as vLLM and SGLang name it.

    ``fc`` joins the normalised embedding of the next token with the normalised hidden state; then one
    gated-attention + MoE layer and a final norm; the head is the model's ``lm_head``.
    """
    v = _dim_values(cfg)
    out = {
        "mtp.fc.weight": _E(v, "hidden_size", "2*hidden_size"),
        "mtp.pre_fc_norm_embedding.weight": _E(v, "hidden_size"),
        "mtp.pre_fc_norm_hidden.weight": _E(v, "hidden_size"),
    }
    out.update(_layer_layout(v, "mtp.layers.0", "full_attention", True))
    out["mtp.norm.weight"] = _E(v, "hidden_size")
    return out


# --------------------------------------------------------------------------------- the directory
@dataclass
class Checkpoint:
    """A checkpoint directory, opened and checked file by file; no tensor data has been read."""

    directory: Path
    config: Qwen3NextConfig
    raw_config: dict
    tensors: dict[str, TensorInfo]  # every tensor in every shard, by name
    files: list[Path]  # the shards, in order
    index: dict | None = None  # the parsed index file, if there is one
    metadata: dict[str, dict] = field(default_factory=dict)  # each shard's __metadata__

    @property
    def quantization(self) -> dict | None:
        """``quantization_config`` of config.json (the FP8 releases carry one), or None."""
        return self.raw_config.get("quantization_config")

    @property
    def fp8_block(self) -> tuple[int, int]:
        q = self.quantization or {}
        block = q.get("weight_block_size", [128, 128])
        if not (isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
            raise CheckpointError(f"{CONFIG_FILE}: quantization_config.weight_block_size: expected two positive "
                                  f"integers, found {block!r}")
        return block[0], block[1]

    def mtp_names(self) -> list[str]:
        return [n for n in self.tensors if n.startswith("mtp.")]

    def model_names(self) -> list[str]:
        return [n for n in self.tensors if not n.startswith("mtp.") and not n.endswith(SCALE_SUFFIX)]

    @property
    def total_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open a checkpoint directory and check its files; raises :class:`CheckpointError` naming the fault."""
    directory = Path(path)
    if not directory.is_dir():
        raise MissingFileError(f"{directory}: not a checkpoint directory (expected a folder holding "
                               f"{CONFIG_FILE} and safetensors files)")
    index_path, single_path = directory / INDEX_FILE, directory / SINGLE_FILE
    if not index_path.is_file() and not single_path.is_file():
        pickles = [n for n in PICKLE_FILES if (directory / n).exists()]
        if pickles:
            raise CheckpointError(
                f"{directory}: only a pickle checkpoint ({', '.join(pickles)}) was found. Pickle files can run "
                f"arbitrary code when loaded, so they are refused (never opened); expected {SINGLE_FILE} or "
                f"{INDEX_FILE} with safetensors shards")
        raise MissingFileError(f"{directory}: no weights: expected {INDEX_FILE} (sharded) or {SINGLE_FILE}")
    raw_config, config = _read_config(directory)
    index = None
    if index_path.is_file():
        index, files, weight_map = _read_index(index_path)
    else:
        files, weight_map = [single_path], None
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[str, dict] = {}
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise MissingFileError(f"{INDEX_FILE} lists shard(s) {missing} but they are not in {directory} "
                               f"(an interrupted download? expected {len(files)} shards)")
    for f in files:
        infos, metadata[f.name] = read_header(f)
        for name, info in infos.items():
            if name in tensors:
                raise CheckpointError(f"tensor {name!r} is stored twice: in {tensors[name].file.name} and {f.name}")
            tensors[name] = info
    if weight_map is not None:
        _check_index_agrees(weight_map, tensors)
    return Checkpoint(directory, config, raw_config, tensors, files, index, metadata)


def _read_config(directory: Path) -> tuple[dict, Qwen3NextConfig]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise MissingFileError(f"{directory}: {CONFIG_FILE} is missing; it is needed to know the model's shapes "
                               f"(expected the config.json published with the weights)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(raw).__name__}")
    try:
        return raw, Qwen3NextConfig.from_dict(raw)
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{path}: {err}") from err


def _read_index(index_path: Path) -> tuple[dict, list[Path], dict[str, str]]:
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{index_path.name}: not valid JSON ({err})") from err
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path.name}: expected a non-empty 'weight_map' object "
                              f"(tensor name -> shard file)")
    names = []
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or not shard.endswith(".safetensors") or Path(shard).name != shard:
            raise CheckpointError(f"{index_path.name}: weight_map[{tensor!r}] = {shard!r}: expected the file name of "
                                  f"a .safetensors shard in the same directory")
        if shard not in names:
            names.append(shard)
    return index, [index_path.parent / n for n in sorted(names)], weight_map


def _check_index_agrees(weight_map: dict[str, str], tensors: dict[str, TensorInfo]) -> None:
    for name, shard in weight_map.items():
        info = tensors.get(name)
        if info is None:
            raise CheckpointError(f"{INDEX_FILE} says tensor {name!r} is in {shard}, but no shard holds it")
        if info.file.name != shard:
            raise CheckpointError(f"{INDEX_FILE} says tensor {name!r} is in {shard}, but it is in {info.file.name}")
    extra = [n for n in tensors if n not in weight_map]
    if extra:
        raise CheckpointError(f"{tensors[extra[0]].file.name} holds tensor {extra[0]!r} (and {len(extra) - 1} more) "
                              f"that {INDEX_FILE} does not list")


# ----------------------------------------------------------------------------------- validation
@dataclass
class Plan:
    """What to load: for each model tensor, where it is and how to turn it into the model's weight."""

    checkpoint: Checkpoint
    layout: dict[str, Expected]
    scales: dict[str, TensorInfo]  # weight name -> its FP8 scale tensor
    mtp: list[str]


def check_checkpoint(ckpt: Checkpoint, model_shapes: dict[str, tuple[int, ...]] | None = None) -> Plan:
    """Check every tensor's key, shape and dtype against the config's layout; nothing is read or allocated.

    Raises :class:`CheckpointError` listing what is wrong (missing, unexpected, wrong shape, wrong dtype,
    FP8 weights without scales) and, when the pattern shows it, which ``config.json`` field disagrees.
    """
    cfg = ckpt.config
    layout = hub_layout(cfg)
    if model_shapes is not None:
        _check_model_matches_layout(model_shapes, layout)
    block = ckpt.fp8_block
    problems: list[str] = []
    scales: dict[str, TensorInfo] = {}
    for name, info in ckpt.tensors.items():
        if name.startswith("mtp."):
            continue
        if name.endswith(SCALE_SUFFIX):
            weight = name[: -len(SCALE_SUFFIX)]
            w = ckpt.tensors.get(weight)
            if w is None or w.dtype not in FP8_CODES:
                problems.append(f"unexpected tensor {name!r} in {info.file.name}: an FP8 scale with no FP8 weight "
                                f"{weight!r} beside it")
                continue
            scales[weight] = info
            continue
        exp = layout.get(name)
        if exp is None:
            problems.append(f"unexpected tensor {name!r} in {info.file.name} {list(info.shape)}: "
                            f"the model has no such weight")
            continue
        if info.shape != exp.shape:
            problems.append(f"{name!r} in {info.file.name}: expected shape {exp.describe()} from {CONFIG_FILE}, "
                            f"found {list(info.shape)}")
        if info.dtype in FP8_CODES:
            scale = ckpt.tensors.get(name + SCALE_SUFFIX)
            if len(info.shape) != 2:
                problems.append(f"{name!r} in {info.file.name}: FP8 is only expected for 2-D weights, found "
                                f"{info.dtype} {list(info.shape)}")
            elif scale is None:
                problems.append(f"{name!r} in {info.file.name} is FP8 ({info.dtype}) but its scale "
                                f"{name + SCALE_SUFFIX!r} is missing")
            else:
                want = tuple(-(-d // b) for d, b in zip(info.shape, block, strict=True))
                if scale.shape != want:
                    problems.append(f"{scale.name!r} in {scale.file.name}: expected shape {list(want)} (one scale "
                                    f"per {block[0]}x{block[1]} block of {list(info.shape)}), "
                                    f"found {list(scale.shape)}")
                if scale.dtype not in FLOAT_CODES:
                    problems.append(f"{scale.name!r} in {scale.file.name}: expected a float dtype, found {scale.dtype}")
        elif info.dtype not in FLOAT_CODES:
            problems.append(f"{name!r} in {info.file.name}: expected a float dtype ({', '.join(FLOAT_CODES)} or "
                            f"FP8 with scales), found {info.dtype}")
    missing = [n for n in layout if n not in ckpt.tensors]
    for name in missing:
        problems.append(f"missing tensor {name!r} {layout[name].describe()}: no shard holds it")
    if problems:
        raise CheckpointError(_problem_report(ckpt, problems, layout, missing))
    return Plan(ckpt, layout, scales, ckpt.mtp_names())


def _check_model_matches_layout(model_shapes: dict[str, tuple[int, ...]], layout: dict[str, Expected]) -> None:
    """Guard against the model and the Hub layout drifting apart (a bug in this package, not the file)."""
    diff = sorted(set(model_shapes) ^ set(layout))
    wrong = [k for k in model_shapes if k in layout and tuple(model_shapes[k]) != layout[k].shape]
    if diff or wrong:
        raise RuntimeError(f"the model's state_dict does not follow the Hub layout: keys only on one side "
                           f"{diff[:5]}, shapes differing {wrong[:5]}")


def _problem_report(ckpt: Checkpoint, problems: list[str], layout: dict[str, Expected], missing: list[str]) -> str:
    shown = problems[:12]
    lines = [f"{ckpt.directory}: the weights do not match the model described by {CONFIG_FILE} "
             f"({len(problems)} problem{'s' * (len(problems) > 1)}):"]
    lines += [f"  - {p}" for p in shown]
    if len(problems) > len(shown):
        lines.append(f"  ... and {len(problems) - len(shown)} more")
    hints = _diagnose_config(ckpt, layout, missing)
    if hints:
        lines.append("Likely cause (config.json disagrees with the weights):")
        lines += [f"  * {h}" for h in hints]
    return "\n".join(lines)


def _diagnose_config(ckpt: Checkpoint, layout: dict[str, Expected], missing: list[str]) -> list[str]:
    """Turn a pattern of mismatches into the config field that explains it."""
    cfg, hints = ckpt.config, []
    seen: dict[str, set[int]] = {}
    for name, info in ckpt.tensors.items():
        exp = layout.get(name)
        if exp is None or len(exp.shape) != len(info.shape):
            continue
        for dim, want, found in zip(exp.dims, exp.shape, info.shape, strict=True):
            if want != found and dim in _DIM_FIELDS:
                seen.setdefault(dim, set()).add(found)
    for dim, values in seen.items():
        if len(values) == 1:
            hints.append(f"{dim}: config.json has {getattr(cfg, dim)}, the weights have {values.pop()}")
    layers = {int(m.group(1)) for n in ckpt.tensors if (m := re.match(r"model\.layers\.(\d+)\.", n))}
    if layers and max(layers) + 1 != cfg.num_hidden_layers:
        hints.append(f"num_hidden_layers: config.json has {cfg.num_hidden_layers}, "
                     f"the weights have {max(layers) + 1} layers")
    expert_key = re.compile(r"model\.layers\.\d+\.mlp\.experts\.(\d+)\.")
    experts = {int(m.group(1)) for n in ckpt.tensors if (m := expert_key.match(n))}
    if experts and max(experts) + 1 != cfg.num_experts:
        hints.append(f"num_experts: config.json has {cfg.num_experts}, "
                     f"the weights have {max(experts) + 1} experts per layer")
    for i, kind in enumerate(cfg.layer_types):
        has_attn = f"model.layers.{i}.self_attn.q_proj.weight" in ckpt.tensors
        has_delta = f"model.layers.{i}.linear_attn.in_proj_qkvz.weight" in ckpt.tensors
        wrong = (has_delta and not has_attn) if kind == "full_attention" else (has_attn and not has_delta)
        if wrong:
            found = "linear_attention" if has_delta else "full_attention"
            hints.append(f"layer_types[{i}] (full_attention_interval={cfg.full_attention_interval}): config.json says "
                         f"{kind}, the weights hold a {found} layer")
            break
    return hints



# --------------------------------------------------------------------------------- components
COMPONENTS = ("embedding", "lm_head", "deltanet", "attention", "router", "routed experts", "shared expert",
              "norms", "mtp", "fp8 scales")


def component_of(name: str) -> str:
    """Which part of the model a checkpoint key belongs to."""
    if name.endswith(SCALE_SUFFIX):
        return "fp8 scales"
    if name.startswith("mtp."):
        return "mtp"
    if "embed_tokens" in name:
        return "embedding"
    if name.startswith("lm_head"):
        return "lm_head"
    if ".mlp.experts." in name:
        return "routed experts"
    if ".shared_expert" in name:
        return "shared expert"
    if ".mlp.gate." in name:
        return "router"
    if ".linear_attn." in name:
        return "deltanet"
    if ".self_attn." in name:
        return "attention"
    if "norm" in name:
        return "norms"
    return "other"
