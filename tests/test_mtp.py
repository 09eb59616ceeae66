"""Tests of qwen3next.mtp: the MTP head against one assembled from transformers' own layers, its cache,
and loading it from a checkpoint (bf16 / fp32 and FP8)."""

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from qwen3next import Qwen3NextConfig, Qwen3NextForCausalLM
from qwen3next.fp8 import write_fp8_checkpoint
from qwen3next.hub_layout import mtp_layout
from qwen3next.mtp import MultiTokenPredictor, mtp_forward, new_mtp_cache
from qwen3next.reference import max_abs_diff, moe_state_dict_to_reference, reference_config
from qwen3next.safetensors_file import CheckpointError

CFG = Qwen3NextConfig.tiny()
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Qwen3NextForCausalLM(CFG, mtp=True).eval()
    with torch.no_grad():  # non-zero norm gains, so a wrongly placed norm would show
        for name, p in m.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
    return m


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, CFG.vocab_size, (2, 11), generator=torch.Generator().manual_seed(1))


def _reference_head(model):
    """The MTP head as vLLM/SGLang define it, built from transformers' Qwen3Next layers and our weights."""
    from transformers.models.qwen3_next.modeling_qwen3_next import (
        Qwen3NextDecoderLayer,
        Qwen3NextRMSNorm,
        Qwen3NextRotaryEmbedding,
    )

    ref_cfg = reference_config(CFG)
    attention_index = CFG.layer_types.index("full_attention")
    H, eps = CFG.hidden_size, CFG.rms_norm_eps
    head = nn.ModuleDict({
        "pre_fc_norm_embedding": Qwen3NextRMSNorm(H, eps), "pre_fc_norm_hidden": Qwen3NextRMSNorm(H, eps),
        "fc": nn.Linear(2 * H, H, bias=False), "layer": Qwen3NextDecoderLayer(ref_cfg, attention_index),
        "norm": Qwen3NextRMSNorm(H, eps),
    })
    ours = model.mtp.state_dict()
    renamed = {k.replace("layers.0.", "layer.", 1): v for k, v in moe_state_dict_to_reference(ours).items()}
    head.load_state_dict(renamed, strict=True)
    return head.eval(), Qwen3NextRotaryEmbedding(ref_cfg)


def _reference_logits(model, next_ids, hidden):
    head, rotary = _reference_head(model)
    B, T = next_ids.shape
    e = head["pre_fc_norm_embedding"](model.model.embed_tokens(next_ids))
    h = head["pre_fc_norm_hidden"](hidden)
    x = head["fc"](torch.cat([e, h], dim=-1))  # the embedding first, as vLLM and SGLang wire it
    positions = torch.arange(T).expand(B, T)
    causal = torch.full((T, T), torch.finfo(x.dtype).min).triu(1)[None, None]  # (1, 1, T, T)
    y = head["layer"](x, position_embeddings=rotary(x, positions), attention_mask=causal, position_ids=positions)
    return model.lm_head(head["norm"](y))


def _trunk_hidden(model, ids):
    """The trunk's hidden states after its final norm: what lm_head reads."""
    return model.model(ids)[0]


def test_state_dict_keys_are_the_hub_layout(model):
    keys = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("mtp.")}
    assert keys == {k: e.shape for k, e in mtp_layout(CFG).items()}
    head_keys = set(model.mtp.state_dict())
    assert {"fc.weight", "pre_fc_norm_embedding.weight", "pre_fc_norm_hidden.weight", "norm.weight"} <= head_keys
    assert not any("embed_tokens" in k or "lm_head" in k for k in head_keys)  # it borrows the trunk's


def test_random_init_fills_the_head(model):
    fresh = Qwen3NextForCausalLM(CFG, mtp=True)
    assert torch.all(fresh.mtp.norm.weight == 0) and fresh.mtp.fc.weight.std() > 0


def test_head_equals_the_one_assembled_from_transformers(model, ids):
    with torch.no_grad():
        hidden = _trunk_hidden(model, ids)[:, :-1]  # h_t for t = 0..T-2
        next_ids = ids[:, 1:]  # x_{t+1}
        ours = mtp_forward(model, next_ids, hidden)
        ref = _reference_logits(model, next_ids, hidden)
    assert ours.logits.shape == (2, 10, CFG.vocab_size) and ours.hidden.shape == (2, 10, CFG.hidden_size)
    assert max_abs_diff(ours.logits, ref) < 1e-5


