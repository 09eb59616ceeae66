"""rope: partial rotary embedding (default and YaRN) against the reference."""

import math

import pytest
import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextRotaryEmbedding, apply_rotary_pos_emb

from qwen3next.config import Qwen3NextConfig
from qwen3next.reference import max_abs_diff, reference_config
from qwen3next.rope import RotaryEmbedding, apply_rotary, default_inv_freq, rotate_half

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 262144}
POSITIONS = torch.tensor([[0, 1, 2, 17, 4095, 65_536, 262_143, 1_000_000]])


def _configs():
    return {
        "full": Qwen3NextConfig.full(),
        "full-yarn": Qwen3NextConfig.full().replace(rope_scaling=dict(YARN)),
        "tiny": Qwen3NextConfig.tiny(),
        "tiny-yarn": Qwen3NextConfig.tiny(rope_scaling={**YARN, "original_max_position_embeddings": 1024}),
    }


def test_default_frequencies_are_the_spec():
    cfg = Qwen3NextConfig.full()
    rope = RotaryEmbedding(cfg)
    assert cfg.rotary_dim == 64 and rope.inv_freq.shape == (32,)
    expected = torch.tensor([1e7 ** (-2 * i / 64) for i in range(32)], dtype=torch.float64)
    assert torch.allclose(rope.inv_freq.double(), expected, rtol=1e-6)
    assert rope.attention_scaling == 1.0
    assert "inv_freq" not in rope.state_dict()  # recomputed, never loaded


@pytest.mark.parametrize("name", ["full", "full-yarn", "tiny", "tiny-yarn"])
def test_rotary_embedding_matches_reference(name):
    cfg = _configs()[name]
    ours, ref = RotaryEmbedding(cfg), Qwen3NextRotaryEmbedding(reference_config(cfg))
    assert ours.rope_type == ref.rope_type
    assert max_abs_diff(ours.inv_freq, ref.inv_freq) <= 1e-9
    assert math.isclose(ours.attention_scaling, ref.attention_scaling, rel_tol=1e-12)
    pos = POSITIONS.expand(2, -1)
    cos, sin = ours(pos)
    ref_cos, ref_sin = ref(torch.zeros(1), pos)  # the reference reads only the dtype/device of its x
    assert cos.dtype == torch.float32 and cos.shape == (2, POSITIONS.shape[1], cfg.rotary_dim)
    assert max_abs_diff(cos, ref_cos) <= 1e-5 and max_abs_diff(sin, ref_sin) <= 1e-5


def test_yarn_matches_reference_init_function():
    cfg = _configs()["full-yarn"]
    inv_ref, scale_ref = ROPE_INIT_FUNCTIONS["yarn"](reference_config(cfg))
    rope = RotaryEmbedding(cfg)
    assert max_abs_diff(rope.inv_freq, inv_ref) <= 1e-9
    assert math.isclose(rope.attention_scaling, scale_ref, rel_tol=1e-12)
    assert math.isclose(rope.attention_scaling, 0.1 * math.log(4.0) + 1.0, rel_tol=1e-12)
    default = default_inv_freq(1e7, 64)
    # fast pairs keep their frequency, the slowest are stretched by exactly the factor
    assert torch.equal(rope.inv_freq[0], default[0])
    assert torch.allclose(rope.inv_freq[-1], default[-1] / 4.0, rtol=1e-6)
    assert bool((rope.inv_freq <= default).all())


def test_yarn_legacy_type_key_matches_reference():
    legacy = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 262144}
    cfg = Qwen3NextConfig.full().replace(rope_scaling=legacy)
    ours, ref = RotaryEmbedding(cfg), Qwen3NextRotaryEmbedding(reference_config(cfg))
    assert ours.rope_type == ref.rope_type == "yarn"
    assert max_abs_diff(ours.inv_freq, ref.inv_freq) <= 1e-9 and ours.attention_scaling == ref.attention_scaling


@pytest.mark.parametrize(
    "extra",
    [{"beta_fast": 16, "beta_slow": 2}, {"attention_factor": 1.3}, {"mscale": 1.0, "mscale_all_dim": 0.5},
     {"truncate": False}],
)
def test_yarn_options_match_reference(extra):
    cfg = Qwen3NextConfig.full().replace(rope_scaling={**YARN, **extra})
    inv_ref, scale_ref = ROPE_INIT_FUNCTIONS["yarn"](reference_config(cfg))
    rope = RotaryEmbedding(cfg)
    assert max_abs_diff(rope.inv_freq, inv_ref) <= 1e-9
    assert math.isclose(rope.attention_scaling, scale_ref, rel_tol=1e-12)


