"""Loading real Qwen3-Next checkpoints: safetensors, validation, FP8 blocks, expert offloading.

What it implements
    * The safetensors format read by hand (:func:`read_header`): an 8-byte little-endian header length,
      a JSON header naming every tensor's dtype, shape and byte range, then the raw bytes.
    * A checkpoint directory (:func:`open_checkpoint`): ``config.json`` plus either one
      ``model.safetensors`` or ``model.safetensors.index.json`` and its shards. Every file is checked
      before a single weight is read: shards listed but absent, truncated files, corrupt headers,
      tensors the index and the shard disagree about, pickle-only checkpoints (refused, never opened).
    * The Hub key layout of a config (:func:`hub_layout`, SPEC section 4) with the config field behind
      every dimension, so a shape mismatch can say which ``config.json`` field disagrees with the weights.
    * :func:`load_pretrained`: validate every key, shape and dtype against the model (built on the meta
      device, so nothing is allocated), then copy shard by shard through ``safetensors.safe_open``
      (memory-mapped), converting dtype and dequantising FP8 blocks on the way. ``mtp.*`` tensors (the
      multi-token-prediction module, not part of the model) are set aside; :func:`load_mtp` reads them.
    * FP8 block quantisation as the ``-FP8`` releases store it (:func:`dequantize_fp8`,
      :func:`quantize_fp8`): e4m3 weights and one ``weight_scale_inv`` per 128 x 128 block,
      ``W = W_fp8 * scale_inv`` (the fine-grained FP8 quantisation of the DeepSeek-V3 technical report).
    * Expert offloading (:class:`ExpertStore`, :class:`OffloadedExperts`): the routed experts, 97% of the
      parameters, stay on disk; an expert's three matrices are read (``os.preadv`` straight from the byte
      offsets of the header) the first time the router picks it and kept in a bounded LRU cache.
    * :func:`describe`: tensors, parameters and bytes by component, and the memory each loading mode needs,
      from the headers alone (``python -m qwen3next inspect DIR``).

Mirrors ``transformers``' ``PreTrainedModel.from_pretrained`` for this model (``modeling_utils.py`` and
``integrations/finegrained_fp8.py``), which converts the per-expert Hub keys into its fused in-memory
layout; this package keeps the Hub layout, so loading is a key-by-key copy.

Leaves out: ``pytorch_model.bin`` (pickle can run arbitrary code, so it is refused), other quantisation
formats (GPTQ, AWQ, bitsandbytes), tensor parallelism, and keeping FP8 weights quantised in memory.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

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
FP8_MAX = 448.0  # largest finite e4m3 value


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

    This is the checkpoint's contract; ``load_pretrained`` also checks that the model's own
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


# ------------------------------------------------------------------------------------------- FP8
def dequantize_fp8(w: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = (128, 128),
                   dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``W = W_fp8 * scale_inv``, each scale covering one ``block`` of rows x columns (edge blocks are cut).

    w (O, I) float8; scale_inv (ceil(O/bo), ceil(I/bi)); returns (O, I) in ``dtype``.
    """
    O, I = w.shape
    bo, bi = block
    s = scale_inv.float().repeat_interleave(bo, dim=0)[:O].repeat_interleave(bi, dim=1)[:, :I]  # (O, I)
    return (w.float() * s).to(dtype)


