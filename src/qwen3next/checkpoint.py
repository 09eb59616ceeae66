"""Opening and checking a Qwen3-Next checkpoint directory, before any weight is loaded.

What it implements
    * :func:`open_checkpoint`: ``config.json`` plus either one ``model.safetensors`` or
      ``model.safetensors.index.json`` and its shards. Every file is checked before a single weight is
      read: shards listed but absent, truncated files, corrupt headers (:mod:`qwen3next.safetensors_file`),
      tensors the index and the shards disagree about, pickle-only checkpoints (refused, never opened),
      a config asking for more layers or experts than the files hold (refused before a model is built),
      and FP8 that does not fail closed (every FP8 weight has its scale, every scale its FP8 weight).
    * :func:`check_checkpoint`: every key, shape and dtype against the config's Hub layout
      (:mod:`qwen3next.hub_layout`), with a diagnosis of which ``config.json`` field disagrees.

Mirrors the checks of ``transformers``' ``PreTrainedModel.from_pretrained`` (``modeling_utils.py``).
Leaves out: ``pytorch_model.bin`` (pickle can run arbitrary code, so it is refused), reading any tensor
into the model (:mod:`qwen3next.weights`), FP8 arithmetic (:mod:`qwen3next.fp8`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, Qwen3NextConfig
from .hub_layout import _DIM_FIELDS, SCALE_SUFFIX, Expected, hub_layout, module_counts
from .jsonfile import read_json_file
from .safetensors_file import FLOAT_CODES, FP8_CODES, CheckpointError, MissingFileError, TensorInfo, read_header

__all__ = ["Checkpoint", "Plan", "open_checkpoint", "check_checkpoint", "INDEX_FILE", "SINGLE_FILE", "CONFIG_FILE"]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.bin")


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
        """Rows x columns covered by one FP8 scale (``weight_block_size``, checked on opening)."""
        block = (self.quantization or {}).get("weight_block_size", [128, 128])
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
    directory = _checked_directory(Path(path))
    raw_config, config = _read_config(directory)
    index, files, weight_map = _read_index(directory)
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[str, dict] = {}
    for f in files:
        infos, metadata[f.name] = read_header(f)
        for name, info in infos.items():
            if name in tensors:
                raise CheckpointError(f"tensor {name!r} is stored twice: in {tensors[name].file.name} and {f.name}")
            tensors[name] = info
    ckpt = Checkpoint(directory, config, raw_config, tensors, files, index, metadata)
    _check_opened(ckpt, weight_map)
    return ckpt


def _checked_directory(directory: Path) -> Path:
    """A directory with safetensors weights in it; pickle-only checkpoints are refused unopened."""
    if not directory.is_dir():
        raise MissingFileError(f"{directory}: not a checkpoint directory (expected a folder holding "
                               f"{CONFIG_FILE} and safetensors files)")
    if not (directory / INDEX_FILE).is_file() and not (directory / SINGLE_FILE).is_file():
        pickles = [n for n in PICKLE_FILES if (directory / n).exists()]
        if pickles:
            raise CheckpointError(
                f"{directory}: only a pickle checkpoint ({', '.join(pickles)}) was found. Pickle files can run "
                f"arbitrary code when loaded, so they are refused (never opened); expected {SINGLE_FILE} or "
                f"{INDEX_FILE} with safetensors shards")
        raise MissingFileError(f"{directory}: no weights: expected {INDEX_FILE} (sharded) or {SINGLE_FILE}")
    return directory


def _read_config(directory: Path) -> tuple[dict, Qwen3NextConfig]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise MissingFileError(f"{directory}: {CONFIG_FILE} is missing; it is needed to know the model's shapes "
                               f"(expected the config.json published with the weights)")
    raw = read_json_file(path, CheckpointError)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(raw).__name__}")
    try:
        return raw, Qwen3NextConfig.from_dict(raw)
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from err


def _read_index(directory: Path) -> tuple[dict | None, list[Path], dict[str, str] | None]:
    """``(index, shard paths, weight_map)``; a single-file checkpoint has no index and no weight map."""
    index_path = directory / INDEX_FILE
    if not index_path.is_file():
        return None, [directory / SINGLE_FILE], None
    index = read_json_file(index_path, CheckpointError, where=INDEX_FILE, strict=True)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{INDEX_FILE}: expected a non-empty 'weight_map' object "
                              f"(tensor name -> shard file), found {weight_map!r}"[:300])
    meta = index.get("metadata", {})
    if not isinstance(meta, dict):
        raise CheckpointError(f"{INDEX_FILE}: 'metadata' should be an object, found {meta!r}")
    total = meta.get("total_size", 0)
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise CheckpointError(f"{INDEX_FILE}: metadata.total_size should be a byte count, found {total!r}")
    names = []
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or not shard.endswith(".safetensors") or Path(shard).name != shard:
            raise CheckpointError(f"{INDEX_FILE}: weight_map[{tensor!r}] = {shard!r}: expected the file name of "
                                  f"a .safetensors shard in the same directory")
        if shard not in names:
            names.append(shard)
    files = [directory / n for n in sorted(names)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise MissingFileError(f"{INDEX_FILE} lists shard(s) {missing} but they are not in {directory} "
                               f"(an interrupted download? expected {len(files)} shards)")
    return index, files, weight_map


# ----------------------------------------------------------------------------- checks on opening
def _check_opened(ckpt: Checkpoint, weight_map: dict[str, str] | None) -> None:
    """Everything the files must agree on before a model is built: index and shards, the number of layers
    and experts, the FP8 pairing. Only headers are read, so this costs the same whatever the config asks."""
    tensors = ckpt.tensors
    if weight_map is not None:
        for name, shard in weight_map.items():
            info = tensors.get(name)
            if info is None:
                raise CheckpointError(f"{INDEX_FILE} says tensor {name!r} is in {shard}, but no shard holds it")
            if info.file.name != shard:
                raise CheckpointError(f"{INDEX_FILE} says tensor {name!r} is in {shard}, but it is in {info.file.name}")
        extra = [n for n in tensors if n not in weight_map]
        if extra:
            raise CheckpointError(f"{tensors[extra[0]].file.name} holds tensor {extra[0]!r} (and {len(extra) - 1} "
                                  f"more) that {INDEX_FILE} does not list")
    cfg = ckpt.config
    layers, experts = module_counts(tensors)
    # more modules than the files hold: refuse now, building them (a million experts) would never finish
    if cfg.num_hidden_layers > layers:
        raise CheckpointError(f"{ckpt.directory / CONFIG_FILE}: num_hidden_layers: config.json has "
                              f"{cfg.num_hidden_layers}, the weights have {layers} layers")
    if cfg.num_experts > experts and any(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers)):
        raise CheckpointError(f"{ckpt.directory / CONFIG_FILE}: num_experts: config.json has {cfg.num_experts}, "
                              f"the weights have {experts} experts per layer")
    _check_fp8(ckpt)


def _check_fp8(ckpt: Checkpoint) -> None:
    """FP8 fails closed: a known quantisation method, every FP8 weight with its scale, every scale used."""
    q = ckpt.quantization
    fp8 = [n for n, i in ckpt.tensors.items() if i.dtype in FP8_CODES]
    where = f"{ckpt.directory / CONFIG_FILE}: quantization_config"
    if q is not None:
        if not isinstance(q, dict) or q.get("quant_method") != "fp8":
            method = q.get("quant_method") if isinstance(q, dict) else q
            raise CheckpointError(f"{where}: quant_method {method!r} is not supported; expected 'fp8' "
                                  f"(the -FP8 releases' block quantisation)")
        block = q.get("weight_block_size", [128, 128])
        if not (isinstance(block, list) and len(block) == 2
                and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
            raise CheckpointError(f"{where}.weight_block_size: expected two positive integers, found {block!r}")
    elif fp8:
        raise CheckpointError(f"{ckpt.directory / CONFIG_FILE} has no quantization_config, but {len(fp8)} tensors "
                              f"are FP8 (e.g. {fp8[0]!r}): without it their scales cannot be applied")
    block = ckpt.fp8_block
    for name, info in ckpt.tensors.items():
        if name.endswith(SCALE_SUFFIX):
            w = ckpt.tensors.get(name[: -len(SCALE_SUFFIX)])
            if w is None or w.dtype not in FP8_CODES:
                found = "is missing" if w is None else f"is {w.dtype}"
                raise CheckpointError(f"unexpected tensor {name!r} in {info.file.name}: an FP8 scale with no FP8 "
                                      f"weight beside it ({name[: -len(SCALE_SUFFIX)]!r} {found})")
            continue
        if info.dtype not in FP8_CODES:
            continue
        scale = ckpt.tensors.get(name + SCALE_SUFFIX)
        if len(info.shape) != 2:
            raise CheckpointError(f"{name!r} in {info.file.name}: FP8 is only expected for 2-D weights, found "
                                  f"{info.dtype} {list(info.shape)}")
        if scale is None:
            raise CheckpointError(f"{name!r} in {info.file.name} is FP8 ({info.dtype}) but its scale "
                                  f"{name + SCALE_SUFFIX!r} is missing")
        want = tuple(-(-d // b) for d, b in zip(info.shape, block, strict=True))
        if scale.shape != want:
            raise CheckpointError(f"{scale.name!r} in {scale.file.name}: expected shape {list(want)} (one scale "
                                  f"per {block[0]}x{block[1]} block of {list(info.shape)}), found {list(scale.shape)}")
        if scale.dtype not in FLOAT_CODES:
            raise CheckpointError(f"{scale.name!r} in {scale.file.name}: expected a float dtype, found {scale.dtype}")


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

    Raises :class:`CheckpointError` listing what is wrong (missing, unexpected, wrong shape, wrong dtype)
    and, when the pattern shows it, which ``config.json`` field disagrees. (FP8 pairing was checked when
    the checkpoint was opened.)
    """
    layout = hub_layout(ckpt.config)
    if model_shapes is not None:
        _check_model_matches_layout(model_shapes, layout)
    problems: list[str] = []
    for name, info in ckpt.tensors.items():
        if name.startswith("mtp.") or name.endswith(SCALE_SUFFIX):
            continue
        exp = layout.get(name)
        if exp is None:
            problems.append(f"unexpected tensor {name!r} in {info.file.name} {list(info.shape)}: "
                            f"the model has no such weight")
            continue
        if info.shape != exp.shape:
            problems.append(f"{name!r} in {info.file.name}: expected shape {exp.describe()} from {CONFIG_FILE}, "
                            f"found {list(info.shape)}")
        if info.dtype not in FLOAT_CODES + FP8_CODES:
            problems.append(f"{name!r} in {info.file.name}: expected a float dtype ({', '.join(FLOAT_CODES)} or "
                            f"FP8 with scales), found {info.dtype}")
    missing = [n for n in layout if n not in ckpt.tensors]
    for name in missing:
        problems.append(f"missing tensor {name!r} {layout[name].describe()}: no shard holds it")
    if problems:
        raise CheckpointError(_problem_report(ckpt, problems, layout))
    scales = {n: ckpt.tensors[n + SCALE_SUFFIX] for n in layout if ckpt.tensors[n].dtype in FP8_CODES}
    return Plan(ckpt, layout, scales, ckpt.mtp_names())


