"""attention: gated attention and its KV cache against the reference ``Qwen3NextAttention``."""

import pytest
import torch
from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextAttention

from qwen3next.attention import (
    GatedAttention,
    KVCache,
    allowed_positions,
    attention_weights,
    eager_attention,
    sdpa_attention,
)
from qwen3next.config import Qwen3NextConfig
from qwen3next.reference import max_abs_diff, reference_config, reference_twin
from qwen3next.rope import RotaryEmbedding

REAL = Qwen3NextConfig.full()  # hidden 2048, 16 / 2 heads of 256
TINY = Qwen3NextConfig.tiny()


def _attention(cfg, seed=0, implementation="sdpa"):
    torch.manual_seed(seed)
    attn = GatedAttention(cfg, layer_idx=3, implementation=implementation)  # default nn.Linear init
    with torch.no_grad():
        attn.q_norm.weight.normal_(0, 0.2)
        attn.k_norm.weight.normal_(0, 0.2)
    return attn


def _inputs(cfg, B=2, T=9, pad=3, seed=1):
    """x, cos, sin and a left-padded 2-D mask (the last row starts with `pad` padding tokens)."""
    torch.manual_seed(seed)
    x = torch.randn(B, T, cfg.hidden_size)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[-1, :pad] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # padded rows start counting at their first real token
    cos, sin = RotaryEmbedding(cfg)(position_ids)
    return x, cos, sin, mask


def _reference_mask(mask, dtype):
    """The 4-D additive mask the reference's eager path expects: causal and padding."""
    T = mask.shape[1]
    allowed = torch.tril(torch.ones(T, T, dtype=torch.bool))[None, None] & mask.bool()[:, None, None, :]
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


def _real_rows(out, mask):
    return out[mask.bool()]  # (real tokens, hidden): padding rows are undefined by design


def test_state_dict_is_the_checkpoint_layout():
    with torch.device("meta"):
        attn = GatedAttention(REAL, 3)
    shapes = {k: tuple(v.shape) for k, v in attn.state_dict().items()}
    assert shapes == {
        "q_proj.weight": (8192, 2048), "k_proj.weight": (512, 2048), "v_proj.weight": (512, 2048),
        "o_proj.weight": (2048, 4096), "q_norm.weight": (256,), "k_norm.weight": (256,),
    }
    assert sum(p.numel() for p in attn.parameters()) == 27_263_488  # the book's reference page, parameter counts
    assert all(m.bias is None for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj))


def test_built_alone_is_initialised_like_the_reference_built_alone():
    torch.manual_seed(4)
    ours = GatedAttention(TINY, 3)
    torch.manual_seed(4)
    ref = Qwen3NextAttention(reference_config(TINY), layer_idx=3)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), ref.state_dict().values(), strict=True))


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("cfg", [TINY, pytest.param(REAL, marks=pytest.mark.slow)], ids=["tiny", "real"])
def test_matches_reference_fp32(cfg, implementation):
    ours = _attention(cfg, implementation=implementation)
    ref = reference_twin(ours, cfg)
    x, cos, sin, mask = _inputs(cfg)
    with torch.no_grad():
        y = ours(x, cos, sin, attention_mask=mask)
        y_ref, _ = ref(x, (cos, sin), _reference_mask(mask, torch.float32))
        y_nomask = ours(x[:1], cos[:1], sin[:1])
        y_ref_nomask, _ = ref(x[:1], (cos[:1], sin[:1]), _reference_mask(mask[:1], torch.float32))
    assert y.shape == x.shape and bool(y.isfinite().all())
    assert max_abs_diff(_real_rows(y, mask), _real_rows(y_ref, mask)) <= 1e-5
    assert max_abs_diff(y_nomask, y_ref_nomask) <= 1e-5


@pytest.mark.parametrize("implementation, tol", [("eager", 1e-3), ("sdpa", 1e-2)])
@pytest.mark.parametrize("cfg", [TINY, pytest.param(REAL, marks=pytest.mark.slow)], ids=["tiny", "real"])
def test_matches_reference_bf16(cfg, implementation, tol):
    ours = _attention(cfg, implementation=implementation)
    ref = reference_twin(ours, cfg)
    ours, ref = ours.to(torch.bfloat16), ref.to(torch.bfloat16)
    x, cos, sin, mask = _inputs(cfg)
    x = x.to(torch.bfloat16)
    with torch.no_grad():
        y = ours(x, cos, sin, attention_mask=mask)
        # the reference model hands its attention cos/sin already in the activation dtype
        y_ref, _ = ref(x, (cos.to(torch.bfloat16), sin.to(torch.bfloat16)), _reference_mask(mask, torch.bfloat16))
    assert y.dtype == torch.bfloat16
    scale = _real_rows(y_ref, mask).float().abs().max().item()
    assert max_abs_diff(_real_rows(y, mask), _real_rows(y_ref, mask)) <= tol * max(scale, 1.0)


