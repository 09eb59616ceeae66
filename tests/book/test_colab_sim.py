"""Every chapter opens in Colab: its first code cell is the book's set-up cell, which installs the package
in Colab (or from ``$QWEN3NEXT_INSTALL``) and does nothing elsewhere, and prints the versions it ran with.

The last test runs the first chapter of ``_toc.yml`` in a simulated Colab (``tools/colab_sim.py``): a
fresh virtual environment with torch and a Jupyter kernel only, where the set-up cell itself installs
``qwen3next[book]`` from a copy of this repository.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

from tools import check_site, colab_sim

REPO = Path(__file__).resolve().parents[2]


CHAPTERS = sorted((REPO / "chapters").glob("[0-9]*.ipynb"))


SETUP_TAGS = {"nbval-ignore-output", "hide-cell"}  # nbval ignores its output; the book folds it


def setup_cell_from_contributing() -> str:
    """The set-up cell as CONTRIBUTING.md gives it (the one place it is written down), without an nbval
    comment line: the cell carries the tag instead, so the reader never sees the harness."""
    text = (REPO / "CONTRIBUTING.md").read_text()
    start = text.index("The set-up cell")
    block = re.search(r"```python\n(.*?)\n\s*```", text[start:], re.S)
    assert block, "CONTRIBUTING.md: no ```python block after 'The set-up cell'"
    lines = textwrap.dedent(block.group(1)).strip().splitlines()
    return "\n".join(ln for ln in lines if ln.strip() != "# NBVAL_IGNORE_OUTPUT")


def first_code_cell(path: Path) -> dict:
    nb = json.loads(path.read_text())
    return next(c for c in nb["cells"] if c["cell_type"] == "code")


def src(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_first_code_cell_is_the_setup_cell(chapter):
    nb = json.loads(chapter.read_text())
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", f"{chapter.name}: kernelspec"
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and re.match(r"# \d+\. \S", src(first)), \
        f"{chapter.name}: the first cell must be the title '# N. Title', found {src(first)[:60]!r}"
    setup = first_code_cell(chapter)
    assert src(setup).strip() == setup_cell_from_contributing(), \
        f"{chapter.name}: the first code cell is not the set-up cell of CONTRIBUTING.md"
    tags = set(setup.get("metadata", {}).get("tags", []))
    assert SETUP_TAGS <= tags, f"{chapter.name}: set-up cell tags {sorted(tags)}, expected {sorted(SETUP_TAGS)}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_chapter_printed_its_versions(chapter):
    text = colab_sim.first_cell_output(json.loads(chapter.read_text()))
    assert colab_sim.VERSIONS_LINE.search(text), f"{chapter.name}: the set-up cell's committed output is {text!r}"


def test_setup_cell_installs_in_colab_only():
    """Run the set-up cell in IPython three times, with ``%pip`` recorded instead of run."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    calls: list[str] = []
    shell.register_magic_function(lambda line: calls.append(line), "line", "pip")
    cell = setup_cell_from_contributing()
    repo_url = check_site.read_config(REPO)["repository"]["url"]

    def run(env_source=None, colab=False):
        calls.clear()
        saved = dict(__import__("os").environ)
        import os

        os.environ.pop("QWEN3NEXT_INSTALL", None)
        if env_source:
            os.environ["QWEN3NEXT_INSTALL"] = env_source
        if colab:
            sys.modules["google.colab"] = type(sys)("google.colab")
        try:
            result = shell.run_cell(cell, silent=True)
            assert result.success, result.error_in_exec or result.error_before_exec
        finally:
            sys.modules.pop("google.colab", None)
            os.environ.clear()
            os.environ.update(saved)
        return list(calls)

    assert run() == [], "outside Colab the set-up cell must not install anything"
    assert run(env_source="file:///some/where") == ['install -q "qwen3next[book] @ file:///some/where"']
    assert run(colab=True) == [f'install -q "qwen3next[book] @ git+{repo_url}"'], \
        "in Colab the set-up cell must install from the repository of _config.yml"


def installed_by_setup_cell() -> set[str]:
    """Distributions present in Colab after the set-up cell: what Colab brings that the chapters rely on
    (torch, the Jupyter kernel) plus the dependency closure of ``qwen3next[book]``."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [("qwen3next", {"book"}), ("torch", set()), ("ipykernel", set())]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, set(req.extras)))
    return seen


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_chapter_imports_only_what_the_setup_cell_installs(chapter):
    from importlib import metadata

    from packaging.utils import canonicalize_name

    available = installed_by_setup_cell()
    owners = metadata.packages_distributions()
    nb = json.loads(chapter.read_text())
    modules = set()
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            modules |= set(re.findall(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", src(cell), re.M))
    missing = []
    for mod in sorted(modules):
        if mod in sys.stdlib_module_names or mod == "qwen3next":
            continue
        dists = {canonicalize_name(d) for d in owners.get(mod, [])}
        if not dists & available:
            missing.append(f"{mod} (from {sorted(dists) or 'no installed distribution'})")
    assert not missing, (f"{chapter.name} imports {missing}, which the set-up cell does not install in Colab: "
                         "add them to the `book` extra in pyproject.toml")


@pytest.mark.slow
def test_first_chapter_runs_in_simulated_colab(tmp_path):
    chapters = [d for d in check_site.toc_files(REPO) if d.startswith("chapters/")]
    assert chapters, "_toc.yml lists no chapter"
    notebook = REPO / f"{chapters[0]}.ipynb"
    seen = colab_sim.simulate(notebook, tmp_path)
    assert seen["versions"].startswith("python ")
    assert "transformers 5.24.0" in seen["versions"], seen["versions"]  # the pinned reference was installed
    assert Path(seen["qwen3next"]).is_relative_to(tmp_path)
    assert seen["figures"] >= 2
