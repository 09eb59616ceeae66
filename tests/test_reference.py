"""Tests for qwen3next.reference: the checks chapters print."""

from __future__ import annotations

import pytest


def test_check_close_prints_a_stable_bound_and_fails_past_the_tolerance(capsys):
    import torch

    from qwen3next.reference import check_close, diff_bound

    a = torch.zeros(3)
    assert check_close("same", a, a, 1e-5) == 0.0
    check_close("near", a, a + 3e-7, 1e-5)
    assert capsys.readouterr().out.splitlines() == ["same: max |diff| = 0 (tolerance 1e-05)",
                                                    "near: max |diff| <= 1e-06 (tolerance 1e-05)"]
    assert diff_bound(0.02) == "<= 1e-01"
    with pytest.raises(AssertionError, match="far"):
        check_close("far", a, a + 1e-3, 1e-5)
    with pytest.raises(AssertionError):
        check_close("nan", a, a * float("nan"), 1e-5)


def test_reference_twin_copies_weights_dtype_and_mode_and_refuses_unknown_blocks():
    import torch

    from qwen3next.attention import GatedAttention
    from qwen3next.config import Qwen3NextConfig
    from qwen3next.reference import reference_twin

    cfg = Qwen3NextConfig.tiny()
    ours = GatedAttention(cfg, layer_idx=3).to(torch.bfloat16).eval()
    ref = reference_twin(ours, cfg)
    assert type(ref).__name__ == "Qwen3NextAttention" and not ref.training and ref.layer_idx == 3
    assert all(torch.equal(a, b) and a.dtype == torch.bfloat16 and a.data_ptr() != b.data_ptr()
               for a, b in zip(ours.state_dict().values(), ref.state_dict().values(), strict=True))
    with pytest.raises(TypeError, match="no reference twin for Linear"):
        reference_twin(torch.nn.Linear(2, 2), cfg)
