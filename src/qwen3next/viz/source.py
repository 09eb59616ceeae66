"""Showing the package's own code in a chapter: highlighted, and trimmed to the mechanism.

A chapter never pastes package code; it displays it. :func:`show_source` renders the source of a function,
class or method as a highlighted Python block (Markdown, so the built book highlights it like any other
code), optionally only some of its lines, so that the page shows the computation and not the input checks
around it.
"""

from __future__ import annotations

import ast
import inspect
import textwrap


def source_lines(obj, lines: tuple[int | str, int | str] | None = None, docstring: bool = True) -> list[str]:
    """The source lines of ``obj``, dedented (an excerpt by its own indentation).

    ``lines = (first, last)`` keeps only those lines, inclusive. Each bound is a line number, counted
    from 1 at the first line of the source (decorators included), or the start of a line's text (its
    indentation ignored): ``("while heap:", "return out")`` keeps the first line starting "while heap:"
    through the next line after it starting "return out", so the excerpt survives edits above it.
    ``docstring=False`` drops the docstring first.
    """
    out = textwrap.dedent(inspect.getsource(obj)).splitlines()
    if not docstring:
        out = _without_docstring(out)
    if lines is not None:
        first = _line_number(out, lines[0], 1, obj)
        last = _line_number(out, lines[1], first, obj)
        if not (1 <= first <= last <= len(out)):
            raise ValueError(f"lines: expected 1 <= first <= last <= {len(out)} for {obj.__qualname__}, "
                             f"found {lines}")
        # an excerpt from inside a body loses the body's indentation too: the page has no room for it
        out = textwrap.dedent("\n".join(out[first - 1:last])).splitlines()
    return out


def _line_number(lines: list[str], bound: int | str, start: int, obj) -> int:
    """``bound`` as a line number: itself, or the first line from ``start`` on whose text starts with it."""
    if isinstance(bound, int):
        return bound
    for number in range(start, len(lines) + 1):
        if lines[number - 1].strip().startswith(bound):
            return number
    raise ValueError(f"lines: no line of {obj.__qualname__} from line {start} on starts with {bound!r}")


def _without_docstring(lines: list[str]) -> list[str]:
    """``lines`` of one ``def`` or ``class`` without its docstring (found by parsing, not by quotes)."""
    node = ast.parse("\n".join(lines)).body[0]
    body = getattr(node, "body", [])
    if not (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        return lines
    doc = body[0]
    return lines[:doc.lineno - 1] + lines[doc.end_lineno:]


def show_source(obj, lines: tuple[int | str, int | str] | None = None, docstring: bool = True):
    """Display the source of ``obj`` as a highlighted Python block (see :func:`source_lines`).

    In a notebook this returns a Markdown object (the HTML book renders and highlights it); outside
    IPython it prints the code and returns None.
    """
    code = "\n".join(source_lines(obj, lines, docstring))
    try:
        from IPython.display import Markdown
    except ImportError:  # outside Jupyter: plain text
        print(code)
        return None
    return Markdown(f"```python\n{code}\n```")
