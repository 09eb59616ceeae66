"""Smoke tests of chapter 12's drawings: they draw on an Agg canvas and show the labels they must."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from qwen3next.config import Qwen3NextConfig  # noqa: E402
from qwen3next.engine import Engine, Request  # noqa: E402
from qwen3next.parallel_memory import memory_per_rank  # noqa: E402
from qwen3next.viz.serving import (  # noqa: E402
    draw_hit_rates,
    draw_memory,
    draw_memory_per_rank,
    draw_step_flow,
    draw_timeline,
    memory_snapshot,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_memory_and_timeline_drawings(model):
    engine = Engine(model, max_running=2, max_tokens_per_step=8, block_size=4, num_blocks=12,
                    prefix_caching="all", snapshot_slots=4)
    requests = [Request([1, 2, 3, 4, 5, 6, 7, 8, 9], 3, request_id="A"),
                Request([1, 2, 3, 4, 5, 6, 7, 8, 10], 3, request_id="B", arrival=2)]
    for r in requests:
        engine.add(r)
    engine.step()
    engine.step()
    snap = memory_snapshot(engine)
    slots, tables, pool = draw_memory(snap).axes
    assert [ax.get_title() for ax in (slots, tables, pool)] == ["state slots", "block tables",
                                                                 "block pool (4 tokens each)"]
    assert _texts(slots) == ["A", "B"]
    assert [t.get_text() for t in tables.get_yticklabels()] == ["A", "B"]
    assert str(snap["running"][1][2][0]) in _texts(pool)
    plt.close("all")
    while engine.has_work:
        engine.step()
    ax = draw_timeline(engine, requests)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["A", "B"]
    assert ax.get_xlabel() == "engine step"
    assert [t.get_text() for t in ax.get_legend().get_texts()][0] == "prompt chunk (tokens)"
    plt.close("all")


def test_hit_rate_and_flow_drawings():
    ax = draw_hit_rates([4, 8, 16], {"all": [0.5, 0.4, 0.2], "align": [0.3, 0.2, 0.1]}, marks={"vLLM": 8})
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["all", "align"]
    assert " vLLM" in _texts(ax)
    plt.close("all")
    ax = draw_step_flow()
    assert any("sparse MoE, all N tokens" in t for t in _texts(ax))
    assert any("(B, Hv, Dk, Dv) fp32" in t for t in _texts(ax))
    plt.close("all")
    rows = {n: memory_per_rank(Qwen3NextConfig.full(), n) for n in (1, 8)}
    ax = draw_memory_per_rank(rows)
    assert [t.get_text() for t in ax.get_legend().get_texts()][0] == "routed experts"
    assert "a 24 GiB GPU" in _texts(ax) and ax.get_xlabel() == "ranks (TP = EP)"
    plt.close("all")
