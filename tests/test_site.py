"""The published book, as a reader opens it: built with warnings as errors, then every page in Chromium.

The build runs once per session (``jupyter-book build . -W -n --keep-going --all``: ``--all`` so that
warnings of unchanged pages are not hidden by an incremental build). ``tools/check_site.py`` then opens
each page in headless Chromium (Debian's ``chromium``; ``make test`` installs it) and checks links,
images, math, the Colab and download buttons and the search page; screenshots go to
``artifacts/screenshots``. The last test builds a tiny broken site and checks that the checker sees
each kind of fault, so a silent checker cannot pass.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import check_site  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built_site() -> Path:
    jb = Path(sys.executable).parent / "jupyter-book"
    t0 = time.monotonic()
    proc = subprocess.run([str(jb), "build", str(REPO), "-W", "-n", "--keep-going", "--all"],
                          cwd=REPO, capture_output=True, text=True)
    log = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)  # no colour codes
    warnings = list(dict.fromkeys(ln for ln in log.splitlines() if re.search(r"WARNING|ERROR", ln)))
    assert proc.returncode == 0, ("jupyter-book build -W -n failed:\n" + "\n".join(warnings[:40])
                                  + "\n--- last lines ---\n" + "\n".join(log.splitlines()[-8:]))
    print(f"book built in {time.monotonic() - t0:.1f} s")
    return REPO / "_build" / "html"


def test_every_page_in_chromium(built_site):
    for old in (REPO / "artifacts" / "screenshots").glob("*.png"):  # only this run's pictures
        old.unlink()
    problems = check_site.check_site(built_site, REPO, screenshots=REPO / "artifacts" / "screenshots",
                                     search="glossary", search_expect="book/glossary.html")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)
    shots = sorted((REPO / "artifacts" / "screenshots").glob("*.png"))
    assert any(p.name == "book_intro.png" for p in shots), [p.name for p in shots]
    for p in shots:  # a real PNG of the 1280-pixel-wide viewport, not an empty file
        head = p.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(head[16:20], "big") == 1280, p


def test_every_chapter_is_in_the_toc_and_the_site(built_site):
    toc = set(check_site.toc_files(REPO))
    for nb in sorted((REPO / "chapters").glob("[0-9]*.ipynb")):
        doc = f"chapters/{nb.stem}"
        assert doc in toc, f"{nb.name} is not in _toc.yml"
        assert (built_site / f"{doc}.html").is_file()


@pytest.mark.parametrize("chapter", sorted((REPO / "chapters").glob("[0-9]*.ipynb")), ids=lambda p: p.stem)
def test_chapter_links_notation_and_glossary(chapter):
    """Every chapter points its reader at the notation page and the glossary (in the book and in Colab)."""
    nb = json.loads(chapter.read_text())
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert re.search(r"\{doc\}`[^`]*\.\./book/notation`|\]\(\.\./book/notation", text), \
        f"{chapter.name}: no link to the notation page, e.g. {{doc}}`../book/notation`"
    assert re.search(r"\{doc\}`[^`]*\.\./book/glossary`|\]\(\.\./book/glossary|\{term\}`", text), \
        f"{chapter.name}: no link to the glossary, e.g. {{doc}}`../book/glossary` or {{term}}`delta rule`"


def test_colab_url_follows_config():
    url = check_site.colab_url(REPO, "chapters/01_overview.ipynb")
    repo_url = check_site.read_config(REPO)["repository"]["url"].rstrip("/")
    org_repo = repo_url.split("github.com/")[1]
    assert url == f"https://colab.research.google.com/github/{org_repo}/blob/main/chapters/01_overview.ipynb"


# ------------------------------------------------------------------- the checker can fail
BROKEN_PAGE = """<!DOCTYPE html><html><head><title>broken</title>
<script>window.MathJax = {};</script>
<script defer src="https://cdn.example.invalid/mathjax.js"></script></head><body>
<p><span class="math notranslate nohighlight">\\(x^2\\)</span></p>
<img src="_images/missing.png">
<a href="../nowhere.html">a broken link</a>
<a href="../index.html#no-such-anchor">a broken anchor</a>
<a href="00_x.html#top">a good anchor</a>
<a href="https://colab.research.google.com/github/someone/else/blob/main/chapters/00_x.ipynb">Colab</a>
<div class="cell tag_solution"><div class="cell_input"><pre>answer = 42</pre></div></div>
<details open><summary>Solution</summary>because.</details>
<div class="cell_output"><script type="application/vnd.jupyter.widget-view+json">{"model_id": "x"}</script></div>
<script>throw new Error("boom");</script>
<div id="top"></div></body></html>"""


def test_checker_reports_each_kind_of_fault(tmp_path):
    site, repo = tmp_path / "html", tmp_path / "repo"
    (site / "_sources" / "chapters").mkdir(parents=True)
    (site / "chapters").mkdir()
    (repo / "chapters").mkdir(parents=True)
    (site / "index.html").write_text("<html><body><a href='chapters/00_x.html'>x</a></body></html>")
    (site / "chapters" / "00_x.html").write_text(BROKEN_PAGE)
    (site / "_sources" / "chapters" / "00_x.ipynb").write_text("{}")
    (site / "search.html").write_text("<html><body><div id='search-results'><p>Your search did not match "
                                      "any documents.</p></div></body></html>")
    (repo / "chapters" / "00_x.ipynb").write_text(json.dumps({"cells": []}))
    (repo / "_config.yml").write_text("repository:\n  url: https://github.com/org/book\n  branch: main\n")
    (repo / "_toc.yml").write_text("root: index\nchapters:\n  - file: chapters/00_x\n  - file: chapters/01_y\n")
    problems = "\n".join(check_site.check_site(site, repo, screenshots=None, search="delta"))
    expected = [
        "site has no chapters/01_y.html",                       # a toc entry that was not built
        "broken link to nowhere.html",                          # a link to a missing file
        "index.html#no-such-anchor: no element with that id",   # a link to a missing anchor
        "image does not load: _images/missing.png",             # a missing image
        "MathJax comes from https://cdn.example.invalid",       # math not served by the site
        "math not typeset",                                     # math MathJax never rendered
        "from outside the site",                                # a request leaving the machine
        "JavaScript exception: Error: boom",                    # a script error
        "expected ['https://colab.research.google.com/github/org/book/blob/main/chapters/00_x.ipynb']",
        "no download link to _sources/chapters/00_x.ipynb",
        "searching 'delta' found nothing",
        "1 of 1 solution cells are shown without a click",
        "clicking a folded solution does not show it",
        "1 worded solutions are open",
        "shows 0 figures from its cells",
        "1 ipywidgets outputs that draw nothing without a kernel",
    ]
    missing = [e for e in expected if e not in problems]
    assert not missing, f"the checker missed {missing}; it reported:\n{problems}"
    assert "#top" not in problems  # a good anchor is not reported