def quantize_fp8(w: torch.Tensor, block: tuple[int, int] = (128, 128),
                 scale_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-quantise a 2-D weight to e4m3 the way the ``-FP8`` releases are made.

    Each block's largest magnitude maps to 448 (the largest e4m3 value): ``scale_inv = amax / 448``,
    ``W_fp8 = W / scale_inv``. Returns ``(W_fp8 (O, I), scale_inv (ceil(O/bo), ceil(I/bi)))``.
    """
    O, I = w.shape
    bo, bi = block
    nO, nI = -(-O // bo), -(-I // bi)
    padded = torch.zeros(nO * bo, nI * bi, dtype=torch.float32)
    padded[:O, :I] = w.float()
    blocks = padded.view(nO, bo, nI, bi)  # (nO, bo, nI, bi)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12)  # (nO, nI)
    scale_inv = amax / FP8_MAX
    q = (blocks / scale_inv[:, None, :, None]).view(nO * bo, nI * bi)[:O, :I]
    return q.to(torch.float8_e4m3fn), scale_inv.to(scale_dtype)


# Which weights the -FP8 releases keep in bf16 (their quantization_config's modules_to_not_convert):
# embeddings, head, norms, the router and shared-expert gate, and DeltaNet's small parameters.
FP8_KEEP = re.compile(r"(embed_tokens|lm_head|norm|\.mlp\.gate\.|shared_expert_gate|in_proj_ba|conv1d|A_log|dt_bias)")


def fp8_candidate(name: str, shape: tuple[int, ...]) -> bool:
    """Would the FP8 releases store this weight in e4m3? (2-D projection weights outside ``FP8_KEEP``)."""
    return len(shape) == 2 and name.endswith(".weight") and not FP8_KEEP.search(name)


def write_fp8_checkpoint(src: str | Path, dst: str | Path, block: tuple[int, int] = (128, 128),
                         scale_dtype: torch.dtype = torch.float32) -> Path:
    """Write an FP8 copy of a safetensors checkpoint, shard for shard, with ``quantization_config`` set.

    For tests and the chapter: the real ``-FP8`` files cannot be downloaded here.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    ckpt = open_checkpoint(src)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    for f in ckpt.files:
        out: dict[str, torch.Tensor] = {}
        with safe_open(f, framework="pt") as sf:
            for name in sf.keys():
                t = sf.get_tensor(name)
                if fp8_candidate(name, tuple(t.shape)):
                    out[name], out[name + SCALE_SUFFIX] = quantize_fp8(t, block, scale_dtype)
                else:
                    out[name] = t.to(torch.bfloat16) if t.is_floating_point() else t
        save_file(out, dst / f.name, metadata={"format": "pt"})
        weight_map.update({n: f.name for n in out})
    raw = dict(ckpt.raw_config)
    raw["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": list(block)}
    raw["torch_dtype"] = "bfloat16"
    raw.pop("dtype", None)
    (dst / CONFIG_FILE).write_text(json.dumps(raw, indent=2))
    if ckpt.index is not None:
        total = sum(i.nbytes for f in ckpt.files for i in read_header(dst / f.name)[0].values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (dst / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return dst


# ------------------------------------------------------------------------------------- loading
def _target_dtype(ckpt: Checkpoint, dtype: torch.dtype | str | None) -> torch.dtype:
    """``dtype`` if given, else the checkpoint's own float dtype (FP8 files: their ``torch_dtype``)."""
    if dtype == "auto":
        dtype = None
    if dtype is not None:
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise CheckpointError(f"dtype: expected a torch float dtype such as torch.bfloat16, found {dtype!r}")
        return dtype
    codes = {i.dtype for n, i in ckpt.tensors.items() if i.dtype in FLOAT_CODES and not n.endswith(SCALE_SUFFIX)}
    if len(codes) == 1:
        return DTYPES[codes.pop()][0]
    return getattr(torch, ckpt.config.torch_dtype, torch.bfloat16)


def _materialise(info: TensorInfo, raw: torch.Tensor, plan: Plan, dtype: torch.dtype,
                 scale: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """The model's copy of one checkpoint tensor, in ``dtype`` on ``device``.

    ``safe_open(...).get_tensor`` returns a view of the memory-mapped file, not a copy: its pages are
    read only when touched, and the weight would change (or the process crash) if the file were
    rewritten. ``copy=True`` gives the model memory of its own, so "load everything" means resident.
    """
    if info.dtype in FP8_CODES:
        return dequantize_fp8(raw, scale, plan.checkpoint.fp8_block, dtype).to(device)
    return raw.to(device=device, dtype=dtype, copy=True)


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Put ``value`` in place of the (meta) parameter or buffer called ``name``."""
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(value, requires_grad=module._parameters[leaf].requires_grad)
    elif leaf in module._buffers:
        module._buffers[leaf] = value
    else:
        raise RuntimeError(f"{name}: the model has no parameter or buffer of that name")


def _meta_model(cfg: Qwen3NextConfig) -> nn.Module:
    from .model import Qwen3NextForCausalLM

    with torch.device("meta"):
        return Qwen3NextForCausalLM(cfg)


def _restore_buffers(model: nn.Module, device: torch.device) -> None:
    """Recompute the non-persistent buffers (RoPE ``inv_freq``) that stayed on the meta device."""
    for name, module in model.named_modules():
        meta = [b for b, t in module._buffers.items() if t is not None and t.is_meta]
        if not meta:
            continue
        if hasattr(module, "reset_inv_freq"):
            module._buffers["inv_freq"] = torch.empty(module.inv_freq.shape, device=device)
            with torch.device(device):
                module.reset_inv_freq()
        else:
            raise RuntimeError(f"{name}: buffers {meta} are not in the checkpoint and cannot be recomputed")


def _moe_blocks(model: nn.Module) -> list[tuple[int, nn.Module]]:
    from .moe import SparseMoeBlock

    blocks = []
    for name, module in model.named_modules():
        m = re.fullmatch(r"model\.layers\.(\d+)\.mlp", name)
        if m and isinstance(module, SparseMoeBlock):
            blocks.append((int(m.group(1)), module))
    return blocks


def load_pretrained(path: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
                    offload_experts: bool = False, expert_cache_size: int | None = None) -> nn.Module:
    """Build a ``Qwen3NextForCausalLM`` from a checkpoint directory (what ``from_pretrained`` calls).

    Steps: open and check every file (headers only); build the model on the meta device (no memory);
    check every key, shape and dtype; then read shard by shard through ``safetensors.safe_open``
    (memory-mapped), dequantising FP8 blocks and converting to ``dtype`` (default: the checkpoint's),
    and put each tensor in place. With ``offload_experts`` the routed experts are not read: each MoE
    block gets an :class:`OffloadedExperts` that reads an expert when the router picks it, through one
    LRU cache of ``expert_cache_size`` experts shared by all layers (default: one token's worth,
    ``num_experts_per_tok`` x the number of MoE layers).
    """
    from safetensors import safe_open

    ckpt = open_checkpoint(path)
    device = torch.device(device)
    target = _target_dtype(ckpt, dtype)
    model = _meta_model(ckpt.config)
    plan = check_checkpoint(ckpt, {k: tuple(v.shape) for k, v in model.state_dict().items()})

    skip: set[str] = set()
    if offload_experts:
        blocks = _moe_blocks(model)
        if not blocks:
            raise CheckpointError(f"offload_experts: {CONFIG_FILE} describes no MoE layer, nothing to offload")
        n_moe = len(blocks)
        capacity = expert_cache_size if expert_cache_size is not None else ckpt.config.num_experts_per_tok * n_moe
        store = ExpertStore(plan, target, device, capacity)
        for i, block in blocks:
            block.experts = OffloadedExperts(store, i, ckpt.config.num_experts)
        skip = {n for n in plan.layout if ".mlp.experts." in n}
        model.expert_store = store  # reachable for statistics (hits, misses, bytes read)

    by_file: dict[Path, list[str]] = {}
    for name in plan.layout:
        if name not in skip:
            by_file.setdefault(ckpt.tensors[name].file, []).append(name)
    for file in ckpt.files:  # one shard mapped at a time: peak is the model plus one shard's pages
        names = by_file.get(file, [])
        if not names:
            continue
        with safe_open(file, framework="pt", device="cpu") as sf:
            for name in names:
                info = ckpt.tensors[name]
                scale = None
                if info.dtype in FP8_CODES:
                    scale = read_tensor(plan.scales[name])
                _set_tensor(model, name, _materialise(info, sf.get_tensor(name), plan, target, scale, device))
    _restore_buffers(model, device)
    leftover = [n for n, t in model.state_dict().items() if t.is_meta]
    if leftover:
        raise RuntimeError(f"weights left unloaded: {leftover[:5]}")
    return model.eval()


def load_mtp(path: str | Path, dtype: torch.dtype | str | None = None) -> dict[str, torch.Tensor]:
    """The ``mtp.*`` tensors the loader sets aside, read on their own (FP8 ones dequantised)."""
    ckpt = open_checkpoint(path)
    target = _target_dtype(ckpt, dtype)
    out = {}
    for name in ckpt.mtp_names():
        if name.endswith(SCALE_SUFFIX):
            continue
        info = ckpt.tensors[name]
        raw = read_tensor(info)
        if info.dtype in FP8_CODES:
            scale_info = ckpt.tensors.get(name + SCALE_SUFFIX)
            if scale_info is None:
                raise CheckpointError(f"{name!r} in {info.file.name} is FP8 but {name + SCALE_SUFFIX!r} is missing")
            out[name] = dequantize_fp8(raw, read_tensor(scale_info), ckpt.fp8_block, target)
        else:
            out[name] = raw.to(target)
    return out


# ------------------------------------------------------------------------------ expert offloading
class ExpertStore:
    """Routed experts read from disk on demand, kept in one bounded LRU cache shared by all layers.

    ``get(layer, e)`` returns a ready ``moe.MLP``; a miss reads its three weights (and FP8 scales) with
    ``os.preadv`` from the byte ranges of the safetensors headers. ``hits``, ``misses`` and
    ``bytes_read`` count what happened; ``cached_bytes`` is what the cache holds now.
    """

    def __init__(self, plan: Plan, dtype: torch.dtype, device: torch.device, capacity: int):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"expert_cache_size: expected a positive number of experts, found {capacity!r}")
        self.plan, self.dtype, self.device, self.capacity = plan, dtype, device, capacity
        cfg = plan.checkpoint.config
        self.hidden, self.width = cfg.hidden_size, cfg.moe_intermediate_size
        self.cache: OrderedDict[tuple[int, int], nn.Module] = OrderedDict()
        self.hits = self.misses = self.bytes_read = 0
        self._fds: dict[Path, int] = {}

    def _fd(self, file: Path) -> int:
        if file not in self._fds:
            self._fds[file] = os.open(file, os.O_RDONLY)
        return self._fds[file]

    def _read(self, name: str) -> tuple[torch.Tensor, int]:
        info = self.plan.checkpoint.tensors[name]
        raw = read_tensor(info, self._fd(info.file))
        n = info.nbytes
        if info.dtype in FP8_CODES:
            scale_info = self.plan.scales[name]
            scale = read_tensor(scale_info, self._fd(scale_info.file))
            n += scale_info.nbytes
            return dequantize_fp8(raw, scale, self.plan.checkpoint.fp8_block, self.dtype), n
        return raw.to(self.dtype), n

    def load(self, layer: int, e: int) -> nn.Module:
        """Read one expert from disk (no caching)."""
        from .moe import MLP

        with torch.device("meta"):
            mlp = MLP(self.hidden, self.width)
        for proj in ("gate_proj", "up_proj", "down_proj"):
            w, n = self._read(f"model.layers.{layer}.mlp.experts.{e}.{proj}.weight")
            self.bytes_read += n
            getattr(mlp, proj)._parameters["weight"] = nn.Parameter(w.to(self.device), requires_grad=False)
        return mlp.eval()

    def get(self, layer: int, e: int) -> nn.Module:
        key = (layer, e)
        mlp = self.cache.get(key)
        if mlp is not None:
            self.hits += 1
            self.cache.move_to_end(key)
            return mlp
        self.misses += 1
        mlp = self.load(layer, e)
        self.cache[key] = mlp
        while len(self.cache) > self.capacity:
            self.cache.popitem(last=False)  # least recently used
        return mlp

    @property
    def expert_bytes(self) -> int:
        """Bytes of one expert in memory at the loading dtype."""
        return 3 * self.hidden * self.width * torch.empty((), dtype=self.dtype).element_size()

    @property
    def cached_bytes(self) -> int:
        return len(self.cache) * self.expert_bytes

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "bytes_read": self.bytes_read,
                "cached_experts": len(self.cache), "capacity": self.capacity}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


class OffloadedExperts(nn.Module):
    """Stands in for a MoE block's ``experts`` ModuleList: ``len()`` and ``[e]`` read through the store.

    It holds no parameters, so ``state_dict()`` leaves the routed experts out (they stay on disk).
    """

    def __init__(self, store: ExpertStore, layer_idx: int, num_experts: int):
        super().__init__()
        self.store, self.layer_idx, self.num_experts = store, layer_idx, num_experts

    def __len__(self) -> int:
        return self.num_experts

    def __getitem__(self, e: int) -> nn.Module:
        e = int(e)
        if not 0 <= e < self.num_experts:
            raise IndexError(f"expert {e} out of range 0..{self.num_experts - 1}")
        return self.store.get(self.layer_idx, e)

    def __iter__(self):
        return (self[e] for e in range(self.num_experts))

    def extra_repr(self) -> str:
        return f"layer={self.layer_idx}, num_experts={self.num_experts}, on disk, cache={self.store.capacity}"


# ------------------------------------------------------------------------------------- inspect
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


@dataclass
class Summary:
    """What :func:`describe` finds: counts by component and dtype, and the memory of each loading mode."""

    directory: Path
    files: int
    file_bytes: int
    tensors: dict[str, int]
    params: dict[str, int]
    bytes: dict[str, int]
    dtypes: dict[str, int]  # tensors per dtype code
    config: Qwen3NextConfig
    quantization: dict | None

    @property
    def model_params(self) -> int:
        return sum(v for k, v in self.params.items() if k not in ("mtp", "fp8 scales"))

    @property
    def expert_params(self) -> int:
        return self.params.get("routed experts", 0)

    def memory(self, dtype_bytes: int = 2, cache_experts: int | None = None) -> dict[str, int]:
        """Resident bytes of the weights in each loading mode, at ``dtype_bytes`` per parameter."""
        cfg = self.config
        n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
        if cache_experts is None:
            cache_experts = cfg.num_experts_per_tok * n_moe
        expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size * dtype_bytes
        non_expert = (self.model_params - self.expert_params) * dtype_bytes
        return {"load everything": self.model_params * dtype_bytes,
                "offload experts": non_expert + cache_experts * expert,
                "non-expert weights": non_expert,
                "expert cache": cache_experts * expert}


def describe(path: str | Path) -> Summary:
    """Count a checkpoint's tensors, parameters and bytes by component and dtype, from headers only."""
    ckpt = open_checkpoint(path)
    tensors = dict.fromkeys(COMPONENTS, 0)
    params = dict.fromkeys(COMPONENTS, 0)
    nbytes = dict.fromkeys(COMPONENTS, 0)
    dtypes: dict[str, int] = {}
    for name, info in ckpt.tensors.items():
        c = component_of(name)
        tensors[c] = tensors.get(c, 0) + 1
        params[c] = params.get(c, 0) + (0 if c == "fp8 scales" else info.numel)
        nbytes[c] = nbytes.get(c, 0) + info.nbytes
        dtypes[info.dtype] = dtypes.get(info.dtype, 0) + 1
    return Summary(ckpt.directory, len(ckpt.files), ckpt.total_bytes, tensors, params, nbytes, dtypes,
                   ckpt.config, ckpt.quantization)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    return f"{n} B"


def format_summary(s: Summary) -> str:
    """The text ``python -m qwen3next inspect DIR`` prints."""
    cfg = s.config
    lines = [f"checkpoint {s.directory}",
             f"  {s.files} file(s), {human_bytes(s.file_bytes)} on disk, {sum(s.tensors.values()):,} tensors",
             f"  config: {cfg.num_hidden_layers} layers ({cfg.layer_types.count('linear_attention')} Gated DeltaNet, "
             f"{cfg.layer_types.count('full_attention')} gated attention), hidden {cfg.hidden_size}, "
             f"{cfg.num_experts} experts (top {cfg.num_experts_per_tok}), vocab {cfg.vocab_size}",
             "  dtypes: " + ", ".join(f"{k} x {v:,}" for k, v in sorted(s.dtypes.items()))]
    if s.quantization:
        lines.append(f"  quantization: {json.dumps(s.quantization, sort_keys=True)}")
    lines.append("")
    lines.append(f"  {'component':<16}{'tensors':>10}{'parameters':>18}{'bytes':>14}")
    for c in COMPONENTS:
        if s.tensors.get(c):
            lines.append(f"  {c:<16}{s.tensors[c]:>10,}{s.params[c]:>18,}{human_bytes(s.bytes[c]):>14}")
    lines.append(f"  {'model (no mtp)':<16}{'':>10}{s.model_params:>18,}")
    lines.append("")
    lines.append("  memory for the weights (KV cache and activations come on top):")
    for label, nb in (("bf16", 2), ("fp32", 4)):
        m = s.memory(nb)
        lines.append(f"    {label}: load everything {human_bytes(m['load everything'])}; offload experts "
                     f"{human_bytes(m['offload experts'])} (non-expert {human_bytes(m['non-expert weights'])} + "
                     f"cache {human_bytes(m['expert cache'])})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------- measurement
def memory_status() -> dict[str, int] | None:
    """This process's resident size and its high-water mark, in bytes (Linux ``/proc``; else None)."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return None
    return {"rss": int(fields["VmRSS"].split()[0]) * 1024, "peak": int(fields["VmHWM"].split()[0]) * 1024}


def reset_peak_memory() -> bool:
    """Reset the high-water mark to the current resident size (``/proc/self/clear_refs``); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _warm_up() -> None:
    """Pay the lazy imports (building on the meta device pulls in sympy) before anything is measured."""
    from .config import Qwen3NextConfig
    from .model import Qwen3NextForCausalLM

    torch.manual_seed(0)
    with torch.no_grad():
        Qwen3NextForCausalLM(Qwen3NextConfig.tiny(num_hidden_layers=4))(torch.arange(4)[None])
        _meta_model(Qwen3NextConfig.tiny(num_hidden_layers=4))


def _measure(path: str, offload: bool, cache: int | None, new_tokens: int, prompt_len: int) -> dict:
    """Load, then decode greedily; memory counted from just before loading (run in a fresh process)."""
    import time

    from .generate import generate

    reset_peak_memory()
    before = memory_status()
    t0 = time.perf_counter()
    model = load_pretrained(path, offload_experts=offload, expert_cache_size=cache)
    load_s = time.perf_counter() - t0
    loaded = memory_status()
    ids = torch.arange(prompt_len)[None] % model.config.vocab_size
    t1 = time.perf_counter()
    with torch.no_grad():
        out = generate(model, ids, new_tokens)
    gen_s = time.perf_counter() - t1
    end = memory_status()
    result = {"load_s": load_s, "tokens_per_s": new_tokens / gen_s, "tokens": out[0, prompt_len:].tolist(),
              "resident": None if before is None else loaded["rss"] - before["rss"],
              "peak": None if before is None else end["peak"] - before["rss"]}
    store = getattr(model, "expert_store", None)
    if store is not None:
        result.update(store.stats())
    return result


_MEASURE_MAIN = """
import json, os, sys, torch
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
from qwen3next.weights import _measure, _warm_up
_warm_up()
results = {}
for name, (offload, cache) in spec["runs"].items():
    args = (spec["path"], offload, cache, spec["new_tokens"], spec["prompt_len"])
    if not hasattr(os, "fork"):
        results[name] = _measure(*args)  # no fork: one process measures all (less exact)
        continue
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a child per mode: the same warm process, memory counted from the fork
        os.close(r)
        try:
            _warm_up()  # a forked child faults the library code pages in again: not weights, so before the count
            out = {"ok": _measure(*args)}
        except BaseException as err:
            out = {"error": repr(err)}
        with os.fdopen(w, "w") as f:
            f.write(json.dumps(out))
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = json.loads(f.read() or '{"error": "the measuring process died"}')
    os.waitpid(pid, 0)
    if "error" in out:
        raise RuntimeError(name + ": " + out["error"])
    results[name] = out["ok"]
print(json.dumps(results))
"""


def measure_modes_in_subprocess(path: str | Path, runs: dict[str, tuple[bool, int | None]], new_tokens: int = 8,
                                prompt_len: int = 16, threads: int = 1) -> dict[str, dict]:
    """Measure several loading modes of a checkpoint, each in a fresh process (Linux for the memory).

    ``runs`` maps a label to ``(offload_experts, expert_cache_size)``. One helper process does the
    imports once, then forks a child per mode, which loads the checkpoint and decodes ``new_tokens``
    greedily after a ``prompt_len``-token prompt. Each result has ``load_s``, ``resident`` (bytes added
    by loading), ``peak`` (high-water mark above the start, decoding included), ``tokens_per_s`` and the
    greedy ``tokens``; with offloading also the cache statistics. Fresh processes, because memory once
    used by a process blurs what a later measurement in it sees.
    """
    import subprocess
    import sys

    spec = {"path": str(path), "runs": {k: [bool(o), c] for k, (o, c) in runs.items()}, "new_tokens": new_tokens,
            "prompt_len": prompt_len, "threads": int(threads)}
    env = {**os.environ, "OMP_NUM_THREADS": str(int(threads))}
    res = subprocess.run([sys.executable, "-c", _MEASURE_MAIN, json.dumps(spec)], capture_output=True, text=True,
                         env=env)
    if res.returncode != 0:
        raise RuntimeError(f"measurement of {path} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure_in_subprocess(path: str | Path, offload_experts: bool = False, expert_cache_size: int | None = None,
                          new_tokens: int = 8, prompt_len: int = 16, threads: int = 1) -> dict:
    """One loading mode of :func:`measure_modes_in_subprocess`."""
    runs = {"run": (offload_experts, expert_cache_size)}
    return measure_modes_in_subprocess(path, runs, new_tokens, prompt_len, threads)["run"]
