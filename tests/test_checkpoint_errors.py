"""Every bad checkpoint input is caught by our own checks, with the file (and tensor, field) named.

Never a bare ``safetensors`` error, ``UnicodeDecodeError`` or ``RecursionError``: headers, the shard
index and config.json are damaged in every way the format allows, and a fuzzer checks that whatever the
``safetensors`` library refuses, our header reader refuses first (and that what we accept, it reads the same).
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from qwen3next.checkpoint import check_checkpoint, open_checkpoint
from qwen3next.config import Qwen3NextConfig
from qwen3next.fp8 import write_fp8_checkpoint
from qwen3next.model import Qwen3NextForCausalLM
from qwen3next.safetensors_file import CheckpointError, read_header, read_tensor
from qwen3next.weights import load_mtp, load_weights

CFG = Qwen3NextConfig.tiny(num_hidden_layers=4)
INDEX = "model.safetensors.index.json"


def _write_checkpoint(d: Path, state: dict[str, torch.Tensor], cfg: Qwen3NextConfig = CFG, shards: int = 2) -> Path:
    """A Hub-layout checkpoint: config.json, ``shards`` safetensors files and their index."""
    d.mkdir(parents=True, exist_ok=True)
    names = sorted(state)
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n].contiguous() for n in names[s::shards]}
        save_file(part, d / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    (d / INDEX).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps(cfg.to_dict()))
    return d


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in Qwen3NextForCausalLM(CFG).state_dict().items()}


@pytest.fixture(scope="module")
def good(state, tmp_path_factory) -> Path:
    return _write_checkpoint(tmp_path_factory.mktemp("good"), state)


@pytest.fixture
def ckpt(good, tmp_path) -> Path:
    """A private copy that a test may damage."""
    return Path(shutil.copytree(good, tmp_path / "ckpt"))


def _shard(d: Path) -> Path:
    return sorted(d.glob("*.safetensors"))[0]


def _split(path: Path) -> tuple[bytes, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw[8:8 + n], raw[8 + n:]


def _write(path: Path, header: bytes, data: bytes) -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


def _edit_header(path: Path, change) -> None:
    header, data = _split(path)
    h = json.loads(header)
    data = change(h, data) or data
    _write(path, json.dumps(h).encode(), data)


def _refused(d: Path, *fragments: str) -> str:
    """Loading ``d`` raises a CheckpointError whose message holds every fragment; returns the message."""
    with pytest.raises(CheckpointError) as err:
        Qwen3NextForCausalLM.from_pretrained(d)
    msg = str(err.value)
    for f in fragments:
        assert f in msg, msg
    return msg


def _first_tensor(h: dict) -> str:
    return next(k for k in h if k != "__metadata__")


# ------------------------------------------------------------------------------------------- headers
def test_deeply_nested_header(ckpt):
    shard = _shard(ckpt)
    _, data = _split(shard)
    _write(shard, b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", data)
    _refused(ckpt, shard.name, "nested too deeply")


def test_header_nested_deeper_than_the_rust_reader_allows(ckpt):
    # 200 levels: Python's json parses it, safetensors (serde, limit 128) refuses: we refuse too
    shard = _shard(ckpt)
    _edit_header(shard, lambda h, d: h[_first_tensor(h)].update(extra=json.loads("[" * 200 + "]" * 200)))
    _refused(ckpt, shard.name, "nested too deeply")


def test_header_not_utf8(ckpt):
    shard = _shard(ckpt)
    header, data = _split(shard)
    _write(shard, header.replace(b'"__metadata__"', b'"__metadata\xff_"'), data)
    _refused(ckpt, shard.name, "not UTF-8")


@pytest.mark.parametrize("field, value, expected", [
    ("dtype", ["F32"], "dtype"), ("dtype", 32, "dtype"), ("dtype", "F33", "dtype"), ("dtype", None, "dtype"),
    ("shape", [True, 2], "shape"), ("shape", [2.0], "shape"), ("shape", ["2"], "shape"), ("shape", [-1], "shape"),
    ("shape", 4, "shape"), ("shape", [[2]], "shape"), ("shape", [2**70, 0], "shape"),
    ("data_offsets", [0, 8, 9], "data_offsets"), ("data_offsets", [False, 8], "data_offsets"),
    ("data_offsets", ["0", "8"], "data_offsets"), ("data_offsets", {"begin": 0}, "data_offsets"),
    ("data_offsets", [8, 0], "data_offsets"),
])
def test_wrongly_typed_entry_fields(ckpt, field, value, expected):
    shard = _shard(ckpt)
    name = []

    def change(h, d):
        name.append(_first_tensor(h))
        h[name[0]][field] = value

    _edit_header(shard, change)
    _refused(ckpt, shard.name, repr(name[0]), expected)


@pytest.mark.parametrize("entry", [None, [1, 2], "F32", {"dtype": "F32", "shape": [1]}])
def test_entry_that_is_not_a_tensor(ckpt, entry):
    shard = _shard(ckpt)
    _edit_header(shard, lambda h, d: h.update({"junk": entry}))
    _refused(ckpt, shard.name, "'junk'")


@pytest.mark.parametrize("header", [b"[1, 2]", b'"text"', b"null", b"3"])
def test_header_that_is_not_an_object(ckpt, header):
    shard = _shard(ckpt)
    _write(shard, header, _split(shard)[1])
    _refused(ckpt, shard.name, "expected a JSON object")


@pytest.mark.parametrize("metadata", [{"format": 1}, {"format": None}, {"a": ["b"]}, ["pt"], "pt", 7])
def test_non_string_metadata(ckpt, metadata):
    shard = _shard(ckpt)
    _edit_header(shard, lambda h, d: h.update({"__metadata__": metadata}))
    _refused(ckpt, shard.name, "__metadata__")


@pytest.mark.parametrize("raw, expected", [
    (b'"__metadata__": {"format": NaN}', "NaN is not JSON"),
    (b'"__metadata__": {"format": "\\ud800"}', "lone surrogate"),
    (b'"__metadata__": {"format": "pt", "format": "np"}', "appears twice"),
])
def test_json_that_python_accepts_and_safetensors_refuses(ckpt, raw, expected):
    shard = _shard(ckpt)
    header, data = _split(shard)
    h = json.loads(header)
    del h["__metadata__"]
    text = json.dumps(h).encode()
    _write(shard, text[:-1] + b", " + raw + b"}", data)
    _refused(ckpt, shard.name, expected)


def test_gap_between_tensors(ckpt):
    shard = _shard(ckpt)

    def change(h, data):  # move every tensor after the first one 4 bytes on: a hole behind the first
        first = min((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])
        end = h[first]["data_offsets"][1]
        for k, v in h.items():
            if k != "__metadata__" and k != first:
                v["data_offsets"] = [o + 4 for o in v["data_offsets"]]
        return data[:end] + b"\0" * 4 + data[end:]

    _edit_header(shard, change)
    _refused(ckpt, shard.name, "gap", "unused")


def test_bytes_after_the_last_tensor(ckpt):
    shard = _shard(ckpt)
    shard.write_bytes(shard.read_bytes() + b"\0" * 16)
    _refused(ckpt, shard.name, "16 bytes after the last tensor")


def test_first_tensor_does_not_start_at_zero(ckpt):
    shard = _shard(ckpt)

    def change(h, data):
        for k, v in h.items():
            if k != "__metadata__":
                v["data_offsets"] = [o + 8 for o in v["data_offsets"]]
        return b"\0" * 8 + data

    _edit_header(shard, change)
    _refused(ckpt, shard.name, "gap", "bytes 0..8")


def test_duplicate_tensor_in_one_header(ckpt):
    shard = _shard(ckpt)
    header, data = _split(shard)
    h = json.loads(header)
    k = _first_tensor(h)
    dup = json.dumps({k: h[k]}).encode()[1:-1]
    _write(shard, header.rstrip()[:-1] + b", " + dup + b"}", data)
    _refused(ckpt, shard.name, f"key {k!r} appears twice")


# ------------------------------------------------------------------------------------ index, config
@pytest.mark.parametrize("damage, expected", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"weight_map": {"a\xff": "x.safetensors"}}', "not UTF-8"),
    (b'{"weight_map": ["model-00001-of-00002.safetensors"]}', "weight_map"),
    (b'{"weight_map": {"lm_head.weight": 1}}', "weight_map['lm_head.weight']"),
    (b'{"weight_map": {}}', "weight_map"),
    (b'{"metadata": [], "weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}', "metadata"),
    (b'{"metadata": {"total_size": "12"}, "weight_map": {"lm_head.weight": "m.safetensors"}}', "total_size"),
    (b'{"weight_map": {"a": "m.safetensors", "a": "n.safetensors"}}', "appears twice"),
    (b'{"weight_map": {"a": "../m.safetensors"}}', "weight_map['a']"),
    (b"", "not valid JSON"),
])
def test_bad_index(ckpt, damage, expected):
    (ckpt / INDEX).write_bytes(damage)
    _refused(ckpt, INDEX, expected)


@pytest.mark.parametrize("damage, expected", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"hidden_size": "\xff"}', "not UTF-8"),
    (b"[1]", "expected a JSON object"),
])
def test_bad_config_file(ckpt, damage, expected):
    (ckpt / "config.json").write_bytes(damage)
    _refused(ckpt, "config.json", expected)


@pytest.mark.parametrize("field, value", [("rope_scaling", "yarn"), ("rope_theta", "1e7"),
                                          ("num_hidden_layers", None), ("num_experts", True)])
def test_wrongly_typed_config_field(ckpt, field, value):
    raw = json.loads((ckpt / "config.json").read_text())
    raw.pop("layer_types")
    raw[field] = value
    (ckpt / "config.json").write_text(json.dumps(raw))
    _refused(ckpt, "config.json", f"{field}: expected")


@pytest.mark.parametrize("field, value", [("num_experts", 1_000_000), ("num_hidden_layers", 1_000_000)])
def test_sizes_that_cannot_match_are_refused_before_building(ckpt, field, value, monkeypatch):
    raw = json.loads((ckpt / "config.json").read_text())
    raw.pop("layer_types")
    raw[field] = value
    (ckpt / "config.json").write_text(json.dumps(raw))

    def no_building(*args, **kwargs):
        raise AssertionError("the model was built before the sizes were checked")

    monkeypatch.setattr(Qwen3NextForCausalLM, "__init__", no_building)
    # opening the directory is enough: it reads only headers, and refuses
    with pytest.raises(CheckpointError, match=rf"{field}: config.json has {value}"):
        open_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match=rf"{field}: config.json has {value}"):
        Qwen3NextForCausalLM.from_pretrained(ckpt)


# ----------------------------------------------------------------------------- fuzzing the header
_DTYPE_CODES = st.sampled_from(["F32", "BF16", "I8", "U8", "F8_E4M3", "U16", "BOOL", "X", "f32"])
_WEIRD = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), st.text(max_size=3),
                   st.integers(-3, 3), st.lists(st.integers(0, 3), max_size=2))
_SIZE = {"F32": 4, "BF16": 2, "I8": 1, "U8": 1, "F8_E4M3": 1, "U16": 2, "BOOL": 1}


@st.composite
def _headers(draw):
    """A header of up to 3 tensors, each field right or damaged, data that fits or not."""
    entries, offset = {}, 0
    for i in range(draw(st.integers(0, 3))):
        dtype = draw(st.one_of(_DTYPE_CODES, _WEIRD)) if draw(st.integers(0, 9)) == 0 else draw(_DTYPE_CODES)
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        if draw(st.integers(0, 9)) == 0:
            shape = draw(st.one_of(_WEIRD, st.lists(_WEIRD, max_size=2)))
        size = _SIZE.get(dtype, 1) if isinstance(dtype, str) else 1
        nbytes = size * (math.prod(shape) if _plain_ints(shape) else 1)
        begin, end = offset, offset + nbytes
        damage = draw(st.integers(0, 12))
        if damage == 1:
            begin, end = begin + 1, end + 1  # a gap
        elif damage == 2:
            end += 1  # one byte too many
        elif damage == 3:
            begin, end = max(begin - 1, 0), max(end - 1, 0)  # an overlap
        offsets = [begin, end] if damage != 4 else draw(st.one_of(_WEIRD, st.lists(_WEIRD, max_size=3)))
        entry = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        if damage == 5:
            entry["extra"] = draw(_WEIRD)  # unknown keys are allowed by the format
        entries[draw(st.sampled_from(["a", "b", "c", "d", "e", "__metadata__"])) + str(i)] = entry
        offset = end
    metadata = draw(st.one_of(st.just({"format": "pt"}), st.none(), st.dictionaries(st.text(max_size=2), _WEIRD,
                                                                                       max_size=2)))
    if draw(st.booleans()):
        entries["__metadata__"] = metadata
    extra = draw(st.sampled_from([0, 0, 0, 1, 7]))
    data_len = max(offset + draw(st.sampled_from([0, 0, 0, -1])), 0) + extra
    pad = b" " * draw(st.integers(0, 3))
    return json.dumps(entries).encode() + pad, bytes(range(256)) * (data_len // 256) + bytes(data_len % 256)


def _plain_ints(shape) -> bool:
    return isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_headers())
def test_whatever_safetensors_refuses_we_refuse_first(tmp_path, header_and_data):
    header, data = header_and_data
    path = tmp_path / "fuzz.safetensors"
    _write(path, header, data)
    try:
        with safe_open(path, framework="pt") as f:
            theirs = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # the library refuses: so must we, by name
        theirs = None
    try:
        ours, _ = read_header(path)
    except CheckpointError as err:
        assert path.name in str(err)
        return
    assert theirs is not None, f"we accepted a header safetensors refuses: {header!r}"
    assert set(ours) == set(theirs)
    for name, info in ours.items():
        t = theirs[name]
        assert (info.shape, info.torch_dtype) == (tuple(t.shape), t.dtype)
        assert torch.equal(read_tensor(info).reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), name


# ----------------------------------------------------------------------------------- NaN and Inf
@pytest.mark.parametrize(("value", "name"), [
    (float("nan"), "model.layers.2.linear_attn.out_proj.weight"),
    (float("inf"), "model.layers.2.linear_attn.out_proj.weight"),
    (float("-inf"), "model.layers.2.linear_attn.out_proj.weight"),
    (float("nan"), "model.layers.1.mlp.experts.2.down_proj.weight"),  # copied into the stack of experts
])
def test_non_finite_weight_is_named(state, tmp_path, value, name):
    bad = dict(state)
    bad[name] = state[name].clone()
    bad[name][3, 5] = value
    d = _write_checkpoint(tmp_path / "nan", bad)
    _refused(d, repr(name), "1 non-finite value", "check_finite=False")
    # the opt-out loads it as it is (from_pretrained passes it to load_weights)
    ckpt = open_checkpoint(d)
    with torch.device("meta"):
        model = Qwen3NextForCausalLM(ckpt.config)
    load_weights(model, ckpt, check_finite=False)
    loaded = Qwen3NextForCausalLM.from_pretrained(d, check_finite=False).state_dict()[name]
    torch.testing.assert_close(loaded, model.state_dict()[name], rtol=0, atol=0, equal_nan=True)
    w = model.state_dict()[name][3, 5]
    assert w.isnan().item() if value != value else w.item() == value


def test_overflow_when_converting_is_named(state, tmp_path):
    big = dict(state)
    name = "model.embed_tokens.weight"
    big[name] = state[name].clone()
    big[name][7, 1] = 1e6  # fine in float32, infinite in float16
    d = _write_checkpoint(tmp_path / "big", big)
    assert Qwen3NextForCausalLM.from_pretrained(d, dtype=torch.float32) is not None
    with pytest.raises(CheckpointError, match=rf"'{name}'.*1 non-finite value.*float16"):
        Qwen3NextForCausalLM.from_pretrained(d, dtype=torch.float16)


# ------------------------------------------------------------------------------------ FP8 closed
@pytest.fixture(scope="module")
def fp8(good, tmp_path_factory) -> Path:
    return write_fp8_checkpoint(good, tmp_path_factory.mktemp("fp8") / "c", block=(16, 16))


@pytest.fixture
def fp8_copy(fp8, tmp_path) -> Path:
    return Path(shutil.copytree(fp8, tmp_path / "fp8"))


def _rewrite(d: Path, change) -> None:
    """Load every shard, let ``change(all tensors)`` edit them, write the checkpoint back."""
    tensors = {}
    for f in sorted(d.glob("*.safetensors")):
        tensors.update(load_file(f))
        f.unlink()
    change(tensors)
    raw = json.loads((d / "config.json").read_text())
    _write_checkpoint(d, tensors, Qwen3NextConfig.from_dict(raw), shards=2)
    (d / "config.json").write_text(json.dumps(raw))


W = "model.layers.1.mlp.experts.2.down_proj.weight"


def test_fp8_loads(fp8):
    assert Qwen3NextForCausalLM.from_pretrained(fp8, dtype=torch.float32) is not None


def test_fp8_scale_without_a_weight(fp8_copy):
    _rewrite(fp8_copy, lambda t: t.update({"model.norm.weight_scale_inv": torch.ones(1, 1)}))
    _refused(fp8_copy, "'model.norm.weight_scale_inv'", "no FP8 weight")


def test_fp8_scale_of_a_mtp_weight_is_checked_too(fp8_copy):
    def change(t):
        t["mtp.fc.weight_scale_inv"] = torch.ones(4, 8)  # mtp.fc.weight is absent
    _rewrite(fp8_copy, change)
    _refused(fp8_copy, "'mtp.fc.weight_scale_inv'", "no FP8 weight")
    with pytest.raises(CheckpointError, match="mtp.fc.weight_scale_inv"):
        load_mtp(fp8_copy)


def test_fp8_mtp_weight_without_scale(fp8_copy):
    _rewrite(fp8_copy, lambda t: t.update({"mtp.fc.weight": torch.ones(64, 128).to(torch.float8_e4m3fn)}))
    _refused(fp8_copy, "'mtp.fc.weight'", "scale", "missing")


def test_fp8_weight_without_scale(fp8_copy):
    _rewrite(fp8_copy, lambda t: t.pop(W + "_scale_inv"))
    _refused(fp8_copy, repr(W), "missing")


def test_fp8_scale_for_a_bf16_weight(fp8_copy):
    def change(t):
        t[W] = torch.zeros(64, 32, dtype=torch.bfloat16)
    _rewrite(fp8_copy, change)
    _refused(fp8_copy, repr(W + "_scale_inv"), "no FP8 weight")


def test_fp8_other_quantisation_method(fp8_copy):
    raw = json.loads((fp8_copy / "config.json").read_text())
    raw["quantization_config"]["quant_method"] = "gptq"
    (fp8_copy / "config.json").write_text(json.dumps(raw))
    _refused(fp8_copy, "config.json", "quant_method", "gptq")


def test_fp8_nan_in_a_weight_is_named(fp8_copy):
    def change(t):
        t[W] = t[W].clone()
        t[W].view(torch.uint8)[0, 0] = 0x7F  # the e4m3 NaN
    _rewrite(fp8_copy, change)
    _refused(fp8_copy, repr(W), "non-finite")


def test_plan_uses_every_scale(fp8):
    plan = check_checkpoint(open_checkpoint(fp8))
    scales = {n for n in open_checkpoint(fp8).tensors if n.endswith("_scale_inv")}
    assert {n + "_scale_inv" for n in plan.scales} == scales