@pytest.mark.parametrize("cfg", [TINY, pytest.param(REAL, marks=pytest.mark.slow)], ids=["tiny", "real"])
def test_eager_equals_sdpa(cfg):
    attn = _attention(cfg)
    x, cos, sin, mask = _inputs(cfg)
    with torch.no_grad():
        attn.implementation = "eager"
        y_eager = attn(x, cos, sin, attention_mask=mask)
        attn.implementation = "sdpa"
        y_sdpa = attn(x, cos, sin, attention_mask=mask)
    assert max_abs_diff(y_eager, y_sdpa) <= 1e-5  # padding rows included: both open them up the same way


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("cfg", [TINY, pytest.param(REAL, marks=pytest.mark.slow)], ids=["tiny", "real"])
def test_prefill_then_steps_equals_full_forward(cfg, implementation):
    attn = _attention(cfg, implementation=implementation)
    x, cos, sin, mask = _inputs(cfg, T=10)
    with torch.no_grad():
        full = attn(x, cos, sin, attention_mask=mask)
        cache = KVCache()
        pieces = [attn(x[:, :5], cos[:, :5], sin[:, :5], attention_mask=mask[:, :5], cache=cache)]
        for t in range(5, 8):  # one token at a time
            pieces.append(attn(x[:, t : t + 1], cos[:, t : t + 1], sin[:, t : t + 1], mask[:, : t + 1], cache))
        pieces.append(attn(x[:, 8:], cos[:, 8:], sin[:, 8:], mask, cache))  # a 2-token step on a warm cache
    stepped = torch.cat(pieces, dim=1)
    assert cache.length == 10 and cache.key.shape == (2, cfg.num_key_value_heads, 10, cfg.head_dim)
    assert max_abs_diff(_real_rows(stepped, mask), _real_rows(full, mask)) <= 1e-5


@pytest.mark.parametrize("chunks", [(1, 1, 1, 1, 1, 1, 1, 1, 1), (3, 3, 3), (8, 1), (2, 5, 2)])
def test_cache_any_split_equals_full_forward(chunks):
    """Whatever the sizes of the steps, feeding a padded batch through the cache gives the full pass."""
    attn = _attention(TINY, implementation="eager")
    x, cos, sin, mask = _inputs(TINY, T=sum(chunks), pad=4)
    with torch.no_grad():
        full = attn(x, cos, sin, attention_mask=mask)
        cache, pieces, start = KVCache(), [], 0
        for n in chunks:
            end = start + n
            pieces.append(attn(x[:, start:end], cos[:, start:end], sin[:, start:end], mask[:, :end], cache))
            start = end
    stepped = torch.cat(pieces, dim=1)
    assert bool(stepped.isfinite().all())
    assert max_abs_diff(_real_rows(stepped, mask), _real_rows(full, mask)) <= 1e-5


def test_cache_without_padding_mask():
    attn = _attention(TINY)
    x, cos, sin, _ = _inputs(TINY, T=6)
    with torch.no_grad():
        full = attn(x, cos, sin)
        cache = KVCache()
        steps = [attn(x[:, t : t + 1], cos[:, t : t + 1], sin[:, t : t + 1], cache=cache) for t in range(6)]
    assert max_abs_diff(torch.cat(steps, 1), full) <= 1e-5


def test_fully_masked_rows_stay_finite():
    attn = _attention(TINY)
    x, cos, sin, mask = _inputs(TINY, T=6, pad=4)
    mask[0, :] = 0  # a row of nothing but padding
    for implementation in ("eager", "sdpa"):
        attn.implementation = implementation
        with torch.no_grad():
            y = attn(x, cos, sin, attention_mask=mask)
            cache = KVCache()
            attn(x[:, :2], cos[:, :2], sin[:, :2], attention_mask=mask[:, :2], cache=cache)
            y_step = attn(x[:, 2:3], cos[:, 2:3], sin[:, 2:3], attention_mask=mask[:, :3], cache=cache)
        assert bool(y.isfinite().all()) and bool(y_step.isfinite().all()), implementation


