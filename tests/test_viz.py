"""Tests for qwen3next.viz.source: package code shown in a chapter, whole or trimmed."""

from __future__ import annotations

import pytest

from qwen3next.deltanet import GatedDeltaNet
from qwen3next.viz import show_source, source_lines


def test_source_lines_without_docstring_keeps_the_code():
    lines = source_lines(GatedDeltaNet.gates, docstring=False)
    assert lines[0].startswith("def gates(")
    assert not any('"""' in line for line in lines)
    assert any("softplus" in line for line in lines)


def test_source_lines_trims_to_the_lines_asked_for():
    whole = source_lines(GatedDeltaNet.forward)
    assert source_lines(GatedDeltaNet.forward, lines=(2, 4)) == whole[1:4]
    with pytest.raises(ValueError, match="lines"):
        source_lines(GatedDeltaNet.forward, lines=(3, len(whole) + 1))


def test_show_source_is_a_python_markdown_block():
    md = show_source(GatedDeltaNet.gates)
    assert md.data.startswith("```python\n") and md.data.endswith("\n```")
    assert "def gates(" in md.data



def test_source_lines_finds_bounds_by_their_text():
    whole = source_lines(GatedDeltaNet.gates, docstring=False)
    last = whole[-1].strip()
    assert source_lines(GatedDeltaNet.gates, lines=(whole[1].strip()[:12], last), docstring=False) == whole[1:]
    with pytest.raises(ValueError, match="starts with 'no such line'"):
        source_lines(GatedDeltaNet.gates, lines=("no such line", last))
