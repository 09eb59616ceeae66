"""Write student notebooks: the chapters with their exercise solutions taken out.

Usage::

    python tools/make_student.py [chapters/NN_slug.ipynb ...] [-o student] [--clear-outputs]

With no notebook named, every ``chapters/[0-9]*.ipynb`` is converted. For each chapter:

- a code cell tagged ``solution`` in the book's form (CONTRIBUTING.md)::

      # @title Solution
      from qwen3next.exercises.ch05_delta_rule import check_state_norm
      answer = <the solution>
      assert check_state_norm(answer)

  becomes an answer cell that keeps the import and the check (without ``assert``, so a wrong answer
  prints a hint instead of stopping the notebook), with ``answer = ...  # your code here`` between;
- any other code cell tagged ``solution`` becomes an empty answer cell (``# your code here``);
- a Markdown cell tagged ``solution`` (a worded answer) becomes ``**Your answer:**``;
- every other cell is kept as it is, outputs included (``--clear-outputs`` drops them all).

Answer cells are tagged ``exercise`` and lose the book's folding (``hide-input``, ``cellView: form``).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
IMPORT = re.compile(r"^from qwen3next\.exercises(\.\w+)* import .+$")
CHECK = re.compile(r"^assert\s+(check_\w+\((.*)\))\s*(#.*)?$")
PLACEHOLDER = "...  # your code here"
NOTE = ("**Student version.** The solutions of the exercises are taken out. Write your answer where a "
        "cell says `# your code here` and run it: the check prints `Correct!` or a hint. The set-up cell "
        "installs everything in Google Colab.")


def is_solution(cell) -> bool:
    return "solution" in cell.get("metadata", {}).get("tags", [])


def answer_source(solution: str) -> str | None:
    """The student version of a solution cell in the book's form, or None if it is not in that form."""
    lines = [ln.rstrip() for ln in solution.strip().splitlines()]
    imports = [ln for ln in lines if IMPORT.match(ln)]
    checks = [CHECK.match(ln) for ln in lines]
    checks = [m for m in checks if m]
    if not imports or not checks:
        return None
    names: list[str] = []
    for m in checks:
        for arg in m.group(2).split(","):
            arg = arg.strip()
            if re.fullmatch(r"[A-Za-z_]\w*", arg) and arg not in names:
                names.append(arg)
    if not names:
        return None
    body = [*imports, *(f"{n} = {PLACEHOLDER}" for n in names), *(m.group(1) for m in checks)]
    return "\n".join(body)


def _answer_cell(source: str, cell_type: str = "code"):
    make = nbformat.v4.new_code_cell if cell_type == "code" else nbformat.v4.new_markdown_cell
    cell = make(source)
    cell.metadata["tags"] = ["exercise"]
    return cell


def make_student(nb, clear_outputs: bool = False) -> tuple[object, list[str]]:
    """Return the student notebook for ``nb`` (not modified) and notes on cells not in the book's form."""
    out = nbformat.v4.new_notebook(metadata=nb.metadata, nbformat=nb.nbformat, nbformat_minor=nb.nbformat_minor)
    notes = []
    for i, cell in enumerate(nb.cells):
        if not is_solution(cell):
            new = nbformat.from_dict(cell)
            new.pop("id", None)
            if clear_outputs and new.cell_type == "code":
                new.outputs, new.execution_count = [], None
            out.cells.append(new)
        elif cell.cell_type == "code":
            src = answer_source(cell.source)
            if src is None:
                notes.append(f"cell {i}: solution code cell without a qwen3next.exercises check; left blank")
                src = "# your code here"
            out.cells.append(_answer_cell(src))
        else:
            out.cells.append(_answer_cell("**Your answer:**", "markdown"))
        if i == 0 and cell.cell_type == "markdown":
            out.cells.append(nbformat.v4.new_markdown_cell(NOTE))
    out = nbformat.from_dict(out)
    for k, cell in enumerate(out.cells):  # fresh, unique ids (nbformat >= 4.5 requires them)
        cell["id"] = f"student-{k:03d}"
    if (out.nbformat, out.nbformat_minor) < (4, 5):
        out.nbformat_minor = 5
    return out, notes


READ_WPM = 100  # words per minute for technical text with math and code
MIN_PER_CODE_CELL = 0.75  # run it, read its output
MIN_PER_EXERCISE = 10


def chapter_stats(nb) -> dict:
    """What a chapter asks of a student, and a time estimate (minutes) for a class session."""
    words = sum(len(c.source.split()) for c in nb.cells if c.cell_type == "markdown" and not is_solution(c))
    code = sum(c.cell_type == "code" and not is_solution(c) for c in nb.cells)
    figures = sum(any("image/png" in o.get("data", {}) for o in c.get("outputs", []))
                  for c in nb.cells if c.cell_type == "code")
    exercises = sum(len(re.findall(r"^### Exercise", c.source, re.M)) for c in nb.cells if c.cell_type == "markdown")
    minutes = words / READ_WPM + code * MIN_PER_CODE_CELL + exercises * MIN_PER_EXERCISE
    return {"words": words, "code_cells": code, "figures": figures, "exercises": exercises,
            "minutes": int(5 * round(minutes / 5))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*")
    ap.add_argument("-o", "--output", default=str(REPO / "student"))
    ap.add_argument("--clear-outputs", action="store_true", help="drop every output, not only the solutions'")
    ap.add_argument("--stats", action="store_true", help="print a time estimate per chapter; write nothing")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.notebooks] or sorted((REPO / "chapters").glob("[0-9]*.ipynb"))
    if not paths:
        print("no chapters found", file=sys.stderr)
        return 1
    if args.stats:
        print("| chapter | words | code cells | figures | exercises | minutes |")
        for path in paths:
            st = chapter_stats(nbformat.read(path, as_version=4))
            print(f"| {path.stem} | {st['words']} | {st['code_cells']} | {st['figures']} | {st['exercises']} "
                  f"| {st['minutes']} |")
        return 0
    outdir = Path(args.output)
    outdir.mkdir(parents=True, exist_ok=True)
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        student, notes = make_student(nb, clear_outputs=args.clear_outputs)
        nbformat.validate(student)
        nbformat.write(student, outdir / path.name)
        n = sum(is_solution(c) for c in nb.cells)
        print(f"{outdir / path.name}: {n} solution cells taken out")
        for note in notes:
            print(f"  note: {path.name} {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