def test_query_gate_interleaving_and_output_gate():
    attn = _attention(TINY)
    H, D = TINY.num_attention_heads, TINY.head_dim
    x, cos, sin, _ = _inputs(TINY, T=4)
    with torch.no_grad():
        _, _, _, gate = attn.project(x, cos, sin)
        W = attn.q_proj.weight  # (H * 2D, hidden)
        gate_rows = torch.cat([W[2 * h * D + D : 2 * (h + 1) * D] for h in range(H)])  # second half of each head
        assert max_abs_diff(gate, x @ gate_rows.T) <= 1e-6
        # a gate pushed to -inf closes the layer: output is exactly zero
        attn.q_proj.weight[torch.cat([torch.arange(2 * h * D + D, 2 * (h + 1) * D) for h in range(H)])] = 0
        y_half = attn(x, cos, sin)  # sigmoid(0) = 1/2
        attn.implementation = "eager"
        assert max_abs_diff(y_half, attn(x, cos, sin)) <= 1e-6


def test_causality():
    attn = _attention(TINY)
    x, cos, sin, _ = _inputs(TINY, B=1, T=6)
    with torch.no_grad():
        y = attn(x, cos, sin)
        x2 = x.clone()
        x2[:, 4:] += 1.0  # change the future
        y2 = attn(x2, cos, sin)
    assert torch.equal(y[:, :4], y2[:, :4]) and not torch.equal(y[:, 4:], y2[:, 4:])


def test_mask_builder():
    allowed = allowed_positions(None, 1, past=2, new=3, device=torch.device("cpu"))
    assert allowed.shape == (1, 1, 3, 5)
    assert allowed[0, 0].int().tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    pad = torch.tensor([[0, 0, 0, 1, 1]])
    allowed = allowed_positions(pad, 1, past=2, new=3, device=torch.device("cpu"))
    assert allowed[0, 0].int().tolist() == [[1, 1, 1, 1, 1], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]
    with pytest.raises(ValueError, match=r"attention_mask: expected .* \(1, 5\)"):
        allowed_positions(torch.ones(1, 3), 1, past=2, new=3, device=torch.device("cpu"))


def test_kernels_agree_on_random_gqa():
    torch.manual_seed(3)
    q, k, v = torch.randn(2, 8, 5, 16), torch.randn(2, 2, 7, 16), torch.randn(2, 2, 7, 16)
    allowed = allowed_positions(torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1]]), 2, 2, 5, torch.device("cpu"))
    o = eager_attention(q, k, v, allowed)
    assert max_abs_diff(o, sdpa_attention(q, k, v, allowed)) <= 1e-5
    # GQA: query head 5 reads kv head 5 // 4 = 1
    alone = eager_attention(q[:, 5:6], k[:, 1:2], v[:, 1:2], allowed)
    assert max_abs_diff(o[:, 5:6], alone) <= 1e-6


def test_kv_cache_bookkeeping():
    cache = KVCache()
    assert cache.length == 0 and cache.key is None and cache.nbytes() == 0
    k, v = torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8)
    k_all, v_all = cache.update(k, v)
    assert torch.equal(k_all, k) and cache.length == 4
    k2, v2 = torch.randn(3, 2, 1, 8), torch.randn(3, 2, 1, 8)
    k_all, v_all = cache.update(k2, v2)
    assert k_all.shape == (3, 2, 5, 8) and torch.equal(k_all[:, :, 4:], k2) and torch.equal(v_all[:, :, :4], v)
    assert cache.nbytes() == 2 * 3 * 2 * 5 * 8 * 4
    cache.reorder(torch.tensor([2, 0]))
    assert cache.key.shape[0] == 2 and torch.equal(cache.value[0, :, :4], v[2])
    assert torch.equal(cache.key[1, :, 4:], k2[0])
    cache.crop(3)
    assert cache.length == 3 and torch.equal(cache.key[0], k[2, :, :3])
    with pytest.raises(ValueError, match="length"):
        cache.crop(4)
    with pytest.raises(ValueError, match="cannot append"):
        cache.update(torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4))
    with pytest.raises(ValueError, match="k, v"):
        cache.update(torch.randn(2, 2, 1, 8), torch.randn(2, 2, 2, 8))
    cache.crop(0)
    assert cache.length == 0 and cache.key is None


def test_real_width_kv_cache_bytes_per_token():
    """The hybrid cache: 12 attention layers x (K + V) x 2 heads x 256 x bf16 = 24 KiB per token."""
    cache = KVCache()
    kv = torch.zeros(1, 2, 1, 256, dtype=torch.bfloat16)
    cache.update(kv, kv)
    assert 12 * cache.nbytes() == 24 * 1024


