"""The assembled model against transformers' Qwen3NextForCausalLM, its cache invariants and its interface."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from qwen3next.config import Qwen3NextConfig
from qwen3next.deltanet import GatedDeltaNet
from qwen3next.model import Qwen3NextForCausalLM
from qwen3next.reference import layer_differences, max_abs_diff, reference_config, reference_twin
from qwen3next.rope import RotaryEmbedding

# Tiny configs that each exercise one thing the release does not (or does differently).
CONFIGS = {
    "tiny": {},
    "dense_layer_no_topk_norm": dict(mlp_only_layers=[1], norm_topk_prob=False),
    "rotary_half": dict(partial_rotary_factor=0.5),
    "attention_first": dict(
        num_hidden_layers=4,
        layer_types=["full_attention", "linear_attention", "full_attention", "linear_attention"],
    ),
    "dk_ne_dv_4v_per_k": dict(linear_num_key_heads=1, linear_num_value_heads=4, linear_key_head_dim=8,
                              linear_value_head_dim=24),
}
LENGTHS = [1, 64, 65, 131]


pytestmark = pytest.mark.usefixtures("one_thread")


def build_pair(cfg: Qwen3NextConfig, seed: int = 0, dtype=torch.float32):
    """Our model with random weights and the reference holding the same weights."""
    torch.manual_seed(seed)
    ours = Qwen3NextForCausalLM(cfg).eval().to(dtype)
    return ours, reference_twin(ours, cfg)


@pytest.fixture(scope="module")
def pairs():
    return {name: build_pair(Qwen3NextConfig.tiny(**kw), seed=i) for i, (name, kw) in enumerate(CONFIGS.items())}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_reference(pairs, name):
    ours, ref = pairs[name]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, ours.config.vocab_size, (2, max(LENGTHS)), generator=g)
    with torch.no_grad():
        for T in LENGTHS:
            a = ours(ids[:, :T]).logits
            b = ref(ids[:, :T]).logits
            assert a.shape == (2, T, ours.config.vocab_size)
            assert max_abs_diff(a, b) < 2e-5, (name, T, max_abs_diff(a, b))


def test_router_logits_and_aux_loss_match_reference(pairs):
    ours, ref = pairs["dense_layer_no_topk_norm"]
    ids = torch.randint(0, ours.config.vocab_size, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, output_router_logits=True)
        b = ref(ids, attention_mask=mask, output_router_logits=True)
    # one entry per MoE layer: the dense layer (mlp_only_layers=[1]) has no router
    assert len(a.router_logits) == len(b.router_logits) == ours.config.num_hidden_layers - 1
    real = mask.reshape(-1).bool()  # padding rows may differ (nothing reads them); real rows must not
    assert max(max_abs_diff(x[real], y[real]) for x, y in zip(a.router_logits, b.router_logits, strict=True)) < 1e-5
    assert abs(a.aux_loss.item() - b.aux_loss.item()) < 1e-5
    labels = ids.clone()
    with torch.no_grad():
        la = ours(ids, labels=labels, output_router_logits=True).loss
        lb = ref(ids, labels=labels, output_router_logits=True).loss
    assert abs(la.item() - lb.item()) < 1e-5


def test_cached_decode_equals_full_forward(pairs):
    """Prefill, then one-token steps, then several tokens at once on a warm cache == one full forward."""
    for name in ["tiny", "attention_first"]:
        ours, _ = pairs[name]
        ids = torch.randint(0, ours.config.vocab_size, (2, 90))
        with torch.no_grad():
            full = ours(ids).logits
            cache = ours.new_cache(2)
            parts = [ours(ids[:, :70], cache=cache).logits]
            for t in range(70, 75):
                out = ours(ids[:, t:t + 1], cache=cache)
                assert out.cache is cache
                parts.append(out.logits)
            parts.append(ours(ids[:, 75:90], cache=cache).logits)  # multi-token step on a warm cache
        assert cache.seq_len == 90
        assert max_abs_diff(torch.cat(parts, dim=1), full) < 2e-5, name


def test_reference_cached_decode_agrees(pairs):
    """Our decode against the reference's own cache, step by step."""
    ours, ref = pairs["rotary_half"]
    ids = torch.randint(0, ours.config.vocab_size, (1, 40))
    with torch.no_grad():
        cache = ours.new_cache(1)
        a = [ours(ids[:, :33], cache=cache).logits[:, -1]]
        r = ref(ids[:, :33], use_cache=True)
        b, ref_cache = [r.logits[:, -1]], r.cache
        for t in range(33, 40):
            a.append(ours(ids[:, t:t + 1], cache=cache).logits[:, -1])
            r = ref(ids[:, t:t + 1], cache=ref_cache, use_cache=True)
            b.append(r.logits[:, -1])
    assert max_abs_diff(torch.stack(a), torch.stack(b)) < 2e-5


