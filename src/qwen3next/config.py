"""The Qwen3-Next configuration: every field of the released ``config.json``, checked.

Mirrors ``transformers.Qwen3NextConfig`` (``transformers/models/qwen3_next/configuration_qwen3_next.py``).
The field names are the keys of the released file, so ``Qwen3NextConfig.from_json`` and ``to_dict`` are a
plain round trip. Two things are derived rather than stored, exactly as the reference derives them:

* ``layer_types``: layer ``i`` is ``"full_attention"`` iff ``(i + 1) % full_attention_interval == 0``,
  every other layer is ``"linear_attention"`` (a Gated DeltaNet).
* the rotary settings: the released file stores ``rope_theta`` / ``partial_rotary_factor`` /
  ``rope_scaling`` at the top level; transformers 5 nests them under ``rope_parameters``. Both forms load.

What it leaves out: the training-only flags of ``PreTrainedConfig`` (``id2label``, ``return_dict``, ...)
are accepted and ignored; sliding-window attention is refused (Qwen3-Next has none).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .jsonfile import read_json_file

LAYER_TYPES = ("linear_attention", "full_attention")
ROPE_TYPES = ("default", "yarn")
TORCH_DTYPES = ("bfloat16", "float16", "float32", "float64")

# Keys that transformers writes into config.json but that change nothing in this model.
_IGNORED_KEYS = {
    "return_dict", "output_hidden_states", "output_attentions", "chunk_size_feed_forward",
    "is_encoder_decoder", "id2label", "label2id", "problem_type", "_name_or_path", "pad_token_id",
    "tokenizer_class", "num_labels", "torchscript", "pruned_heads", "add_cross_attention",
    "cross_attention_hidden_size", "tf_legacy_loss", "use_bfloat16", "finetuning_task",
    "task_specific_params", "prefix", "sep_token_id", "decoder_start_token_id", "quantization_config",
    "_attn_implementation_autoset", "dtype",
}


class ConfigError(ValueError):
    """A configuration value that cannot describe a working Qwen3-Next model."""


@dataclass
class Qwen3NextConfig:
    """Hyper-parameters of Qwen3-Next. Defaults are the released 80B-A3B values (the book's reference
    page, "The released configuration")."""

    vocab_size: int = 151936
    hidden_size: int = 2048
    num_hidden_layers: int = 48
    # gated attention (the full-attention layers)
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    head_dim: int = 256
    partial_rotary_factor: float = 0.25
    rope_theta: float = 10_000_000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 262144
    attention_dropout: float = 0.0
    # Gated DeltaNet (the linear-attention layers)
    linear_num_key_heads: int = 16
    linear_num_value_heads: int = 32
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_conv_kernel_dim: int = 4
    full_attention_interval: int = 4
    # mixture of experts
    num_experts: int = 512
    num_experts_per_tok: int = 10
    moe_intermediate_size: int = 512
    shared_expert_intermediate_size: int = 512
    norm_topk_prob: bool = True
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)
    intermediate_size: int = 5120  # width of the dense MLP of `mlp_only_layers`; unused by the release
    router_aux_loss_coef: float = 0.001
    output_router_logits: bool = False
    # everything else in the released file
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    use_cache: bool = True
    use_sliding_window: bool = False
    bos_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = 151645
    torch_dtype: str = "bfloat16"
    model_type: str = "qwen3_next"
    architectures: list[str] = field(default_factory=lambda: ["Qwen3NextForCausalLM"])
    transformers_version: str | None = None
    # derived from full_attention_interval when not given (transformers 5 stores it)
    layer_types: list[str] | None = None

    def __post_init__(self) -> None:
        if self.mlp_only_layers is None:
            self.mlp_only_layers = []
        _check_types(self)  # before anything computes with a field
        if self.layer_types is None:
            self.layer_types = self.derived_layer_types()
        else:
            self.layer_types = list(self.layer_types)
        self.mlp_only_layers = list(self.mlp_only_layers)
        self.validate()

    # ----------------------------------------------------------------------------------- presets
    @classmethod
    def full(cls) -> Qwen3NextConfig:
        """The released Qwen3-Next-80B-A3B-Instruct config, read from the copy shipped in the package."""
        text = resources.files("qwen3next").joinpath("data/qwen3-next-80b-a3b-instruct.config.json").read_text()
        return cls.from_dict(json.loads(text))

    @classmethod
    def tiny(cls, **overrides: Any) -> Qwen3NextConfig:
        """A model small enough for any chapter cell, with the same 3:1 DeltaNet/attention pattern.

        Same ratios as the real model where they matter: GQA 2:1, 2 value heads per key head,
        a quarter of each attention head rotated, top-2 of 8 experts plus a shared expert.
        """
        base = dict(
            vocab_size=512, hidden_size=64, num_hidden_layers=8,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
            num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32,
            intermediate_size=128, max_position_embeddings=4096, rope_theta=10_000.0,
            bos_token_id=None, eos_token_id=None, torch_dtype="float32",
        )
        base.update(overrides)
        return cls(**base)

    # --------------------------------------------------------------------------------- reading
    @classmethod
    def from_json(cls, path: str | Path) -> Qwen3NextConfig:
        """Read a ``config.json`` file, or the one inside a checkpoint directory."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config file at {path}")
        data = read_json_file(path, ConfigError)
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Qwen3NextConfig:
        """Build from a config dict in the released form or the transformers-5 form."""
        if not isinstance(data, dict):
            raise ConfigError(f"expected a JSON object, found {type(data).__name__}")
        data = dict(data)
        if data.get("model_type", "qwen3_next") != "qwen3_next":
            raise ConfigError(f"model_type: expected 'qwen3_next', found {data['model_type']!r}")
        if "dtype" in data and "torch_dtype" not in data:
            data["torch_dtype"] = data["dtype"]
        rope = data.pop("rope_parameters", None)
        if rope is not None and not isinstance(rope, dict):
            raise ConfigError(f"rope_parameters: expected an object, found {rope!r}")
        if rope is not None:
            data.update(_from_rope_parameters(rope))
        if data.get("attention_bias"):
            raise ConfigError("attention_bias: Qwen3-Next has no bias in its projections, found true")
        data.pop("attention_bias", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if k not in names and k not in _IGNORED_KEYS)
        if unknown:
            raise ConfigError(f"unknown config fields {unknown}; expected only Qwen3-Next keys")
        return cls(**{k: v for k, v in data.items() if k in names})

    # --------------------------------------------------------------------------------- writing
    def to_dict(self) -> dict[str, Any]:
        """A plain dict in the released ``config.json`` form plus ``layer_types``.

        ``transformers.Qwen3NextConfig(**cfg.to_dict())`` builds the same model.
        """
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def replace(self, **changes: Any) -> Qwen3NextConfig:
        """A copy with some fields changed; ``layer_types`` is re-derived unless it was set by hand."""
        if "layer_types" not in changes and self.layer_types == self.derived_layer_types():
            changes["layer_types"] = None
        return dataclasses.replace(self, **changes)

    # --------------------------------------------------------------------------------- derived
    def derived_layer_types(self) -> list[str]:
        """The reference's rule: every ``full_attention_interval``-th layer is full attention."""
        n = self.full_attention_interval
        if not isinstance(n, int) or n < 1:
            raise ConfigError("full_attention_interval: expected a positive integer, "
                              f"found {n!r}")
        return ["full_attention" if (i + 1) % n == 0 else "linear_attention"
                for i in range(self.num_hidden_layers)]

    @property
    def rope_type(self) -> str:
        return (self.rope_scaling or {}).get("rope_type", (self.rope_scaling or {}).get("type", "default"))

    @property
    def rope_parameters(self) -> dict[str, Any]:
        """The transformers-5 view of the rotary settings."""
        params = {"rope_type": "default", **(self.rope_scaling or {})}
        params.update(rope_theta=self.rope_theta, partial_rotary_factor=self.partial_rotary_factor)
        return params

    @property
    def rotary_dim(self) -> int:
        """How many of each attention head's dimensions are rotated (64 of 256 in the release)."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def linear_key_dim(self) -> int:
        return self.linear_num_key_heads * self.linear_key_head_dim

    @property
    def linear_value_dim(self) -> int:
        return self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def linear_conv_dim(self) -> int:
        """Channels of the DeltaNet short convolution: q, k and v side by side."""
        return 2 * self.linear_key_dim + self.linear_value_dim

    def is_moe_layer(self, layer_idx: int) -> bool:
        """The reference's rule for which layers use the sparse MoE block instead of a dense MLP."""
        return (
            layer_idx not in self.mlp_only_layers
            and self.num_experts > 0
            and (layer_idx + 1) % self.decoder_sparse_step == 0
        )

    # ------------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first field that cannot describe a working model.

        Types are checked first (:func:`_check_types`, also on construction), then values and the
        relations between fields."""
        _check_types(self)
        for name in _POSITIVE:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected a positive integer, found {getattr(self, name)!r}")
        for name in _NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: expected a non-negative integer, found {getattr(self, name)!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads: {self.num_attention_heads} query heads cannot be shared evenly "
                f"by num_key_value_heads={self.num_key_value_heads}"
            )
        if self.linear_num_value_heads % self.linear_num_key_heads:
            raise ConfigError(
                f"linear_num_value_heads: {self.linear_num_value_heads} value heads cannot be split evenly "
                f"over linear_num_key_heads={self.linear_num_key_heads}"
            )
        if len(self.layer_types) != self.num_hidden_layers:
            raise ConfigError(
                f"layer_types: expected {self.num_hidden_layers} entries (num_hidden_layers), "
                f"found {len(self.layer_types)}"
            )
        for i, kind in enumerate(self.layer_types):
            if kind not in LAYER_TYPES:
                raise ConfigError(f"layer_types[{i}]: unknown layer type {kind!r}; expected one of {LAYER_TYPES}")
        if not 0 < self.partial_rotary_factor <= 1:
            raise ConfigError(f"partial_rotary_factor: expected a value in (0, 1], found {self.partial_rotary_factor}")
        if self.head_dim * self.partial_rotary_factor != self.rotary_dim or self.rotary_dim % 2:
            raise ConfigError(
                f"partial_rotary_factor: head_dim {self.head_dim} x {self.partial_rotary_factor} must give an "
                f"even whole number of rotary dims, found {self.head_dim * self.partial_rotary_factor}"
            )
        if not self.rope_theta > 0:
            raise ConfigError(f"rope_theta: expected a positive number, found {self.rope_theta}")
        _check_rope_scaling(self.rope_scaling)
        if any(self.is_moe_layer(i) for i in range(self.num_hidden_layers)):
            if self.num_experts_per_tok < 1 or self.num_experts_per_tok > self.num_experts:
                raise ConfigError(
                    f"num_experts_per_tok: expected 1..num_experts={self.num_experts}, found {self.num_experts_per_tok}"
                )
            if self.moe_intermediate_size < 1:
                raise ConfigError(
                    f"moe_intermediate_size: expected a positive integer, found {self.moe_intermediate_size}"
                )
        if not all(self.is_moe_layer(i) for i in range(self.num_hidden_layers)) and self.intermediate_size < 1:
            raise ConfigError("intermediate_size: dense MLP layers need a positive width, found 0")
        for i in self.mlp_only_layers:
            if not 0 <= i < self.num_hidden_layers:
                raise ConfigError(f"mlp_only_layers: layer {i!r} is not in 0..{self.num_hidden_layers - 1}")
        if self.hidden_act != "silu":
            raise ConfigError(f"hidden_act: Qwen3-Next uses 'silu', found {self.hidden_act!r}")
        if self.use_sliding_window:
            raise ConfigError("use_sliding_window: Qwen3-Next has no sliding-window attention, found true")
        if not self.rms_norm_eps > 0:
            raise ConfigError(f"rms_norm_eps: expected a positive number, found {self.rms_norm_eps}")
        if self.torch_dtype not in TORCH_DTYPES:
            raise ConfigError(f"torch_dtype: expected one of {TORCH_DTYPES}, found {self.torch_dtype!r}")
        for name in ("bos_token_id", "eos_token_id"):
            ids = getattr(self, name)
            if any(i < 0 for i in (ids if isinstance(ids, list) else [] if ids is None else [ids])):
                raise ConfigError(f"{name}: expected token ids >= 0, found {ids!r}")


_POSITIVE = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
    "linear_value_head_dim", "linear_conv_kernel_dim", "full_attention_interval",
    "max_position_embeddings", "decoder_sparse_step",
)
_NON_NEGATIVE = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size",
                 "intermediate_size")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is not 1


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _is_list_of(check):
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


# every annotation of a Qwen3NextConfig field -> (what the message says is expected, the check)
_TYPE_CHECKS: dict[str, tuple[str, Any]] = {
    "int": ("an integer", _is_int),
    "float": ("a finite number", _is_number),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("a string", _is_str),
    "str | None": ("a string or null", lambda v: v is None or _is_str(v)),
    "dict | None": ("an object or null", lambda v: v is None or isinstance(v, dict)),
    "int | None": ("an integer or null", lambda v: v is None or _is_int(v)),
    "int | list[int] | None": ("an integer, a list of integers or null",
                               lambda v: v is None or _is_int(v) or _is_list_of(_is_int)(v)),
    "list[int]": ("a list of integers", _is_list_of(_is_int)),
    "list[str]": ("a list of strings", _is_list_of(_is_str)),
    "list[str] | None": ("a list of strings or null", lambda v: v is None or _is_list_of(_is_str)(v)),
}


def _check_types(cfg: Qwen3NextConfig) -> None:
    """Every field has the JSON type its annotation says (``"1e7"`` is not a number, ``true`` not an integer)."""
    for f in dataclasses.fields(cfg):
        expected, check = _TYPE_CHECKS[f.type]
        value = getattr(cfg, f.name)
        if not check(value):
            raise ConfigError(f"{f.name}: expected {expected}, found {value!r} ({type(value).__name__})")


# the rope_scaling keys the rotary embedding reads, with their types
_ROPE_SCALING_KEYS: dict[str, tuple[str, Any]] = {
    "rope_type": ("a string", _is_str),
    "type": ("a string", _is_str),
    "factor": ("a positive number", lambda v: _is_number(v) and v > 0),
    "original_max_position_embeddings": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "beta_fast": ("a number or null", lambda v: v is None or _is_number(v)),
    "beta_slow": ("a number or null", lambda v: v is None or _is_number(v)),
    "mscale": ("a number or null", lambda v: v is None or _is_number(v)),
    "mscale_all_dim": ("a number or null", lambda v: v is None or _is_number(v)),
    "attention_factor": ("a number or null", lambda v: v is None or _is_number(v)),
    "truncate": ("true or false", lambda v: isinstance(v, bool)),
}


def _check_rope_scaling(scaling: dict | None) -> None:
    if scaling is None:
        return
    for key, (expected, check) in _ROPE_SCALING_KEYS.items():
        if key in scaling and not check(scaling[key]):
            raise ConfigError(f"rope_scaling: {key!r}: expected {expected}, found {scaling[key]!r}")
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"rope_scaling: rope_type {rope_type!r} is not supported; expected one of {ROPE_TYPES}")
    if rope_type == "yarn":
        for key in ("factor", "original_max_position_embeddings"):
            if scaling.get(key) is None:
                raise ConfigError(f"rope_scaling: yarn needs {key!r}, found keys {sorted(scaling)}")


def _from_rope_parameters(rope: dict[str, Any]) -> dict[str, Any]:
    """Split transformers-5 ``rope_parameters`` into the released top-level keys."""
    rope = dict(rope)
    out: dict[str, Any] = {}
    if "rope_theta" in rope:
        out["rope_theta"] = rope.pop("rope_theta")
    if "partial_rotary_factor" in rope:
        out["partial_rotary_factor"] = rope.pop("partial_rotary_factor")
    out["rope_scaling"] = None if rope.get("rope_type", "default") == "default" else rope
    return out
