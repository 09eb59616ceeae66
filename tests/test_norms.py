"""norms: the zero-centred RMSNorm and the gated RMSNorm against the reference modules."""

import pytest
import torch

from qwen3next.norms import RMSNorm, RMSNormGated, rms_normalize
from qwen3next.reference import max_abs_diff, reference_twin


def _pair(cls, dim, seed=0):
    torch.manual_seed(seed)
    ours = cls(dim, eps=1e-6)
    with torch.no_grad():
        ours.weight.add_(0.1 * torch.randn(dim))  # move away from the init so the gain matters
    return ours, reference_twin(ours)


@pytest.mark.parametrize("dim, shape", [(16, (2, 5, 16)), (2048, (2, 7, 2048)), (256, (2, 16, 7, 256))])
def test_rmsnorm_matches_reference_fp32(dim, shape):
    ours, ref = _pair(RMSNorm, dim)
    x = 3 * torch.randn(shape)
    assert max_abs_diff(ours(x), ref(x)) <= 1e-5


def test_rmsnorm_matches_reference_bf16():
    ours, ref = _pair(RMSNorm, 2048)
    ours, ref = ours.to(torch.bfloat16), ref.to(torch.bfloat16)
    x = (3 * torch.randn(2, 7, 2048)).to(torch.bfloat16)
    y = ours(x)
    assert y.dtype == torch.bfloat16
    assert max_abs_diff(y, ref(x)) <= 1e-2  # same fp32 math, one rounding to bf16 at the end


def test_rmsnorm_zero_init_gives_unit_rms():
    norm = RMSNorm(64)
    assert torch.equal(norm.weight, torch.zeros(64))
    y = norm(5 * torch.randn(3, 64))
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(3), atol=1e-4)
    # (a plain x * w norm with this zero weight would give all zeros: the gain really is 1 + w)


def test_rmsnorm_keys_and_errors():
    assert list(RMSNorm(8).state_dict()) == ["weight"]
    with pytest.raises(ValueError, match="last dimension 8"):
        RMSNorm(8)(torch.randn(2, 7))


@pytest.mark.parametrize("shape", [(2, 5, 4, 16), (1, 6, 32, 128)])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_gated_rmsnorm_matches_reference(shape, dtype, tol):
    ours, ref = _pair(RMSNormGated, shape[-1])
    ours, ref = ours.to(dtype), ref.to(dtype)
    x, z = (2 * torch.randn(shape)).to(dtype), (2 * torch.randn(shape)).to(dtype)
    y = ours(x, z)
    assert y.dtype == dtype
    assert max_abs_diff(y, ref(x, z)) <= tol


def test_gated_rmsnorm_formula_and_errors():
    norm = RMSNormGated(8)
    assert torch.equal(norm.weight, torch.ones(8))
    x, z = torch.randn(3, 8), torch.randn(3, 8)
    expected = rms_normalize(x, 1e-6) * torch.nn.functional.silu(z)
    assert max_abs_diff(norm(x, z), expected) <= 1e-6
    with pytest.raises(ValueError, match="gate"):
        norm(x, z[:, :4])
    with pytest.raises(ValueError, match="last dimension 8"):
        norm(torch.randn(3, 4), torch.randn(3, 4))
