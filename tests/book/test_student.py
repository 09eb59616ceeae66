"""The classroom kit: student notebooks, the exercise checks behind them, and the teacher's page.

``tools/make_student.py`` turns every chapter into a student notebook. These tests check, for every
chapter present, that the result is a valid notebook with no solution left in it, that each answer
cell runs as written (the check prints a hint for the placeholder ``...`` instead of crashing), that
each ``check_...`` defined for a chapter is used by one of its solutions, and that the teacher's page
gives a time for every chapter of ``_toc.yml``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import re
from pathlib import Path

import nbformat
import pytest

from tools import check_site, make_student

REPO = Path(__file__).resolve().parents[2]


CHAPTERS = sorted((REPO / "chapters").glob("[0-9]*.ipynb"))
IDS = [c.stem for c in CHAPTERS]

SOLUTION = """# @title Solution
from qwen3next.exercises.ch01_overview import check_routed_fraction
from qwen3next.accounting import parameter_counts
p = parameter_counts(Qwen3NextConfig.full())
answer = p.routed_experts / p.total
assert check_routed_fraction(answer)"""


def code_lines(cells) -> set[str]:
    return {ln.strip() for c in cells if c.cell_type == "code" for ln in c.source.splitlines() if ln.strip()}


def test_answer_source_keeps_import_and_check_only():
    assert make_student.answer_source(SOLUTION) == (
        "from qwen3next.exercises.ch01_overview import check_routed_fraction\n"
        "answer = ...  # your code here\n"
        "check_routed_fraction(answer)")
    assert make_student.answer_source("# @title Solution\nx = 1\nprint(x)") is None  # no check: not the form


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_student_notebook(chapter, tmp_path):
    assert make_student.main([str(chapter), "-o", str(tmp_path)]) == 0
    book = nbformat.read(chapter, as_version=4)
    student = nbformat.read(tmp_path / chapter.name, as_version=4)
    nbformat.validate(student)

    solutions = [c for c in book.cells if make_student.is_solution(c)]
    assert solutions, f"{chapter.name} has no exercise solutions tagged 'solution'"
    assert not any(make_student.is_solution(c) for c in student.cells)
    assert "# @title Solution" not in "".join(c.source for c in student.cells)
    assert not any("<summary>Solution" in c.source for c in student.cells)

    # no line of solution code survives, unless the chapter's own (non-solution) cells have it too
    kept = [c for c in book.cells if not make_student.is_solution(c)]
    leaked = (code_lines(solutions) & code_lines(student.cells)) - code_lines(kept)
    allowed = {ln for c in solutions for ln in c.source.splitlines()
               if make_student.IMPORT.match(ln.strip())}
    assert leaked <= allowed, f"solution code left in the student notebook: {sorted(leaked - allowed)}"

    # one answer cell per solution, in place, and the rest of the chapter unchanged
    answers = [c for c in student.cells if "exercise" in c.metadata.get("tags", [])]
    assert len(answers) == len(solutions)
    answer_ids = {id(c) for c in answers}
    rest = [c.source for c in student.cells if id(c) not in answer_ids]
    assert rest == [kept[0].source, make_student.NOTE, *(c.source for c in kept[1:])]
    for a in answers:
        assert "cellView" not in a.metadata and "hide-input" not in a.metadata.get("tags", [])
        if a.cell_type == "code":
            assert a.outputs == [] and a.execution_count is None


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_answer_cells_run_and_give_a_hint(chapter):
    """Run each answer cell as a student first sees it: the check must print a hint, not raise."""
    student, _ = make_student.make_student(nbformat.read(chapter, as_version=4))
    cells = [c for c in student.cells if c.cell_type == "code" and "exercise" in c.metadata.get("tags", [])
             and "check_" in c.source]
    for cell in cells:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(cell.source, f"<{chapter.stem} answer cell>", "exec"), {})
        assert "Not yet" in out.getvalue() and "Hint" in out.getvalue(), \
            f"{chapter.name}: the check gave {out.getvalue()!r} for the placeholder answer"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_every_check_is_used_by_a_solution(chapter):
    module_name = f"qwen3next.exercises.ch{chapter.stem}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        pytest.fail(f"{chapter.name} has no exercise checks: expected the module {module_name}")
    checks = {n for n, f in inspect.getmembers(module, inspect.isfunction)
              if n.startswith("check_") and f.__module__ == module.__name__}
    assert checks, f"{module_name} defines no check_... function"
    solutions = "".join(c.source for c in nbformat.read(chapter, as_version=4).cells
                        if make_student.is_solution(c))
    used = set(re.findall(r"assert (check_\w+)\(", solutions))
    assert checks <= used, f"{chapter.name}: checks never used by a solution: {sorted(checks - used)}"


def test_teachers_page_has_a_time_for_every_chapter():
    text = (REPO / "book" / "teachers.md").read_text()
    for doc in check_site.toc_files(REPO):
        if doc.startswith("chapters/"):
            name = doc.split("/")[1]
            row = re.search(rf"^\|[^\n]*{re.escape(name)}[^\n]*\|\s*(\d+)[^\n|]*min", text, re.M)
            assert row, f"book/teachers.md: no row with the expected time for {name}"


def test_framework_checks_answer_the_placeholder(capsys):
    import torch

    from qwen3next.exercises import UNANSWERED, check_close, check_equal, check_tensor_close

    assert not check_equal(..., 3, "count the heads.")
    assert not check_close(..., 0.5, "divide.")
    assert not check_tensor_close(..., torch.zeros(2), "use softmax.")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(ln.startswith("Not yet. Hint: " + UNANSWERED) for ln in lines), lines
    assert check_equal(3, 3, "count the heads.") and capsys.readouterr().out.strip() == "Correct!"


def _names(source: str, ctx) -> set[str]:
    import ast

    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]  # IPython magics
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return set()
    found = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ctx)}
    if ctx is ast.Store:
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
                found.add(n.name)
            elif isinstance(n, (ast.Import, ast.ImportFrom)):
                found |= {(a.asname or a.name).split(".")[0] for a in n.names}
    return found


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_student_notebook_needs_nothing_from_a_solution(chapter):
    """A cell the student keeps must not use a name that only a (removed) solution defines."""
    import ast

    cells = [c for c in nbformat.read(chapter, as_version=4).cells if c.cell_type == "code"]
    defined_by_kept: set[str] = set()
    only_in_solutions: set[str] = set()
    for cell in cells:
        if make_student.is_solution(cell):
            only_in_solutions |= _names(cell.source, ast.Store) - defined_by_kept
            continue
        used = _names(cell.source, ast.Load) & only_in_solutions
        assert not used, f"{chapter.name}: a kept cell uses {sorted(used)}, defined only by a solution cell"
        defined_by_kept |= _names(cell.source, ast.Store)
        only_in_solutions -= defined_by_kept


@pytest.mark.slow
def test_first_student_notebook_runs_top_to_bottom(tmp_path):
    """The first chapter's student notebook, run as a student first opens it: no error, a hint per answer."""
    from nbclient import NotebookClient

    docs = [d for d in check_site.toc_files(REPO) if d.startswith("chapters/")]
    assert docs, "_toc.yml lists no chapter"
    chapter = REPO / f"{docs[0]}.ipynb"
    student, _ = make_student.make_student(nbformat.read(chapter, as_version=4), clear_outputs=True)
    NotebookClient(student, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on any error
    answers = [c for c in student.cells if c.cell_type == "code" and "exercise" in c.metadata.get("tags", [])
               and "check_" in c.source]
    assert answers
    for cell in answers:
        text = "".join(o.get("text", "") for o in cell.outputs)
        assert "Not yet" in text, f"{chapter.name}: an answer cell printed {text!r}"
