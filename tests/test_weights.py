"""Tests of qwen3next.checkpoint, .fp8, .offload, .weights and .hub: real-format checkpoints written by the reference.

The reference (``transformers.Qwen3NextForCausalLM.save_pretrained``) writes the per-expert Hub layout,
sharded or in one file; our loader must give the same logits. Every kind of broken checkpoint the
issue lists is its own test, and each error must name the file, tensor or field at fault.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from qwen3next.checkpoint import INDEX_FILE, check_checkpoint, open_checkpoint
from qwen3next.config import Qwen3NextConfig
from qwen3next.fp8 import dequantize_fp8, quantize_fp8, write_fp8_checkpoint
from qwen3next.hub_layout import component_of, hub_layout, mtp_layout
from qwen3next.inspection import describe, format_summary
from qwen3next.model import Qwen3NextForCausalLM
from qwen3next.reference import max_abs_diff, random_reference_model
from qwen3next.safetensors_file import CheckpointError, MissingFileError, read_header, read_tensor
from qwen3next.weights import load_mtp

CFG = Qwen3NextConfig.tiny(num_hidden_layers=4)  # 3 Gated DeltaNet layers + 1 gated attention layer


@pytest.fixture(scope="module")
def ref():
    return random_reference_model(CFG)


@pytest.fixture(scope="module")
def ids():
    torch.manual_seed(1)
    return torch.randint(0, CFG.vocab_size, (2, 9))


@pytest.fixture(scope="module")
def ref_logits(ref, ids):
    with torch.no_grad():
        return ref(ids).logits


@pytest.fixture(scope="module")
def sharded(ref, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sharded")
    ref.save_pretrained(d, max_shard_size="200KB")
    return d


@pytest.fixture(scope="module")
def single(ref, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("single")
    ref.save_pretrained(d)
    return d


@pytest.fixture
def broken(sharded, tmp_path) -> Path:
    """A private copy of the sharded checkpoint that a test may damage."""
    d = tmp_path / "ckpt"
    shutil.copytree(sharded, d)
    return d


def _index(d: Path) -> dict:
    return json.loads((d / INDEX_FILE).read_text())


def _shard_of(d: Path, name: str) -> Path:
    return d / _index(d)["weight_map"][name]


def _rewrite_shard(d: Path, shard: Path, change) -> None:
    """Load a shard, let ``change(tensors)`` edit the dict, write it back and update the index."""
    tensors = load_file(shard)
    change(tensors)
    save_file(tensors, shard, metadata={"format": "pt"})
    index = _index(d)
    wm = {k: v for k, v in index["weight_map"].items() if v != shard.name}
    wm.update({k: shard.name for k in tensors})
    index["weight_map"] = wm
    (d / INDEX_FILE).write_text(json.dumps(index))


def _edit_config(d: Path, **changes) -> None:
    raw = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            raw.pop(k, None)
        else:
            raw[k] = v
    (d / "config.json").write_text(json.dumps(raw))


# ------------------------------------------------------------------------------ the Hub layout
def test_reference_writes_per_expert_hub_keys(sharded):
    index = _index(sharded)
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3, "the fixture should be sharded"
    assert "model.layers.0.mlp.experts.7.down_proj.weight" in index["weight_map"]
    assert not any(k.endswith("experts.gate_up_proj") for k in index["weight_map"])  # not the fused layout
    layout = hub_layout(CFG)
    assert set(index["weight_map"]) == set(layout)
    ckpt = open_checkpoint(sharded)
    assert {k: v.shape for k, v in ckpt.tensors.items()} == {k: e.shape for k, e in layout.items()}


@pytest.mark.parametrize("overrides", [{}, dict(num_hidden_layers=8, num_experts=16, mlp_only_layers=[2],
                                                 full_attention_interval=2)])
def test_hub_layout_is_the_models_state_dict(overrides):
    from qwen3next.model import Qwen3NextForCausalLM

    cfg = Qwen3NextConfig.tiny(**overrides)
    with torch.device("meta"):
        model = Qwen3NextForCausalLM(cfg)
    expected = {k: e.shape for k, e in hub_layout(cfg).items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected


def test_hub_layout_of_the_release_matches_the_published_counts():
    # the book's reference page, "Checkpoint layout": 75,944 tensors and 81,324,862,720 parameters,
    # the MTP module included
    cfg = Qwen3NextConfig.full()
    layout, mtp = hub_layout(cfg), mtp_layout(cfg)
    from qwen3next.accounting import parameter_counts

    model_params = sum(math.prod(e.shape) for e in layout.values())
    assert model_params == parameter_counts(cfg).total == 79_674_391_296
    assert sum(math.prod(e.shape) for e in mtp.values()) == 1_650_471_424
    assert len(layout) + len(mtp) == 75_944
    assert layout["model.layers.3.self_attn.q_proj.weight"].shape == (8192, 2048)
    assert layout["model.layers.0.linear_attn.in_proj_qkvz.weight"].shape == (12288, 2048)


# ------------------------------------------------------------------------ safetensors by hand
def test_header_read_by_hand_agrees_with_safe_open(sharded):
    shard = _shard_of(sharded, "model.layers.0.linear_attn.in_proj_qkvz.weight")
    tensors, metadata = read_header(shard)
    assert metadata == {"format": "pt"}
    with safe_open(shard, framework="pt") as f:
        assert set(f.keys()) == set(tensors)
        for name, info in tensors.items():
            t = f.get_tensor(name)
            assert tuple(t.shape) == info.shape and t.dtype == info.torch_dtype
            assert torch.equal(read_tensor(info), t)
    # the data region starts right after the header, and tensors tile it without gaps
    (n,) = struct.unpack("<Q", shard.read_bytes()[:8])
    starts = sorted(i.start for i in tensors.values())
    assert starts[0] == 8 + n
    assert max(i.end for i in tensors.values()) == shard.stat().st_size


# ------------------------------------------------------------------------------ equal logits
@pytest.mark.parametrize("layout", ["sharded", "single"])
def test_logits_equalrandom_reference_model(layout, request, ids, ref_logits):
    d = request.getfixturevalue(layout)
    if layout == "single":
        assert (d / "model.safetensors").is_file() and not (d / INDEX_FILE).exists()
    model = Qwen3NextForCausalLM.from_pretrained(d)
    assert not model.training
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == ref_logits.shape
    assert max_abs_diff(logits, ref_logits) < 1e-5


def test_from_pretrained_is_the_loader(sharded, ref):
    from qwen3next.model import Qwen3NextForCausalLM

    model = Qwen3NextForCausalLM.from_pretrained(sharded)
    ours, theirs = model.state_dict(), ref.state_dict()
    assert torch.equal(ours["model.layers.2.linear_attn.A_log"], theirs["model.layers.2.linear_attn.A_log"])
    gate_up = theirs["model.layers.1.mlp.experts.gate_up_proj"]  # (E, 2I, H) in the reference's memory
    assert torch.equal(ours["model.layers.1.mlp.experts.5.gate_proj.weight"], gate_up[5, :CFG.moe_intermediate_size])
    assert torch.equal(ours["model.layers.1.mlp.experts.5.up_proj.weight"], gate_up[5, CFG.moe_intermediate_size:])


def test_dtype_conversion(sharded, ref):
    model = Qwen3NextForCausalLM.from_pretrained(sharded, dtype=torch.bfloat16)
    sd = model.state_dict()
    assert {t.dtype for t in sd.values()} == {torch.bfloat16}
    assert torch.equal(sd["lm_head.weight"], ref.lm_head.weight.detach().to(torch.bfloat16))
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32  # recomputed, not loaded


def test_default_dtype_is_the_checkpoints(ref, tmp_path, ids):
    ref16 = random_reference_model(CFG).to(torch.bfloat16)
    ref16.save_pretrained(tmp_path, max_shard_size="300KB")
    model = Qwen3NextForCausalLM.from_pretrained(tmp_path)
    assert {t.dtype for t in model.state_dict().values()} == {torch.bfloat16}
    with torch.no_grad():
        diff = max_abs_diff(model(ids).logits, ref16(ids).logits)
    assert diff < 0.05  # same bf16 weights; bf16 arithmetic differs in rounding only


def test_bad_dtype_argument(sharded):
    with pytest.raises(CheckpointError, match="dtype"):
        Qwen3NextForCausalLM.from_pretrained(sharded, dtype=torch.int8)


# ------------------------------------------------------------------------------------------ FP8
def test_fp8_block_round_trip_within_fp8_error():
    torch.manual_seed(0)
    w = torch.randn(300, 200) * torch.logspace(-2, 1, 200)  # columns of very different sizes
    q, scale_inv = quantize_fp8(w, (128, 128))
    assert q.dtype == torch.float8_e4m3fn and scale_inv.shape == (3, 2)
    back = dequantize_fp8(q, scale_inv, (128, 128), torch.float32)
    s = scale_inv.repeat_interleave(128, 0)[:300].repeat_interleave(128, 1)[:, :200]
    # e4m3: 3 mantissa bits (relative error <= 2^-4 after rounding); below 2^-6 the step is 2^-9 (x scale)
    assert ((back - w).abs() <= 2**-4 * w.abs() + 2**-9 * s).all()
    assert (back - w).abs().max() > 0  # it really was quantised
    # each block's largest value lands exactly on the largest e4m3 value
    assert q.float().abs().max().item() == 448.0


def test_fp8_relative_error_bound_holds_only_in_the_normal_range():
    """2^-4 relative holds where |W / s| >= 2^-6 (e4m3's normal range); below it the step is a fixed
    2^-9 s, so the error is at most 2^-10 s in absolute terms and up to 100% relative (rounding to 0)."""
    torch.manual_seed(0)
    w = torch.randn(1024, 1024)  # 1,048,576 Gaussian weights
    q, scale_inv = quantize_fp8(w, (128, 128))
    back = dequantize_fp8(q, scale_inv, (128, 128), torch.float32)
    s = scale_inv.repeat_interleave(128, 0).repeat_interleave(128, 1)
    err, rel = (back - w).abs(), (back - w).abs() / w.abs()
    normal = (w / s).abs() >= 2**-6
    assert (rel[normal] <= 2**-4).all() and rel[normal].max() > 0.058  # 1/17: the worst case, reached
    assert (err <= torch.maximum(2**-4 * w.abs(), 2**-10 * s) * (1 + 2**-20)).all()  # the whole bound
    assert int((~normal).sum()) == 114 and int((rel > 2**-4).sum()) == 55  # the numbers the chapter quotes
    assert ((back == 0) & (w != 0)).any()


def test_fp8_checkpoint_dequantises_within_fp8_error(sharded, ref, tmp_path, ids, ref_logits):
    d = write_fp8_checkpoint(sharded, tmp_path / "fp8", block=(16, 16))
    ckpt = open_checkpoint(d)
    assert ckpt.tensors["model.layers.0.mlp.experts.3.gate_proj.weight"].dtype == "F8_E4M3"
    assert ckpt.tensors["model.layers.0.mlp.experts.3.gate_proj.weight_scale_inv"].shape == (2, 4)
    assert ckpt.tensors["model.embed_tokens.weight"].dtype == "BF16"  # kept like the release keeps it
    assert ckpt.tensors["model.layers.0.mlp.gate.weight"].dtype == "BF16"
    model = Qwen3NextForCausalLM.from_pretrained(d, dtype=torch.float32)
    theirs = ref.state_dict()
    w = model.state_dict()["model.layers.3.self_attn.q_proj.weight"]
    w0 = theirs["model.layers.3.self_attn.q_proj.weight"]
    # bf16 rounding of the scales plus e4m3 rounding: within 2^-4 relative, plus the subnormal floor
    assert ((w - w0).abs() <= 2**-4 * w0.abs() + 2**-9 * w0.abs().max() + 1e-6).all()
    assert max_abs_diff(w, w0) > 0
    gate_up = theirs["model.layers.2.mlp.experts.gate_up_proj"]
    e = model.state_dict()["model.layers.2.mlp.experts.6.up_proj.weight"]
    assert (e - gate_up[6, CFG.moe_intermediate_size:]).abs().max() <= 2**-4 * gate_up.abs().max()
    with torch.no_grad():
        logits = model(ids).logits
    rel = (logits - ref_logits).norm() / ref_logits.norm()
    assert rel < 0.1
    # the offloaded path dequantises experts too, and agrees with loading everything
    off = Qwen3NextForCausalLM.from_pretrained(d, dtype=torch.float32, offload_experts=True)
    with torch.no_grad():
        assert max_abs_diff(off(ids).logits, logits) < 1e-5
    text = format_summary(describe(d))
    assert "fp8 scales" in text and "F8_E4M3" in text and '"weight_block_size": [16, 16]' in text


def test_fp8_weight_without_its_scale_is_refused(sharded, tmp_path):
    d = write_fp8_checkpoint(sharded, tmp_path / "fp8", block=(16, 16))
    name = "model.layers.1.linear_attn.out_proj.weight"
    _rewrite_shard(d, _shard_of(d, name), lambda t: t.pop(name + "_scale_inv"))
    with pytest.raises(CheckpointError, match=r"out_proj.weight.*FP8.*weight_scale_inv.*missing"):
        Qwen3NextForCausalLM.from_pretrained(d)


def test_fp8_scales_of_the_wrong_block_size_are_refused(sharded, tmp_path):
    d = write_fp8_checkpoint(sharded, tmp_path / "fp8", block=(16, 16))
    _edit_config(d, quantization_config={"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]})
    with pytest.raises(CheckpointError, match=r"weight_scale_inv' in model-.*: expected shape \[\d, 1\] \(one scale "
                                              r"per 128x128 block of .*found \[\d+, 4\]"):
        Qwen3NextForCausalLM.from_pretrained(d)


# --------------------------------------------------------------------------------- offloading
def test_offloaded_experts_give_the_same_logits(sharded, ids):
    full = Qwen3NextForCausalLM.from_pretrained(sharded)
    off = Qwen3NextForCausalLM.from_pretrained(sharded, offload_experts=True, expert_cache_size=5)
    assert not any(".experts." in k for k in off.state_dict())  # experts stay on disk
    assert len(off.model.layers[0].mlp.experts) == CFG.num_experts
    with torch.no_grad():
        assert max_abs_diff(off(ids).logits, full(ids).logits) < 1e-6
        store = off.expert_store
        assert len(store.cache) <= 5 and store.misses > 0
        first_misses = store.misses
        # one token touches at most top-k experts in each of the 4 layers
        off(ids[:1, :1])
        assert store.misses - first_misses <= CFG.num_experts_per_tok * CFG.num_hidden_layers
    assert store.bytes_read == store.misses * 3 * CFG.hidden_size * CFG.moe_intermediate_size * 4


def test_expert_cache_hits_when_it_holds_a_whole_forward(sharded, ids):
    off = Qwen3NextForCausalLM.from_pretrained(sharded, offload_experts=True,
                                               expert_cache_size=CFG.num_experts * CFG.num_hidden_layers)
    with torch.no_grad():
        a = off(ids).logits
        misses = off.expert_store.misses
        b = off(ids).logits
    assert torch.equal(a, b)
    assert off.expert_store.misses == misses and off.expert_store.hits >= misses  # second pass all from cache


def test_expert_cache_size_must_be_positive(sharded):
    with pytest.raises(ValueError, match="expert_cache_size"):
        Qwen3NextForCausalLM.from_pretrained(sharded, offload_experts=True, expert_cache_size=0)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads resident sizes from /proc (Linux)")
def test_offloading_lowers_resident_and_peak_memory(tmp_path):
    from qwen3next.measure import measure_modes_in_subprocess

    # wide enough that the experts dominate: 2 layers x 64 experts of 3 x 256 x 384 floats = 144 MiB
    cfg = Qwen3NextConfig.tiny(num_hidden_layers=2, hidden_size=256, num_experts=64, moe_intermediate_size=384,
                               full_attention_interval=2, vocab_size=256)
    random_reference_model(cfg).save_pretrained(tmp_path, max_shard_size="20MB")
    s = describe(tmp_path)
    runs = measure_modes_in_subprocess(tmp_path, {"full": (False, None), "off": (True, 8)}, new_tokens=3, prompt_len=8)
    full, off = runs["full"], runs["off"]
    weights, non_expert = 4 * s.model_params, 4 * (s.model_params - s.expert_params)
    cache = 8 * 3 * 256 * 384 * 4
    assert full["resident"] > 0.9 * weights  # loading everything: every weight is resident
    assert off["resident"] < non_expert + 8 * 2**20  # the rest, and nothing of the experts yet
    assert off["resident"] < 0.25 * full["resident"]
    assert off["peak"] < non_expert + cache + 32 * 2**20  # decoding adds the 8 cached experts and activations
    assert off["peak"] < 0.5 * full["peak"]
    assert off["tokens"] == full["tokens"] and off["misses"] > 0 and off["cached_experts"] <= 8


# ----------------------------------------------------------------------------------------- MTP
def _add_mtp(d: Path, cfg: Qwen3NextConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    mtp = {k: torch.randn(e.shape) for k, e in mtp_layout(cfg).items()}
    save_file(mtp, d / "mtp.safetensors", metadata={"format": "pt"})
    index = _index(d)
    index["weight_map"].update({k: "mtp.safetensors" for k in mtp})
    (d / INDEX_FILE).write_text(json.dumps(index))
    return mtp


def test_mtp_tensors_are_set_aside_and_readable_alone(broken, ids, ref_logits):
    written = _add_mtp(broken, CFG)
    model = Qwen3NextForCausalLM.from_pretrained(broken)
    assert not any(k.startswith("mtp.") for k in model.state_dict())
    with torch.no_grad():
        assert max_abs_diff(model(ids).logits, ref_logits) < 1e-5
    mtp = load_mtp(broken)
    assert set(mtp) == set(written) and "mtp.fc.weight" in mtp
    assert all(torch.equal(mtp[k], written[k]) for k in written)
    assert describe(broken).tensors["mtp"] == len(written)


# -------------------------------------------------------------------------------- bad input
def test_missing_tensor(broken):
    name = "model.layers.2.linear_attn.out_proj.weight"
    _rewrite_shard(broken, _shard_of(broken, name), lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.2\.linear_attn\.out_proj\.weight' "
                                              r"\[hidden_size=64, linear_value_dim=64\]"):
        Qwen3NextForCausalLM.from_pretrained(broken)


def test_unexpected_tensor(broken):
    name = "model.layers.0.mlp.gate.weight"
    extra = {"model.layers.0.mlp.gate.bias": torch.zeros(8)}
    _rewrite_shard(broken, _shard_of(broken, name), lambda t: t.update(extra))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.0\.mlp\.gate\.bias' in "
                                              r"model-\d+-of-\d+\.safetensors"):
        Qwen3NextForCausalLM.from_pretrained(broken)


def test_wrong_shape(broken):
    name = "model.layers.3.self_attn.k_proj.weight"
    _rewrite_shard(broken, _shard_of(broken, name), lambda t: t.update({name: torch.zeros(16, 64)}))
    with pytest.raises(CheckpointError) as err:
        Qwen3NextForCausalLM.from_pretrained(broken)
    msg = str(err.value)
    assert "'model.layers.3.self_attn.k_proj.weight' in model-" in msg
    assert "expected shape [num_key_value_heads*head_dim=32, hidden_size=64]" in msg and "found [16, 64]" in msg


def test_wrong_dtype(broken):
    name = "model.norm.weight"
    _rewrite_shard(broken, _shard_of(broken, name), lambda t: t.update({name: torch.zeros(64, dtype=torch.int32)}))
    with pytest.raises(CheckpointError, match=r"'model\.norm\.weight' in .*expected a float dtype.*found I32"):
        Qwen3NextForCausalLM.from_pretrained(broken)


def test_shard_listed_but_absent(broken):
    shard = _shard_of(broken, "lm_head.weight")
    shard.unlink()
    with pytest.raises(MissingFileError, match=rf"lists shard\(s\) \['{shard.name}'\] but they are not in"):
        Qwen3NextForCausalLM.from_pretrained(broken)


def test_index_and_shard_disagree(broken):
    index = _index(broken)
    actual = index["weight_map"]["model.norm.weight"]
    other = next(f for f in sorted(set(index["weight_map"].values())) if f != actual)
    index["weight_map"]["model.norm.weight"] = other
    (broken / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError,
                       match=rf"says tensor 'model\.norm\.weight' is in {other}, but it is in {actual}"):
        Qwen3NextForCausalLM.from_pretrained(broken)


def test_truncated_shard(broken):
    shard = _shard_of(broken, "model.embed_tokens.weight")
    data = shard.read_bytes()
    shard.write_bytes(data[:-1000])
    with pytest.raises(CheckpointError, match=rf"{shard.name}: truncated: tensor '.*' ends at data byte"):
        Qwen3NextForCausalLM.from_pretrained(broken)


@pytest.mark.parametrize("damage", ["garbage json", "huge length", "length past the end", "empty file", "bad entry"])
def test_corrupt_header(broken, damage):
    shard = _shard_of(broken, "model.layers.1.linear_attn.in_proj_ba.weight")
    data = bytearray(shard.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    if damage == "garbage json":
        data[8:8 + 20] = b"\xff" * 20
        expected = "corrupt header: not UTF-8"
    elif damage == "huge length":
        data[:8] = struct.pack("<Q", 2**40)
        expected = "corrupt header: its length field says"
    elif damage == "length past the end":
        data[:8] = struct.pack("<Q", len(data))
        expected = "truncated or corrupt header"
    elif damage == "empty file":
        data = bytearray(b"\x01\x02")
        expected = "too short for a safetensors file"
    else:
        header = json.loads(data[8:8 + n])
        key = next(k for k in header if k != "__metadata__")
        header[key]["data_offsets"][1] += 4
        raw = json.dumps(header).encode()
        data = bytearray(struct.pack("<Q", len(raw)) + raw + bytes(data[8 + n:]))
        expected = "data_offsets span"
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        Qwen3NextForCausalLM.from_pretrained(broken)
    assert shard.name in str(err.value) and expected in str(err.value)


@pytest.mark.parametrize("field,value,found", [("hidden_size", 96, 64), ("num_experts", 6, 8),
                                                ("vocab_size", 1000, 512)])
def test_config_that_does_not_match_the_weights(broken, field, value, found):
    _edit_config(broken, **{field: value})
    with pytest.raises(CheckpointError) as err:
        Qwen3NextForCausalLM.from_pretrained(broken)
    msg = str(err.value)
    assert "config.json" in msg and f"{field}: config.json has {value}, the weights have {found}" in msg


def test_config_with_fewer_layers_than_the_weights(broken):
    _edit_config(broken, num_hidden_layers=2, layer_types=None)
    with pytest.raises(CheckpointError, match=r"(?s)unexpected tensor 'model\.layers\.[23]\..*num_hidden_layers: "
                                              r"config.json has 2, the weights have 4 layers"):
        Qwen3NextForCausalLM.from_pretrained(broken)


def test_config_with_other_layer_types(broken):
    _edit_config(broken, full_attention_interval=2, layer_types=None)
    with pytest.raises(CheckpointError, match=r"(?s)layer_types\[1\].*config.json says full_attention, the weights "
                                              r"hold a linear_attention layer"):
        Qwen3NextForCausalLM.from_pretrained(broken)


def test_invalid_config_field_is_named(broken):
    _edit_config(broken, num_key_value_heads=3)
    with pytest.raises(CheckpointError, match=r"config.json: num_attention_heads: 4 query heads cannot be shared"):
        Qwen3NextForCausalLM.from_pretrained(broken)


def test_missing_config(broken):
    (broken / "config.json").unlink()
    with pytest.raises(MissingFileError, match=r"config.json is missing"):
        Qwen3NextForCausalLM.from_pretrained(broken)


def test_no_weights_at_all(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CFG.to_dict()))
    with pytest.raises(MissingFileError,
                       match=r"no weights: expected model.safetensors.index.json .* or model.safetensors"):
        Qwen3NextForCausalLM.from_pretrained(tmp_path)


class _Trap:
    """Unpickling this would create a marker file: proof that a pickle was (or was not) executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_only_checkpoint_is_refused_unopened(tmp_path, monkeypatch):
    marker = tmp_path / "pickle_was_executed"
    (tmp_path / "config.json").write_text(json.dumps(CFG.to_dict()))
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))

    def forbidden(*args, **kwargs):
        raise AssertionError("a pickle loader was called")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    with pytest.raises(CheckpointError, match=r"only a pickle checkpoint \(pytorch_model.bin\).*refused"):
        Qwen3NextForCausalLM.from_pretrained(tmp_path)
    assert not marker.exists()


