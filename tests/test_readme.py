"""The README's package example runs as written (readers copy it first)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.usefixtures("one_thread")
def test_the_readme_example_runs_and_tells_a_story():
    text = README.read_text()
    section = text[text.index("## The package"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    story = namespace["tok"].decode(namespace["ids"][0])
    assert story.startswith("Once upon a time, there was") and "named" in story
    assert namespace["stats"].tokens_per_verify_step > 1