def _check_model_matches_layout(model_shapes: dict[str, tuple[int, ...]], layout: dict[str, Expected]) -> None:
    """Guard against the model and the Hub layout drifting apart (a bug in this package, not the file)."""
    diff = sorted(set(model_shapes) ^ set(layout))
    wrong = [k for k in model_shapes if k in layout and tuple(model_shapes[k]) != layout[k].shape]
    if diff or wrong:
        raise RuntimeError(f"the model's state_dict does not follow the Hub layout: keys only on one side "
                           f"{diff[:5]}, shapes differing {wrong[:5]}")


def _problem_report(ckpt: Checkpoint, problems: list[str], layout: dict[str, Expected]) -> str:
    shown = problems[:12]
    lines = [f"{ckpt.directory}: the weights do not match the model described by {CONFIG_FILE} "
             f"({len(problems)} problem{'s' * (len(problems) > 1)}):"]
    lines += [f"  - {p}" for p in shown]
    if len(problems) > len(shown):
        lines.append(f"  ... and {len(problems) - len(shown)} more")
    hints = _diagnose_config(ckpt, layout)
    if hints:
        lines.append("Likely cause (config.json disagrees with the weights):")
        lines += [f"  * {h}" for h in hints]
    return "\n".join(lines)


def _diagnose_config(ckpt: Checkpoint, layout: dict[str, Expected]) -> list[str]:
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
    layers, experts = module_counts(ckpt.tensors)
    if layers and layers != cfg.num_hidden_layers:
        hints.append(f"num_hidden_layers: config.json has {cfg.num_hidden_layers}, the weights have {layers} layers")
    if experts and experts != cfg.num_experts:
        hints.append(f"num_experts: config.json has {cfg.num_experts}, the weights have {experts} experts per layer")
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