def test_swapped_inputs_give_other_logits(model, ids):
    """The wiring matters: hidden first (a plausible mistake) changes the result."""
    with torch.no_grad():
        hidden = _trunk_hidden(model, ids)[:, :-1]
        e = model.model.embed_tokens(ids[:, 1:])
        right = mtp_forward(model, ids[:, 1:], hidden).logits
        head = model.mtp
        x = head.fc(torch.cat([head.pre_fc_norm_hidden(hidden), head.pre_fc_norm_embedding(e)], dim=-1))
        cos, sin = model.model.rotary_emb(torch.arange(10).expand(2, 10))
        wrong = model.lm_head(head.norm(head.layers[0](x, cos, sin)[0]))
    assert max_abs_diff(right, wrong) > 1e-2


def test_cache_one_by_one_equals_all_at_once_and_rolls_back(model, ids):
    with torch.no_grad():
        hidden = _trunk_hidden(model, ids)[:, :-1]
        full = mtp_forward(model, ids[:, 1:], hidden)
        cache = new_mtp_cache()
        first = mtp_forward(model, ids[:, 1:5], hidden[:, :4], cache=cache)  # a prefill of 4 positions
        steps = [mtp_forward(model, ids[:, t + 1:t + 2], hidden[:, t:t + 1], cache=cache) for t in range(4, 10)]
        assert cache.length == 10
        stepped = torch.cat([first.logits, *[s.logits for s in steps]], dim=1)
        assert max_abs_diff(stepped, full.logits) < 1e-5
        cache.crop(6)  # reject the last 4 drafts, then redo them
        redo = mtp_forward(model, ids[:, 7:11], hidden[:, 6:10], cache=cache)
    assert max_abs_diff(redo.logits, full.logits[:, 6:]) < 1e-5
    assert max_abs_diff(redo.hidden, full.hidden[:, 6:]) < 1e-5


def test_model_without_head_is_refused(ids):
    with pytest.raises(ValueError, match="has no MTP head"):
        mtp_forward(Qwen3NextForCausalLM(CFG), ids, torch.zeros(2, 11, CFG.hidden_size))


def test_hidden_must_match_the_tokens(model, ids):
    with pytest.raises(ValueError, match="next_ids, hidden"):
        mtp_forward(model, ids, torch.zeros(2, 5, CFG.hidden_size))


def _save(model, d):
    d.mkdir(parents=True, exist_ok=True)
    CFG.to_json(d / "config.json")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, d / "model.safetensors",
              metadata={"format": "pt"})
    return d


def test_from_pretrained_attaches_the_head(model, ids, tmp_path):
    d = _save(model, tmp_path / "ckpt")
    loaded = Qwen3NextForCausalLM.from_pretrained(d, mtp=True)
    assert isinstance(loaded.mtp, MultiTokenPredictor)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    plain = Qwen3NextForCausalLM.from_pretrained(d)  # the trunk alone ignores mtp.*
    assert not hasattr(plain, "mtp")
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, model(ids).logits)


def test_from_pretrained_fp8_dequantises_the_head(model, ids, tmp_path):
    d = write_fp8_checkpoint(_save(model, tmp_path / "ckpt"), tmp_path / "fp8", block=(16, 16))
    header = json.loads((d / "config.json").read_text())
    assert header["quantization_config"]["weight_block_size"] == [16, 16]
    loaded = Qwen3NextForCausalLM.from_pretrained(d, dtype=torch.float32, mtp=True)
    w, w8 = model.mtp.fc.weight, loaded.mtp.fc.weight
    assert w8.dtype == torch.float32 and not torch.equal(w, w8)
    assert max_abs_diff(w, w8) <= 0.07 * w.abs().max().item()  # e4m3 keeps 3 mantissa bits


def test_checkpoint_without_mtp_is_refused_with_mtp_true(model, tmp_path):
    d = tmp_path / "trunk"
    d.mkdir()
    CFG.to_json(d / "config.json")
    trunk = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("mtp.")}
    save_file(trunk, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="no mtp"):
        Qwen3NextForCausalLM.from_pretrained(d, mtp=True)


def test_mtp_tensor_of_the_wrong_shape_is_named(model, tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    CFG.to_json(d / "config.json")
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd["mtp.fc.weight"] = sd["mtp.fc.weight"][:, : CFG.hidden_size].contiguous()
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="mtp.fc.weight"):
        Qwen3NextForCausalLM.from_pretrained(d, mtp=True)