def test_greedy_generation_matches_reference(pairs):
    from qwen3next.generate import generate

    for name in ["tiny", "dk_ne_dv_4v_per_k"]:
        ours, ref = pairs[name]
        ids = torch.randint(0, ours.config.vocab_size, (2, 11))
        with torch.no_grad():
            expected = ref.generate(ids, max_new_tokens=12, do_sample=False)
        assert torch.equal(generate(ours, ids, 12), expected), name


def test_left_padded_batch_matches_unpadded_rows_and_reference(pairs):
    from qwen3next.generate import generate

    ours, ref = pairs["tiny"]
    V = ours.config.vocab_size
    rows = [torch.randint(0, V, (n,)) for n in (13, 6, 9)]
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = r
        mask[i, T - len(r):] = 1
    with torch.no_grad():
        padded = ours(ids, attention_mask=mask).logits
        for i, r in enumerate(rows):
            alone = ours(r[None]).logits[0]
            assert max_abs_diff(padded[i, T - len(r):], alone) < 2e-5, i
        batched = generate(ours, ids, 8, attention_mask=mask)
        for i, r in enumerate(rows):
            assert torch.equal(batched[i, T:], generate(ours, r[None], 8)[0, len(r):]), i
        expected = ref.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(batched, expected)


def test_bfloat16_within_tolerance():
    cfg = Qwen3NextConfig.tiny()
    ours, ref = build_pair(cfg, seed=3, dtype=torch.bfloat16)
    ids = torch.randint(0, cfg.vocab_size, (2, 70))
    with torch.no_grad():
        a, b = ours(ids).logits, ref(ids).logits
        fp32 = ours.float()(ids).logits
    assert a.dtype == torch.bfloat16
    # same dtype as the reference: only rounding-order differences
    assert max_abs_diff(a, b) < 0.05
    # bf16 against fp32: the usual 3-significant-digit rounding, and the same top token almost always
    assert max_abs_diff(a, fp32) < 0.1
    assert (a.argmax(-1) == fp32.argmax(-1)).float().mean() > 0.9


@torch.no_grad()
def test_init_like_reference():
    cfg = Qwen3NextConfig.tiny(hidden_size=128, vocab_size=2048)
    torch.manual_seed(0)
    m = Qwen3NextForCausalLM(cfg)
    layer0, layer3 = m.model.layers[0], m.model.layers[3]
    assert layer0.layer_type == "linear_attention" and layer3.layer_type == "full_attention"
    # zero-centred norms start at 0 (gain 1); the DeltaNet output norm's plain gain starts at 1
    assert all(float(p.detach().abs().max()) == 0 for n, p in m.named_parameters()
               if n.endswith("layernorm.weight") or n.endswith("q_norm.weight") or n == "model.norm.weight")
    assert torch.equal(layer0.linear_attn.norm.weight, torch.ones_like(layer0.linear_attn.norm.weight))
    assert torch.equal(layer0.linear_attn.dt_bias, torch.ones_like(layer0.linear_attn.dt_bias))
    A = torch.cat([m.model.layers[i].linear_attn.A_log.exp() for i in (0, 1, 2, 4, 5, 6)])
    assert float(A.min()) >= 0.01 - 1e-6 and float(A.max()) <= 16 + 1e-4
    # every matrix is N(0, 0.02): check the standard deviation of the big ones
    for w in (m.model.embed_tokens.weight, m.lm_head.weight, layer3.self_attn.q_proj.weight,
              layer0.linear_attn.in_proj_qkvz.weight, layer0.mlp.gate.weight):
        assert abs(float(w.std()) - cfg.initializer_range) < 0.002
        assert abs(float(w.mean())) < 0.002
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert torch.equal(m.model.rotary_emb.inv_freq, RotaryEmbedding(cfg).inv_freq)  # a buffer, recomputed


def test_construction_fills_each_parameter_once(monkeypatch):
    """Shapes on meta (no fill at all), then storage, then the one rule: torch's default fill of the
    layers never runs, and each DeltaNet layer's own parameters are drawn once."""
    calls = {"default": 0, "deltanet": 0}
    default_fill, deltanet_fill = torch.nn.Linear.reset_parameters, GatedDeltaNet.reset_parameters

    def count(name, fill):
        def counted(self):
            calls[name] += not next(self.parameters(recurse=False)).is_meta  # a fill of real storage
            fill(self)
        return counted

    monkeypatch.setattr(torch.nn.Linear, "reset_parameters", count("default", default_fill))
    monkeypatch.setattr(GatedDeltaNet, "reset_parameters", count("deltanet", deltanet_fill))
    cfg = Qwen3NextConfig.tiny()
    m = Qwen3NextForCausalLM(cfg)
    assert calls == {"default": 0, "deltanet": cfg.layer_types.count("linear_attention")}
    with torch.device("meta"):
        Qwen3NextForCausalLM(cfg)  # nothing to fill on meta: no rule runs
    assert calls == {"default": 0, "deltanet": cfg.layer_types.count("linear_attention")}
    assert not any(p.is_meta for p in m.parameters())


