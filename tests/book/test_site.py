"""The published book, as a reader opens it: built with warnings as errors, then every page in Chromium.

The build runs once per session (``jupyter-book build . -W -n --keep-going --all``: ``--all`` so that
warnings of unchanged pages are not hidden by an incremental build, and the static CSS is copied
again). ``tools.check_site`` then opens each page in headless Chromium (Debian's ``chromium``; ``make
test`` installs it) and checks links, images, math, the Colab and download buttons, the search page,
and what a reader sees: lines of code and output that do not fit their box, display equations wider
than the column, sideways scrolling on a 390 px phone, figures below 2x density or shown smaller than
drawn, harness text. Screenshots go to ``artifacts/screenshots``. The last tests build a tiny site
with every kind of fault, and one page with none, and check that the checker reports exactly the
faults, so a silent (or an over-eager) checker cannot pass.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from tools import check_site

REPO = Path(__file__).resolve().parents[2]


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


SHOT_WIDTHS = {name: width for name, _page, _element, width in check_site.SHOTS}


def test_every_page_in_chromium(built_site):
    folder = REPO / "artifacts" / "screenshots"
    for old in folder.glob("*.png"):  # only this run's pictures
        old.unlink()
    measures: dict = {}
    problems = check_site.check_site(built_site, REPO, screenshots=folder, search="glossary",
                                     search_expect="book/glossary.html", measures=measures)
    table: list[str] = []
    check_site.print_table(measures, out=table.append)
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems) + "\n" + "\n".join(table)
    shots = {p.stem: p for p in folder.glob("*.png")}
    # a chapter's top, a diagram, a derivation, an exercise (and the intro, a phone, the search)
    assert set(SHOT_WIDTHS) | {"search"} <= set(shots), sorted(shots)
    for name, p in shots.items():  # a real PNG of the viewport it was taken in, not an empty file
        head = p.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(head[16:20], "big") == SHOT_WIDTHS.get(name, 1280), p


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
def png(width: int, height: int, dpi: float) -> bytes:
    """A grey PNG of ``width`` x ``height`` pixels that says it was drawn at ``dpi`` (like matplotlib)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    ppm = round(dpi / 0.0254)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"pHYs", struct.pack(">IIB", ppm, ppm, 1)) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


LONG = "x = " + "1 + " * 40 + "1"  # 165 characters: wider than any code box
BROKEN_PAGE = f"""<!DOCTYPE html><html><head><title>broken</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<script>window.MathJax = {{}};</script>
<script defer src="https://cdn.example.invalid/mathjax.js"></script></head><body>
<p><span class="math notranslate nohighlight">\\(x^2\\)</span></p>
<img src="_images/missing.png">
<a href="../nowhere.html">a broken link</a>
<a href="../index.html#no-such-anchor">a broken anchor</a>
<a href="00_x.html#top">a good anchor</a>
<a href="https://colab.research.google.com/github/someone/else/blob/main/chapters/00_x.ipynb">Colab</a>
<div class="cell tag_solution"><div class="cell_input"><pre>answer = 42</pre></div></div>
<details open><summary>Solution</summary>because.</details>
<div class="cell_output"><script type="application/vnd.jupyter.widget-view+json">{{"model_id": "x"}}</script></div>
<script>throw new Error("boom");</script>
<div class="cell"><div class="cell_input"><pre style="overflow-x: auto; width: 600px">{LONG}</pre></div></div>
<mjx-container display="true" style="display: block; width: 600px; overflow-x: auto">
  <mjx-math style="display: inline-block; width: 900px">a very wide equation</mjx-math></mjx-container>
<p><span style="white-space: nowrap; display: inline-block; width: 700px">
  qwen3next.exercises.ch99_unbreakable</span></p>
<figure><img src="../_images/blurry.png" alt="blurry">
  <img src="../_images/shrunk.png" style="width: 500px" alt="shrunk"></figure>
<p># NBVAL_IGNORE_OUTPUT, see SPEC section 3, and {{term}}`delta rule` left as text</p>
<div id="top"></div></body></html>"""

# everything the new checks look at, done right: a page that must give no problem at all
GOOD_PAGE = f"""<!DOCTYPE html><html><head><title>good</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head><body>
<div class="cell"><div class="cell_input"><pre style="overflow-x: auto; max-width: 100%">{LONG[:60]}</pre></div></div>
<div class="cell_output"><img src="../_images/sharp.png" style="width: 300px; max-width: 100%" alt="sharp"></div>
<mjx-container display="true" style="display: block; max-width: 100%; overflow-x: auto">
  <mjx-math style="display: inline-block; width: 200px">a short equation</mjx-math></mjx-container>
<p>Nothing of the harness here: nbval compares the outputs, Colab folds the solutions.</p>
</body></html>"""