def test_not_a_directory(tmp_path):
    with pytest.raises(MissingFileError, match="not a checkpoint directory"):
        Qwen3NextForCausalLM.from_pretrained(tmp_path / "nowhere")


def test_errors_list_every_problem_before_allocating(broken, monkeypatch):
    import safetensors

    a, b = "model.layers.0.linear_attn.A_log", "model.layers.1.mlp.shared_expert.up_proj.weight"
    _rewrite_shard(broken, _shard_of(broken, a), lambda t: t.pop(a))
    _rewrite_shard(broken, _shard_of(broken, b), lambda t: t.update({b: torch.zeros(3, 3)}))

    def no_reading(*args, **kwargs):
        raise AssertionError("tensor data was read before validation finished")

    monkeypatch.setattr(safetensors, "safe_open", no_reading)
    with pytest.raises(CheckpointError) as err:
        Qwen3NextForCausalLM.from_pretrained(broken)
    msg = str(err.value)
    assert "(2 problems)" in msg and a in msg and b in msg


def test_check_checkpoint_returns_a_plan(sharded):
    plan = check_checkpoint(open_checkpoint(sharded))
    assert set(plan.layout) == set(hub_layout(CFG)) and plan.scales == {} and plan.mtp == []


# ------------------------------------------------------------------------------------- inspect
def test_describe_counts_by_component(sharded):
    s = describe(sharded)
    layout = hub_layout(CFG)
    for comp in ("embedding", "routed experts", "deltanet", "attention", "router", "shared expert", "norms"):
        names = [k for k in layout if component_of(k) == comp]
        assert s.tensors[comp] == len(names) > 0
        assert s.params[comp] == sum(math.prod(layout[k].shape) for k in names)
        assert s.bytes[comp] == 4 * s.params[comp]
    assert s.model_params == sum(math.prod(e.shape) for e in layout.values())
    assert s.dtypes == {"F32": len(layout)}
    mem = s.memory(2)
    expert = 3 * CFG.hidden_size * CFG.moe_intermediate_size * 2
    assert mem["load everything"] == 2 * s.model_params
    assert mem["offload experts"] == 2 * (s.model_params - s.expert_params) + CFG.num_experts_per_tok * 4 * expert
    text = format_summary(s)
    assert "routed experts" in text and f"{s.model_params:,}" in text


