"""Package code the chapters display fits the page's code column.

A chapter shows package code with ``show_source(obj, lines=..., docstring=...)``; the book's code box
is 84 characters wide, and a longer line wraps inside it. This test reads every chapter's code cells
(nothing is executed), finds each ``show_source(...)`` call with ``ast``, resolves its object from the
chapter's own ``qwen3next`` imports, and checks the lines the call would display: the call must not
raise (its ``lines=`` anchors still match) and no line may be wider than the column.
"""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest

from qwen3next.viz import source_lines

REPO = Path(__file__).resolve().parents[2]
CHAPTERS = sorted((REPO / "chapters").glob("[0-9][0-9]_*.ipynb"))
WIDTH = 84


def code_cells(chapter: Path) -> list[tuple[int, ast.Module]]:
    """(cell index, parsed source) of each code cell that parses (IPython magics may not)."""
    cells = json.loads(chapter.read_text(encoding="utf-8"))["cells"]
    out = []
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        try:
            out.append((index, ast.parse("".join(cell["source"]))))
        except SyntaxError:
            continue
    return out


def package_namespace(cells: list[tuple[int, ast.Module]]) -> dict:
    """The names the chapter's top-level imports bind from the package (only ``qwen3next``: fast)."""
    namespace: dict = {}
    for _index, tree in cells:
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "qwen3next":
                module = importlib.import_module(node.module)
                for alias in node.names:
                    name = alias.asname or alias.name
                    try:
                        namespace[name] = getattr(module, alias.name)
                    except AttributeError:  # a submodule: `from qwen3next import bpe as bpe_module`
                        namespace[name] = importlib.import_module(f"{node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "qwen3next":
                        module = importlib.import_module(alias.name)
                        if alias.asname:
                            namespace[alias.asname] = module
                        else:
                            namespace["qwen3next"] = importlib.import_module("qwen3next")
    return namespace


def show_source_calls(cells: list[tuple[int, ast.Module]]) -> list[tuple[int, ast.Call]]:
    return [(index, node) for index, tree in cells for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "show_source"]


def displayed_lines(call: ast.Call, namespace: dict) -> list[str]:
    """The lines ``call`` displays: its arguments evaluated in ``namespace``, given to ``source_lines``."""
    args = [eval(compile(ast.Expression(arg), "<cell>", "eval"), dict(namespace)) for arg in call.args]
    kwargs = {kw.arg: eval(compile(ast.Expression(kw.value), "<cell>", "eval"), dict(namespace))
              for kw in call.keywords}
    return source_lines(*args, **kwargs)


def test_the_chapters_show_package_code():
    assert CHAPTERS, "no chapters found"
    assert sum(len(show_source_calls(code_cells(ch))) for ch in CHAPTERS) > 0


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[ch.stem for ch in CHAPTERS])
def test_displayed_source_fits_the_code_column(chapter: Path):
    cells = code_cells(chapter)
    namespace = package_namespace(cells)
    too_wide = []
    for index, call in show_source_calls(cells):
        where = f"{chapter.name} cell {index}: {ast.unparse(call)}"
        try:
            lines = displayed_lines(call, namespace)
        except Exception as error:  # a name the chapter does not import, or an anchor that no longer matches
            pytest.fail(f"{where} raised {type(error).__name__}: {error}")
        assert lines, f"{where} displays nothing"
        too_wide += [f"{where}: {len(line)} chars: {line.strip()[:60]}" for line in lines if len(line) > WIDTH]
    assert not too_wide, f"lines wider than {WIDTH} characters:\n" + "\n".join(too_wide)