def test_yarn_from_transformers5_rope_parameters():
    data = Qwen3NextConfig.full().to_dict()
    for key in ("rope_theta", "partial_rotary_factor", "rope_scaling"):
        data.pop(key)
    data["rope_parameters"] = {**YARN, "rope_theta": 1e7, "partial_rotary_factor": 0.25}
    cfg = Qwen3NextConfig.from_dict(data)
    rope = RotaryEmbedding(cfg)
    expected = RotaryEmbedding(_configs()["full-yarn"])
    assert torch.equal(rope.inv_freq, expected.inv_freq) and rope.attention_scaling == expected.attention_scaling


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 0.0)])
@pytest.mark.parametrize("name", ["full", "full-yarn", "tiny"])
def test_apply_rotary_matches_reference(name, dtype, tol):
    cfg = _configs()[name]
    torch.manual_seed(0)
    T = POSITIONS.shape[1]
    q = torch.randn(2, cfg.num_attention_heads, T, cfg.head_dim).to(dtype)
    k = torch.randn(2, cfg.num_key_value_heads, T, cfg.head_dim).to(dtype)
    cos, sin = RotaryEmbedding(cfg)(POSITIONS.expand(2, -1))
    ref_q, ref_k = apply_rotary_pos_emb(q, k, cos.to(dtype), sin.to(dtype))  # the reference's cos is in x's dtype
    q_rot, k_rot = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    assert q_rot.dtype == dtype
    assert max_abs_diff(q_rot, ref_q) <= tol and max_abs_diff(k_rot, ref_k) <= tol
    # the last head_dim - rotary_dim dims carry no position: untouched
    assert torch.equal(q_rot[..., cfg.rotary_dim:], q[..., cfg.rotary_dim:])


def test_rotation_preserves_pair_norms_and_is_relative():
    cfg = Qwen3NextConfig.tiny(head_dim=32)  # rotary_dim 8
    rope, R = RotaryEmbedding(cfg), cfg.rotary_dim
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 1, 32).double(), torch.randn(1, 1, 1, 32).double()

    def rotated(x, p):
        cos, sin = rope(torch.tensor([[p]]))
        return apply_rotary(x, cos.double(), sin.double())

    # each pair (i, i + R/2) keeps its length
    def pair_norms(x):
        return x[..., : R // 2] ** 2 + x[..., R // 2 : R] ** 2

    assert torch.allclose(pair_norms(rotated(q, 37)), pair_norms(q))
    # q.k depends on positions only through their difference
    dots = [(rotated(q, m) * rotated(k, m - 5)).sum().item() for m in (5, 100, 3000)]
    assert max(dots) - min(dots) < 1e-4
    assert abs((rotated(q, 10) * rotated(k, 0)).sum().item() - dots[0]) > 1e-3  # and does depend on it


def test_rotate_half_is_a_quarter_turn():
    x = torch.arange(8.0)
    assert torch.equal(rotate_half(x), torch.tensor([-4.0, -5, -6, -7, 0, 1, 2, 3]))
    assert torch.equal(rotate_half(rotate_half(x)), -x)


def test_rotary_embedding_on_meta_device_keeps_real_frequencies():
    with torch.device("meta"):
        rope = RotaryEmbedding(Qwen3NextConfig.full())
    assert rope.inv_freq.device.type == "cpu"
    assert torch.equal(rope.inv_freq, default_inv_freq(1e7, 64))
    rope.inv_freq = torch.empty_like(rope.inv_freq)
    rope.reset_inv_freq()
    assert torch.equal(rope.inv_freq, default_inv_freq(1e7, 64))


def test_errors_name_the_problem():
    cfg = Qwen3NextConfig.tiny()
    rope = RotaryEmbedding(cfg)
    with pytest.raises(ValueError, match="position_ids"):
        rope(torch.arange(4.0)[None])
    with pytest.raises(ValueError, match="position_ids"):
        rope(torch.arange(4))
    cos, sin = rope(torch.arange(4)[None])
    with pytest.raises(ValueError, match="positions"):
        apply_rotary(torch.randn(1, 2, 5, cfg.head_dim), cos, sin)
    with pytest.raises(ValueError, match="x: expected shape"):
        apply_rotary(torch.randn(2, 4, cfg.head_dim), cos, sin)
    with pytest.raises(ValueError, match="rotary_dim"):
        default_inv_freq(1e4, 7)