# ----------------------------------------------------------------------------------------- hub
def test_download_passes_the_right_arguments(monkeypatch, tmp_path):
    import huggingface_hub

    from qwen3next import hub

    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    path = hub.download("Qwen/Qwen3-Next-80B-A3B-Instruct", revision="abc123", allow_patterns=["*.json"])
    assert path == tmp_path
    assert calls[-1]["repo_id"] == "Qwen/Qwen3-Next-80B-A3B-Instruct"
    assert calls[-1]["revision"] == "abc123" and calls[-1]["allow_patterns"] == ["*.json"]
    hub.download("instruct-fp8")
    assert calls[-1]["repo_id"] == "Qwen/Qwen3-Next-80B-A3B-Instruct-FP8" and calls[-1]["revision"] is None
    assert "*.safetensors" in calls[-1]["allow_patterns"] and not any(".bin" in p for p in calls[-1]["allow_patterns"])
    with pytest.raises(ValueError, match="repo_id"):
        hub.download("not-a-repo")
    assert len(calls) == 2


def test_dequantize_refuses_scales_of_the_wrong_shape():
    q, scale_inv = quantize_fp8(torch.randn(40, 20), (16, 16))
    assert scale_inv.shape == (3, 2)
    with pytest.raises(ValueError, match=r"scale_inv: expected shape \[3, 2\].*found \[2, 2\]"):
        dequantize_fp8(q, scale_inv[:2], (16, 16))
    with pytest.raises(ValueError, match="w: expected a 2-D weight"):
        quantize_fp8(torch.randn(4, 4, 4))
    with pytest.raises(ValueError, match="block: expected two positive integers"):
        quantize_fp8(torch.randn(4, 4), (0, 16))
