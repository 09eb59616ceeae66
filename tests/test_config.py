"""Qwen3NextConfig: the released values, derived layer types, round trips, and every validation error."""

import dataclasses
import json

import pytest
import transformers

from qwen3next import Qwen3NextConfig
from qwen3next.config import ConfigError
from qwen3next.reference import reference_config


def released() -> dict:
    return Qwen3NextConfig.full().to_dict()


def test_full_is_exactly_the_released_file(released_config_path):
    cfg = Qwen3NextConfig.full()
    for key, value in json.loads(released_config_path.read_text()).items():
        assert getattr(cfg, key) == value, key
    assert cfg == Qwen3NextConfig.from_json(released_config_path)


def test_released_values():
    cfg = Qwen3NextConfig.full()
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (2048, 48, 151936)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (16, 2, 256)
    assert (cfg.linear_num_key_heads, cfg.linear_num_value_heads) == (16, 32)
    assert (cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size) == (512, 10, 512)
    assert cfg.rotary_dim == 64 and cfg.rope_theta == 10_000_000
    assert cfg.linear_conv_dim == 8192 and cfg.linear_key_dim == 2048 and cfg.linear_value_dim == 4096


def test_layer_types_derived_like_the_reference():
    cfg = Qwen3NextConfig.full()
    full = [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"]
    assert full == list(range(3, 48, 4))
    assert cfg.layer_types.count("linear_attention") == 36
    ref = transformers.Qwen3NextConfig(**{**released(), "layer_types": None})
    assert ref.layer_types == cfg.layer_types
    for interval in (1, 2, 3, 5):
        ours = Qwen3NextConfig.tiny(full_attention_interval=interval, num_hidden_layers=10)
        ref = transformers.Qwen3NextConfig(**{**ours.to_dict(), "layer_types": None})
        assert ours.layer_types == ref.layer_types


def test_moe_layers_like_the_reference():
    cfg = Qwen3NextConfig.tiny(decoder_sparse_step=2, mlp_only_layers=[4])
    assert [cfg.is_moe_layer(i) for i in range(8)] == [False, True, False, True, False, True, False, True]
    assert all(Qwen3NextConfig.full().is_moe_layer(i) for i in range(48))


def test_tiny_keeps_the_hybrid_pattern():
    cfg = Qwen3NextConfig.tiny()
    assert cfg.layer_types[:4] == ["linear_attention"] * 3 + ["full_attention"]
    assert cfg.num_experts_per_tok < cfg.num_experts


@pytest.mark.parametrize("preset", ["full", "tiny"])
def test_to_dict_is_accepted_by_the_reference(preset):
    cfg = getattr(Qwen3NextConfig, preset)()
    ref = transformers.Qwen3NextConfig(**cfg.to_dict())
    assert ref.layer_types == cfg.layer_types
    assert ref.rope_parameters["rope_theta"] == cfg.rope_theta
    assert ref.rope_parameters["partial_rotary_factor"] == cfg.partial_rotary_factor
    for name in ["hidden_size", "num_experts", "num_experts_per_tok", "linear_num_value_heads", "head_dim",
                 "max_position_embeddings", "intermediate_size", "norm_topk_prob", "rms_norm_eps"]:
        assert getattr(ref, name) == getattr(cfg, name), name


def test_round_trip_through_the_transformers_5_form(tmp_path):
    """The form transformers 5 writes (rope_parameters, layer_types, dtype) loads back to the same config."""
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 262144}
    for cfg in [Qwen3NextConfig.full(), Qwen3NextConfig.full().replace(rope_scaling=yarn), Qwen3NextConfig.tiny()]:
        ref = reference_config(cfg)
        ref.save_pretrained(tmp_path)
        written = json.loads((tmp_path / "config.json").read_text())
        assert "rope_parameters" in written and "layer_types" in written
        back = Qwen3NextConfig.from_json(tmp_path)  # a checkpoint directory
        assert back.replace(transformers_version=None) == cfg.replace(transformers_version=None)


def test_explicit_layer_types_are_kept():
    types = ["full_attention"] + ["linear_attention"] * 3
    cfg = Qwen3NextConfig.tiny(num_hidden_layers=4, layer_types=types)
    assert cfg.layer_types == types
    assert cfg.replace(hidden_size=32).layer_types == types
    # derived layer types follow a change in depth
    assert len(Qwen3NextConfig.tiny().replace(num_hidden_layers=12).layer_types) == 12