def test_init_refuses_a_parameter_without_a_rule():
    m = Qwen3NextForCausalLM(Qwen3NextConfig.tiny())
    m.model.layers[2].scale = torch.nn.Parameter(torch.empty(3))  # a parameter no rule knows
    with pytest.raises(RuntimeError, match=r"no initialisation rule for parameters \['model.layers.2.scale'\]"):
        m.init_weights()


@pytest.mark.slow
def test_full_model_on_meta_matches_hub_layout():
    """The released config: exact parameter count, and the Hub keys and shapes."""
    cfg = Qwen3NextConfig.full()
    with torch.device("meta"):
        m = Qwen3NextForCausalLM(cfg)
        ref = transformers.Qwen3NextForCausalLM(reference_config(cfg))
    assert sum(p.numel() for p in m.parameters()) == 79_674_391_296
    sd = m.state_dict()
    assert len(sd) == 74_391
    # expected layout: the reference's, with its fused experts split back into the Hub's per-expert keys
    expected = {}
    for key, t in ref.state_dict().items():
        if key.endswith("experts.gate_up_proj"):
            E, I2, H = t.shape
            for e in range(E):
                expected[key.replace("gate_up_proj", f"{e}.gate_proj.weight")] = (I2 // 2, H)
                expected[key.replace("gate_up_proj", f"{e}.up_proj.weight")] = (I2 // 2, H)
        elif key.endswith("experts.down_proj"):
            for e in range(t.shape[0]):
                expected[key.replace("down_proj", f"{e}.down_proj.weight")] = tuple(t.shape[1:])
        else:
            expected[key] = tuple(t.shape)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    # spot checks against the checkpoint layout, written out
    assert tuple(sd["model.layers.0.linear_attn.in_proj_qkvz.weight"].shape) == (12288, 2048)
    assert tuple(sd["model.layers.0.linear_attn.conv1d.weight"].shape) == (8192, 1, 4)
    assert tuple(sd["model.layers.3.self_attn.q_proj.weight"].shape) == (8192, 2048)
    assert tuple(sd["model.layers.47.mlp.experts.511.down_proj.weight"].shape) == (2048, 512)
    assert tuple(sd["lm_head.weight"].shape) == (151936, 2048)
    assert not any(k.startswith("mtp.") for k in sd)


def test_output_interface_and_positions(pairs):
    ours, ref = pairs["tiny"]
    ids = torch.randint(0, ours.config.vocab_size, (2, 10))
    with torch.no_grad():
        out = ours(ids, output_hidden_states=True, logits_to_keep=1)
        assert out.logits.shape == (2, 1, ours.config.vocab_size)
        assert len(out.hidden_states) == ours.config.num_hidden_layers + 1
        # explicit position ids reach RoPE (stretched, so relative distances change), like the reference
        pos = (3 * torch.arange(10)).expand(2, 10)
        a = ours(ids, position_ids=pos).logits
        b = ref(ids, position_ids=pos).logits
        assert max_abs_diff(a, b) < 2e-5
        assert max_abs_diff(a, ours(ids).logits) > 1e-4
        # a full-length mask (B, past + T) works like a mask of the new tokens only
        cache = ours.new_cache(2)
        ours(ids[:, :6], cache=cache)
        c = ours(ids[:, 6:], cache=cache, attention_mask=torch.ones(2, 10, dtype=torch.long)).logits
        assert max_abs_diff(c, ours(ids).logits[:, 6:]) < 2e-5


def test_bad_inputs_raise_clear_errors(pairs):
    ours, _ = pairs["tiny"]
    V = ours.config.vocab_size
    with pytest.raises(ValueError, match="input_ids"):
        ours(torch.tensor([[0, V]]))
    with pytest.raises(ValueError, match="input_ids"):
        ours(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        ours(torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="cache"):
        ours(torch.zeros(2, 4, dtype=torch.long), cache=ours.new_cache(3))
    with pytest.raises(ValueError, match="exactly one"):
        ours()
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        Qwen3NextForCausalLM(Qwen3NextConfig.tiny(tie_word_embeddings=True))


def test_layer_differences_locate_a_changed_layer(pairs):
    ours, ref = pairs["tiny"]
    ids = torch.randint(0, ours.config.vocab_size, (1, 20))
    intact = layer_differences(ours, ref, ids)
    assert len(intact) == ours.config.num_hidden_layers + 2 and max(intact) < 1e-5
    broken = copy.deepcopy(ours)
    with torch.no_grad():
        broken.model.layers[4].mlp.shared_expert.up_proj.weight.mul_(1.05)
    d = layer_differences(broken, ref, ids)
    assert max(d[:5]) < 1e-5 and d[5] > 1e-4  # d[0] embeddings, d[i + 1] layer i
