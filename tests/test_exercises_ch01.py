"""The checks of chapter 01's exercises: a right answer passes, a wrong one fails, the placeholder gets a hint."""

from __future__ import annotations

from qwen3next.accounting import cache_bytes, deltanet_mixer_params, parameter_counts
from qwen3next.config import Qwen3NextConfig
from qwen3next.exercises import ch01_overview as ex


def test_deltanet_params(capsys):
    assert ex.check_deltanet_params(deltanet_mixer_params)
    assert "All 5 inputs" in capsys.readouterr().out
    assert not ex.check_deltanet_params(lambda cfg: 33_718_464)  # the release's number typed in
    assert "input 2 of 5" in capsys.readouterr().out
    assert not ex.check_deltanet_params(lambda cfg: 1 / 0)  # an error in the reader's code is reported
    assert "ZeroDivisionError" in capsys.readouterr().out
    assert not ex.check_deltanet_params(...)
    assert "replace `...`" in capsys.readouterr().out
    # the configs differ in every size the count depends on
    assert len({deltanet_mixer_params(c) for c in ex.deltanet_configs()}) == 5


def test_value_checks(capsys):
    cfg = Qwen3NextConfig.full()
    assert ex.check_active_top20(parameter_counts(cfg.replace(num_experts_per_tok=20)).active_non_embedding)
    assert not ex.check_active_top20(parameter_counts(cfg).active_non_embedding)
    assert ex.check_kv_cache_gib(cache_bytes(cfg, 131_072, batch_size=4).attention_kv / 2**30)
    assert ex.check_kv_cache_gib(12.0)  # 4 x 131,072 x 12 layers x 2 x 2 x 256 x 2 bytes = 12 GiB
    assert not ex.check_kv_cache_gib(48.0)  # all 48 layers counted
    assert not ex.check_active_top20(...) and not ex.check_kv_cache_gib(...)
    out = capsys.readouterr().out
    assert out.count("Correct!") == 3 and out.count("Not yet") == 4