def test_to_json_from_json(tmp_path):
    cfg = Qwen3NextConfig.tiny(norm_topk_prob=False)
    cfg.to_json(tmp_path / "c.json")
    assert Qwen3NextConfig.from_json(tmp_path / "c.json") == cfg


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(num_attention_heads=5, num_key_value_heads=2), "num_attention_heads"),
        (dict(linear_num_value_heads=3, linear_num_key_heads=2), "linear_num_value_heads"),
        (dict(layer_types=["linear_attention"] * 7 + ["sliding_attention"]), "layer_types[7]"),
        (dict(layer_types=["linear_attention"] * 3), "layer_types"),
        (dict(head_dim=16, partial_rotary_factor=0.375), "partial_rotary_factor"),  # 6 dims: fine
        (dict(head_dim=20, partial_rotary_factor=0.25), "partial_rotary_factor"),  # 5 rotary dims: odd
        (dict(partial_rotary_factor=0.0), "partial_rotary_factor"),
        (dict(num_experts_per_tok=9), "num_experts_per_tok"),
        (dict(num_experts_per_tok=0), "num_experts_per_tok"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(num_hidden_layers=-1), "num_hidden_layers"),
        (dict(full_attention_interval=0), "full_attention_interval"),
        (dict(mlp_only_layers=[8]), "mlp_only_layers"),
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "rope_scaling"),
        (dict(rope_scaling={"rope_type": "yarn"}), "rope_scaling"),
        (dict(rope_theta=0.0), "rope_theta"),
        (dict(use_sliding_window=True), "use_sliding_window"),
        (dict(rms_norm_eps=0.0), "rms_norm_eps"),
    ],
)
def test_invalid_configs_name_the_field(changes, field):
    if changes == dict(head_dim=16, partial_rotary_factor=0.375):
        assert Qwen3NextConfig.tiny(**changes).rotary_dim == 6  # even: valid
        return
    with pytest.raises(ConfigError) as err:
        Qwen3NextConfig.tiny(**changes)
    assert str(err.value).startswith(field), str(err.value)


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Qwen3NextConfig.from_json(tmp_path)
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        Qwen3NextConfig.from_json(bad)
    bad.write_text(json.dumps({**released(), "num_experts_per_tok": 1000}))
    with pytest.raises(ConfigError, match=r"config.json: num_experts_per_tok"):
        Qwen3NextConfig.from_json(bad)
    bad.write_text(json.dumps({**released(), "model_type": "llama"}))
    with pytest.raises(ConfigError, match="model_type"):
        Qwen3NextConfig.from_json(bad)
    bad.write_text(json.dumps({**released(), "attention_bias": True}))
    with pytest.raises(ConfigError, match="attention_bias"):
        Qwen3NextConfig.from_json(bad)
    bad.write_text(json.dumps({**released(), "num_expert": 3}))
    with pytest.raises(ConfigError, match="num_expert"):
        Qwen3NextConfig.from_json(bad)


@pytest.mark.parametrize(
    "field, value",
    [
        ("rope_scaling", "yarn"), ("rope_scaling", ["yarn"]), ("rope_theta", "1e7"), ("rope_theta", None),
        ("rope_theta", True), ("rope_theta", float("nan")), ("rope_theta", float("inf")),
        ("num_hidden_layers", None), ("num_hidden_layers", True), ("num_hidden_layers", 4.0),
        ("num_hidden_layers", "4"), ("hidden_size", False), ("num_experts", None), ("num_experts", 8.5),
        ("full_attention_interval", "4"), ("partial_rotary_factor", "0.25"), ("rms_norm_eps", [1e-6]),
        ("norm_topk_prob", "yes"), ("norm_topk_prob", 1), ("tie_word_embeddings", None), ("use_sliding_window", 0),
        ("hidden_act", None), ("torch_dtype", 16), ("torch_dtype", "int8"), ("mlp_only_layers", 3),
        ("mlp_only_layers", [True]), ("layer_types", "linear_attention"), ("layer_types", [1] * 8),
        ("eos_token_id", "2"), ("eos_token_id", [1, "2"]), ("bos_token_id", 1.0), ("architectures", "Qwen"),
        ("max_position_embeddings", -4096), ("decoder_sparse_step", None), ("attention_dropout", "0"),
        ("initializer_range", None), ("router_aux_loss_coef", "0.001"), ("output_router_logits", None),
        ("transformers_version", 5), ("model_type", None), ("use_cache", "true"),
    ],
)
def test_wrongly_typed_values_name_the_field(field, value, released_config_path):
    """Every field of the file, given a value of the wrong type: a ConfigError that starts with its name
    (from the released file, which has no layer_types, and from the transformers-5 form, which has them)."""
    for raw in (json.loads(released_config_path.read_text()), released()):
        with pytest.raises(ConfigError) as err:
            Qwen3NextConfig.from_dict({**raw, field: value})
        assert str(err.value).startswith(field), str(err.value)


@pytest.mark.parametrize(
    "scaling",
    [{"rope_type": 1, "factor": 2.0}, {"rope_type": "yarn", "factor": "4"},
     {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": "4096"},
     {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096, "beta_fast": "32"},
     {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096, "truncate": "no"},
     {"rope_type": "yarn", "factor": float("inf"), "original_max_position_embeddings": 4096}],
)
def test_wrongly_typed_rope_scaling_entries_name_the_key(scaling):
    with pytest.raises(ConfigError, match=r"^rope_scaling"):
        Qwen3NextConfig.from_dict({**released(), "rope_scaling": scaling})


def test_every_field_has_a_type_check():
    """No field can slip through: each annotation of the dataclass is one the type check knows."""
    from qwen3next.config import _TYPE_CHECKS

    for f in dataclasses.fields(Qwen3NextConfig):
        assert f.type in _TYPE_CHECKS, f"{f.name}: {f.type}"


def test_wrongly_typed_json_files_name_the_file_and_the_field(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({**released(), "rope_scaling": "yarn"}))
    with pytest.raises(ConfigError, match=r"config.json: rope_scaling: expected an object"):
        Qwen3NextConfig.from_json(bad)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match=r"config.json: expected a JSON object, found list"):
        Qwen3NextConfig.from_json(bad)
    bad.write_bytes(b'{"hidden_size": "\xff"}')
    with pytest.raises(ConfigError, match=r"config.json: not UTF-8"):
        Qwen3NextConfig.from_json(bad)
    bad.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match=r"config.json: nested too deeply"):
        Qwen3NextConfig.from_json(bad)