BAD_FIGURE_CODE = ("import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(11, 3))\n"
                   "ax.text(0, 0, 'x', fontsize=7)\n")


def test_checker_reports_each_kind_of_fault(tmp_path):
    site, repo = tmp_path / "html", tmp_path / "repo"
    for folder in (site / "_sources" / "chapters", site / "chapters", site / "book", site / "_images",
                   repo / "chapters"):
        folder.mkdir(parents=True, exist_ok=True)
    (site / "index.html").write_text("<html><body><a href='chapters/00_x.html'>x</a></body></html>")
    (site / "chapters" / "00_x.html").write_text(BROKEN_PAGE)
    (site / "book" / "good.html").write_text(GOOD_PAGE)
    (site / "_images" / "blurry.png").write_bytes(png(300, 40, dpi=100))  # 1 pixel per pixel shown
    (site / "_images" / "shrunk.png").write_bytes(png(2000, 40, dpi=200))  # 4x, but 10 in shown in 5
    (site / "_images" / "sharp.png").write_bytes(png(600, 40, dpi=200))  # the book style: 2x, own size
    (site / "_sources" / "chapters" / "00_x.ipynb").write_text("{}")
    (site / "search.html").write_text("<html><body><div id='search-results'><p>Your search did not match "
                                      "any documents.</p></div></body></html>")
    cell = {"cell_type": "code", "metadata": {}, "source": BAD_FIGURE_CODE, "outputs": []}
    (repo / "chapters" / "00_x.ipynb").write_text(json.dumps({"cells": [cell]}))
    (repo / "_config.yml").write_text("repository:\n  url: https://github.com/org/book\n  branch: main\n")
    (repo / "_toc.yml").write_text("root: index\nchapters:\n  - file: chapters/00_x\n  - file: chapters/01_y\n")
    measures: dict = {}
    found = check_site.check_site(site, repo, screenshots=None, search="delta", measures=measures)
    problems = "\n".join(found)
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
        # what a reader sees
        "1 of 2 lines of code and output are wider than their box",      # a clipped code line
        "code line of 165 characters",
        "display equation 900 px wide in a 600 px column",                # an equation past the column
        "at 390 px the page scrolls sideways",                            # a phone page too wide
        "qwen3next.exercises.ch99_unbreakable",                           # ... and what makes it so
        "figure blurry.png has 300 pixels for 300 shown (1.00x",          # a figure below 2x
        "figure shrunk.png is shown smaller than drawn: its 9 pt labels show at 4.7 pt",
        "an nbval comment",                                               # harness text
        "a reference to a document readers do not have",
        "MyST syntax shown as text",
        "chapters/00_x.ipynb: a font size below 9 pt ('fontsize=7', line 3)",   # the figure code
        "chapters/00_x.ipynb: a figure 11 inches wide",
        "chapters/00_x.ipynb: draws figures without qwen3next.viz.use_book_style()",
    ]
    missing = [e for e in expected if e not in problems]
    assert not missing, f"the checker missed {missing}; it reported:\n{problems}"
    assert "#top" not in problems  # a good anchor is not reported
    assert not [p for p in found if p.startswith("book/good.html")], problems  # nothing on the good page
    bad, good = measures["chapters/00_x.html"], measures["book/good.html"]
    assert (bad["clipped"], bad["wide_equations"], bad["below_2x"], bad["below_9pt"]) == (1, 1, 1, 1), bad
    assert bad["phone_overflow_px"] > 0 and bad["harness"] == 3, bad
    assert (good["clipped"], good["wide_equations"], good["below_2x"], good["below_9pt"], good["harness"],
            good["phone_overflow_px"]) == (0, 0, 0, 0, 0, 0), good


def test_book_page_figures_are_shown_at_their_drawn_size():
    """The Markdown pages' figures (tools/book_figures.py) exist and each page gives the width they
    were drawn at, so their 9 pt labels stay 9 pt (the browser check measures the same on the page)."""
    from tools import book_figures

    assert book_figures.main(["--check"]) == 0
    for name in book_figures.PAGES:
        png = book_figures.FIGURES / name
        assert book_figures.png_width(png) == 2 * book_figures.shown_width(REPO / book_figures.PAGES[name], name)