def test_bad_input_errors():
    attn = _attention(TINY)
    with pytest.raises(ValueError, match="implementation"):
        attn.implementation = "flash"
    with pytest.raises(ValueError, match="x: expected shape"):
        attn(torch.randn(4, TINY.hidden_size), *RotaryEmbedding(TINY)(torch.arange(4)[None]))


def test_attention_weights_match_reference():
    ours = _attention(TINY)
    ref = reference_twin(ours, TINY)
    x, cos, sin, mask = _inputs(TINY)
    with torch.no_grad():
        q, k, _, _ = ours.project(x, cos, sin)
        weights = attention_weights(q, k, allowed_positions(mask, 2, 0, x.shape[1], x.device))
        _, ref_weights = ref(x, (cos, sin), _reference_mask(mask, torch.float32))
    assert weights.shape == (2, TINY.num_attention_heads, 9, 9)
    assert torch.allclose(weights.sum(-1), torch.ones(2, TINY.num_attention_heads, 9))
    assert float(weights[0].triu(1).abs().max()) == 0.0  # causal: no weight on the future
    assert float(weights[1, :, 3:, :3].abs().max()) == 0.0  # real tokens put no weight on padding
    real = mask.bool()
    assert max_abs_diff(weights.transpose(1, 2)[real], ref_weights.transpose(1, 2)[real]) <= 1e-6


def test_decode_step_matches_reference_with_its_cache():
    """One token after a prefill: our KVCache against the reference's DynamicCache."""
    from transformers import DynamicCache

    ours = _attention(TINY)
    ref_cfg = reference_config(TINY)
    ref = Qwen3NextAttention(ref_cfg, layer_idx=3)
    ref.load_state_dict(ours.state_dict())
    x, cos, sin, _ = _inputs(TINY, B=1, T=7)
    ones = torch.ones(1, 7, dtype=torch.long)
    with torch.no_grad():
        ref_cache = DynamicCache(config=ref_cfg)
        ref(x[:, :6], (cos[:, :6], sin[:, :6]), _reference_mask(ones[:, :6], torch.float32), cache=ref_cache)
        y_ref, _ = ref(x[:, 6:], (cos[:, 6:], sin[:, 6:]), torch.zeros(1, 1, 1, 7), cache=ref_cache)
        cache = KVCache()
        ours(x[:, :6], cos[:, :6], sin[:, :6], cache=cache)
        y = ours(x[:, 6:], cos[:, 6:], sin[:, 6:], cache=cache)
    assert max_abs_diff(y, y_ref) <= 1e-5
    assert max_abs_diff(cache.key, ref_cache.layers[3].keys) <= 1e-6


def test_kv_cache_buffer_matches_concatenation_and_keeps_handed_out_tensors():
    """The growing buffer holds exactly what concatenating every step would; a crop cannot corrupt
    tensors returned before it."""
    torch.manual_seed(0)
    cache = KVCache()
    ks = [torch.randn(2, 3, t, 4) for t in (5, 1, 1, 70, 1, 2)]
    for k in ks:
        k_all, v_all = cache.update(k, -k)
    expected = torch.cat(ks, dim=2)
    assert torch.equal(k_all, expected) and torch.equal(v_all, -expected) and cache.length == 80
    assert cache.nbytes() == 2 * expected.numel() * 4  # the cached tokens, not the spare room
    before = k_all.clone()
    cache.crop(78)
    cache.update(torch.zeros(2, 3, 2, 4), torch.zeros(2, 3, 2, 4))
    assert torch.equal(k_all, before)
    assert torch.equal(cache.key[:, :, :78], expected[:, :, :78]) and cache.key[:, :, 78:].abs().sum() == 0
    cache.update(torch.ones(2, 3, 1, 4, dtype=torch.float64), torch.ones(2, 3, 1, 4, dtype=torch.float64))
    assert cache.key.dtype == torch.float32 and cache.length == 81


def test_sdpa_without_mask_is_causal_attention():
    """``allowed=None`` (nothing padded) gives what the explicit causal mask gives: a prompt, one new
    token, and a chunk of new tokens after a cached prefix."""
    from qwen3next.attention import sdpa_attention

    torch.manual_seed(0)
    k, v = torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    for past, new in ((0, 9), (8, 1), (5, 4)):
        q = torch.randn(2, 4, new, 8)
        allowed = allowed_positions(None, 2, past, new, q.device)
        expected = eager_attention(q, k, v, allowed)
        assert max_abs_diff(sdpa_attention(q, k, v, None), expected) <= 1e-5
