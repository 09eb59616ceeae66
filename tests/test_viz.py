"""Tests for qwen3next.viz.source: package code shown in a chapter, whole or trimmed."""

from __future__ import annotations

import textwrap

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
    assert source_lines(GatedDeltaNet.forward, lines=(1, 4)) == whole[:4]
    with pytest.raises(ValueError, match="lines"):
        source_lines(GatedDeltaNet.forward, lines=(3, len(whole) + 1))


def test_an_excerpt_from_a_body_loses_the_bodys_indentation():
    whole = source_lines(GatedDeltaNet.forward, docstring=False)
    body = [line for line in whole[1:] if line.strip()]
    excerpt = source_lines(GatedDeltaNet.forward, lines=(body[0].strip(), body[2].strip()), docstring=False)
    assert excerpt[0] == body[0].strip()  # the body's first line starts at the left margin
    assert [line.strip() for line in excerpt if line.strip()] == [line.strip() for line in body[:3]]


def test_show_source_is_a_python_markdown_block():
    md = show_source(GatedDeltaNet.gates)
    assert md.data.startswith("```python\n") and md.data.endswith("\n```")
    assert "def gates(" in md.data



def test_source_lines_finds_bounds_by_their_text():
    whole = source_lines(GatedDeltaNet.gates, docstring=False)
    last = whole[-1].strip()
    expected = textwrap.dedent("\n".join(whole[1:])).splitlines()
    assert source_lines(GatedDeltaNet.gates, lines=(whole[1].strip()[:12], last), docstring=False) == expected
    with pytest.raises(ValueError, match="starts with 'no such line'"):
        source_lines(GatedDeltaNet.gates, lines=("no such line", last))
