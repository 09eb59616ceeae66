"""Open every page of the built book in headless Chromium and check what a reader would see.

Usage::

    python -m tools.check_site [_build/html] [--screenshots artifacts/screenshots] [--table]

The site is served on 127.0.0.1 and Debian's ``chromium`` is driven over the DevTools protocol
(:mod:`tools.browser`), so nothing beyond the standard library and the browser is needed. For every
HTML page it checks that

- the page loads with no failed request, no request leaving the machine and no JavaScript exception;
- every image decodes (no missing or broken ``<img>``);
- every internal link points at a file of the site, and its ``#fragment`` at an element id there;
- every piece of math was typeset by MathJax (served from ``_static``, not a CDN) without a TeX error;
- exercise solutions are folded (a click on the toggle shows them) and worded ones closed;
- a page built from a notebook shows at least two figures from its cells, and has exactly one Colab
  button, pointing at ``https://colab.research.google.com/github/<org>/<repo>/blob/<branch>/<notebook>``
  (from ``_config.yml``), the notebook exists in the repository, and its download link serves the same file;
- a page built from Markdown has no Colab button;
- it reads well (:mod:`tools.layout_checks`): no line of code or output wider than its box and no
  display equation wider than the column at 1280 px, no sideways scroll at 390 px, figures at 2x
  density and shown at their drawn size (9 pt labels stay 9 pt), no harness text; and the code that
  draws the figures sets no font below 9 pt and no figure wider than the column.

It also checks that every document in ``_toc.yml`` became a page and that the search page finds a
term, and saves the screenshots of :data:`SHOTS` (a chapter's top, a diagram, a derivation, an
exercise, a chapter on a phone). It prints one line per problem and exits 1 if there is any;
``--table`` adds each page's counts.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import re
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

from .browser import Browser, SiteServer
from .layout_checks import PHONE_WIDTH, add_dpi, layout_problems, measure_page, measure_phone, static_problems, summary

REPO = Path(__file__).resolve().parents[1]
MIN_FIGURES = 2  # every chapter draws what it built, at least twice
# --------------------------------------------------------------------------------------- checks
PROBE = r"""
(async () => {
  const out = {title: document.title};
  const math = [...document.querySelectorAll('.math')];
  out.math_total = math.length;
  out.mathjax_src = [...document.scripts].map(s => s.getAttribute('src') || '')
                      .filter(s => /mathjax/i.test(s));
  if (math.length) {
    if (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) {
      out.mathjax_loaded = false;
    } else {
      out.mathjax_loaded = true;
      await MathJax.startup.promise;
    }
  }
  out.math_unrendered = math.filter(n => !n.querySelector('mjx-container'))
                            .map(n => n.textContent.trim().slice(0, 60));
  out.math_errors = [...document.querySelectorAll('mjx-merror')]
                       .map(n => n.getAttribute('data-mjx-error') || n.textContent).slice(0, 5);
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = 'eager'; });
  out.images = imgs.length;
  out.output_figures = document.querySelectorAll('.cell_output img').length;
  out.dead_widgets = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length;
  out.broken_images = (await Promise.all(imgs.map(i => i.decode().then(
      () => null, () => (i.complete && i.naturalWidth > 0 ? null : (i.getAttribute('src') || '(no src)'))))))
      .filter(x => x);
  out.links = [...document.querySelectorAll('a[href]')].map(a => a.href);
  // exercise solutions: folded until the reader opens them, and opening works
  // checkVisibility: the content of a closed <details> has a layout box but is not rendered
  const shown = el => !!el && el.checkVisibility({visibilityProperty: true, opacityProperty: true});
  const sols = [...document.querySelectorAll('.cell.tag_solution')];
  out.solutions = sols.length;
  out.solutions_shown = sols.filter(c => shown(c.querySelector('.cell_input pre'))).length;
  out.solution_toggle_works = null;
  if (sols.length) {
    const summary = sols[0].querySelector('summary');
    if (summary) {
      summary.click();
      await new Promise(r => setTimeout(r, 50));
      out.solution_toggle_works = shown(sols[0].querySelector('.cell_input pre'));
      summary.click();
    } else {
      out.solution_toggle_works = false;
    }
  }
  out.open_worded_solutions = [...document.querySelectorAll('details')].filter(
      d => d.open && /Solution/.test((d.querySelector('summary') || {}).textContent || '')).length;
  return out;
})()
"""

SEARCH_PROBE = r"""
(async () => {
  for (let i = 0; i < 120; i++) {
    const items = [...document.querySelectorAll('#search-results ul.search li a')];
    const summary = document.querySelector('#search-results .search-summary, #search-results p');
    if (items.length || (summary && /did not match/i.test(summary.textContent))) {
      return {links: items.map(a => a.href), summary: summary ? summary.textContent.trim() : ''};
    }
    await new Promise(r => setTimeout(r, 250));
  }
  return {links: [], summary: 'timed out waiting for search results'};
})()
"""


def read_config(repo: Path) -> dict:
    import yaml

    return yaml.safe_load((repo / "_config.yml").read_text())


def toc_files(repo: Path) -> list[str]:
    """Every document named in ``_toc.yml`` (root, chapters, sections), in order, without suffix."""
    import yaml

    toc = yaml.safe_load((repo / "_toc.yml").read_text())
    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                found.append(re.sub(r"\.(md|ipynb)$", "", node["file"]))
            if "root" in node:
                found.append(re.sub(r"\.(md|ipynb)$", "", node["root"]))
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []):
                    walk(child)

    walk(toc)
    return found


def colab_url(repo: Path, notebook: str) -> str:
    """The Colab URL for ``notebook`` (a repository path such as chapters/01_overview.ipynb)."""
    cfg = read_config(repo)
    url = cfg["repository"]["url"].rstrip("/")
    parts = urlsplit(url)
    if parts.netloc != "github.com" or len(parts.path.strip("/").split("/")) != 2:
        raise ValueError(f"_config.yml repository.url must be https://github.com/<org>/<repo>, got {url!r}")
    branch = cfg["repository"].get("branch", "main")
    colab = cfg.get("launch_buttons", {}).get("colab_url", "https://colab.research.google.com").rstrip("/")
    path_to_book = cfg["repository"].get("path_to_book", "").strip("/")
    nb_path = f"{path_to_book}/{notebook}" if path_to_book else notebook
    return f"{colab}/github{parts.path.rstrip('/')}/blob/{branch}/{nb_path}"


def _ids_in(html_file: Path, cache: dict) -> set[str]:
    if html_file not in cache:
        text = html_file.read_text(errors="replace")
        cache[html_file] = set(re.findall(r'\bid="([^"]+)"', text)) | set(re.findall(r'\bname="([^"]+)"', text))
    return cache[html_file]


def check_links(page: str, links: list[str], base: str, root: Path, ids_cache: dict) -> list[str]:
    """Problems with the internal links of one page (``links`` are absolute URLs from the browser)."""
    problems = []
    for link in sorted(set(links)):
        if not link.startswith(base):
            continue
        target, fragment = urldefrag(link)
        rel = unquote(urlsplit(target).path)[len(urlsplit(base).path):]
        path = root / rel
        if rel == "" or rel.endswith("/"):
            path = path / "index.html"
        if not path.is_file():
            problems.append(f"{page}: broken link to {rel or '/'} (no such file in the site)")
        elif fragment and path.suffix == ".html" and unquote(fragment) not in _ids_in(path, ids_cache):
            problems.append(f"{page}: link to {rel}#{fragment}: no element with that id")
    return problems


def _request_problems(page: str, events: list[dict], base: str) -> list[str]:
    problems, urls = [], {}
    for ev in events:
        method, params = ev.get("method"), ev.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            urls[params["requestId"]] = url
            if not url.startswith((base, "data:", "blob:", "about:")):
                problems.append(f"{page}: requests {url[:120]} from outside the site (the book must work offline)")
        elif method == "Network.responseReceived":
            status = params["response"].get("status", 0)
            # the browser asks for /favicon.ico by itself; the book declares none
            if status >= 400 and not params["response"]["url"].endswith("/favicon.ico"):
                problems.append(f"{page}: {params['response']['url'][:120]} answered HTTP {status}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            url = urls.get(params["requestId"], "?")
            if url.startswith(base):
                problems.append(f"{page}: failed to load {url[:120]}: {params.get('errorText')}")
        elif method == "Runtime.exceptionThrown":
            det = params["exceptionDetails"]
            text = det.get("exception", {}).get("description") or det.get("text")
            problems.append(f"{page}: JavaScript exception: {str(text)[:200]}")
    return problems


REFRESH = re.compile(r'<meta[^>]+http-equiv="refresh"[^>]+url=([^"\s>]+)', re.I)


def check_page(browser: Browser, page: str, base: str, root: Path, repo: Path, ids_cache: dict,
               measures: dict | None = None) -> list[str]:
    """Every check of one page; ``measures[page]`` gets its reading counts (see layout_checks.summary)."""
    redirect = REFRESH.search((root / page).read_text(errors="replace"))
    if redirect:  # index.html only forwards to the root document: check where it points
        target = base + posixpath.normpath(posixpath.join(posixpath.dirname(page), redirect.group(1)))
        return check_links(page, [target], base, root, ids_cache)
    browser.open(base + page)
    info = browser.evaluate(PROBE, timeout=60)
    problems = _request_problems(page, browser.events, base)
    if info["math_total"]:
        if not info.get("mathjax_loaded"):
            problems.append(f"{page}: has {info['math_total']} math elements but MathJax did not load")
        for src in info["mathjax_src"]:
            if "://" in src or src.startswith("//"):
                problems.append(f"{page}: MathJax comes from {src}, not from the site")
        for tex in info["math_unrendered"][:5]:
            problems.append(f"{page}: math not typeset: {tex!r}")
        for err in info["math_errors"]:
            problems.append(f"{page}: MathJax error: {err}")
    if info["solutions_shown"]:
        problems.append(f"{page}: {info['solutions_shown']} of {info['solutions']} solution cells are shown "
                        "without a click (tag them hide-input)")
    if info["solution_toggle_works"] is False:
        problems.append(f"{page}: clicking a folded solution does not show it")
    if info["open_worded_solutions"]:
        problems.append(f"{page}: {info['open_worded_solutions']} worded solutions are open (<details open>)")
    if info["dead_widgets"]:
        problems.append(f"{page}: {info['dead_widgets']} ipywidgets outputs that draw nothing without a kernel")
    for src in info["broken_images"]:
        problems.append(f"{page}: image does not load: {src}")
    problems += check_links(page, info["links"], base, root, ids_cache)

    # launch and download buttons: notebooks get a Colab button and their own .ipynb to download
    docname = page[: -len(".html")]
    colab = sorted({u for u in info["links"] if u.startswith("https://colab.research.google.com")})
    source = root / "_sources" / f"{docname}.ipynb"
    if source.is_file():
        notebook = f"{docname}.ipynb"
        expected = colab_url(repo, notebook)
        if colab != [expected]:
            problems.append(f"{page}: Colab button(s) {colab}, expected [{expected!r}]")
        if info["output_figures"] < MIN_FIGURES:
            problems.append(f"{page}: shows {info['output_figures']} figures from its cells; a chapter has at "
                            f"least {MIN_FIGURES}")
        if not (repo / notebook).is_file():
            problems.append(f"{page}: the Colab button opens {notebook}, which is not in the repository")
        downloads = [u for u in info["links"] if u.startswith(base) and u.endswith(".ipynb")]
        if f"{base}_sources/{notebook}" not in downloads:
            problems.append(f"{page}: no download link to _sources/{notebook} (found {downloads})")
        elif (repo / notebook).is_file() and source.read_bytes() != (repo / notebook).read_bytes():
            problems.append(f"{page}: the downloadable notebook differs from {notebook} in the repository")
    elif colab:
        problems.append(f"{page}: a page that is not a notebook has Colab button(s) {colab}")

    # what a reader sees: widths at 1280 px (every fold opened), then the page on a phone
    reading = measure_page(browser)
    width = browser.width
    browser.set_viewport(PHONE_WIDTH, 844, mobile=True)
    try:
        browser.open(base + page)
        phone = measure_phone(browser)
    finally:
        browser.set_viewport(width, 900)
    add_dpi(reading["figures"], base, root)
    problems += layout_problems(page, reading, phone)
    if measures is not None:
        measures[page] = summary(reading, phone)
    return problems


def check_search(browser: Browser, base: str, root: Path, term: str, expect_page: str | None) -> list[str]:
    browser.open(f"{base}search.html?q={term}")
    res = browser.evaluate(SEARCH_PROBE, timeout=60)
    problems = _request_problems("search.html", browser.events, base)
    if not res["links"]:
        return problems + [f"search.html: searching {term!r} found nothing ({res['summary']})"]
    problems += check_links("search.html", res["links"], base, root, {})
    pages = {urldefrag(u)[0][len(base):] for u in res["links"]}
    if expect_page and expect_page not in pages:
        problems.append(f"search.html: searching {term!r} did not find {expect_page} (found {sorted(pages)})")
    return problems


def site_pages(root: Path) -> list[str]:
    skip = ("_static/", "_sources/", "_images/")
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.html")
                  if not p.relative_to(root).as_posix().startswith(skip))


# Screenshots the artifacts keep: (file name, page, element shown at the top or None, viewport width).
# The elements are what the names promise; a missing one is a problem, so the pictures cannot go stale.
SHOTS = [
    ("book_intro", "book/intro.html", None, 1280),
    ("chapter_top", "chapters/02_tokenizer.html", None, 1280),
    ("diagram", "chapters/02_tokenizer.html", ".tag_diagram", 1280),
    ("derivation", "chapters/03_norms_and_rope.html", "#deriving-yarn-s-ramp", 1280),
    ("exercise", "chapters/03_norms_and_rope.html", "section[id^='exercise-3-1']", 1280),
    ("phone_chapter_top", "chapters/03_norms_and_rope.html", None, PHONE_WIDTH),
]

SHOW = r"""
((selector) => {
  const el = document.querySelector(selector);
  if (!el) return false;
  el.querySelectorAll('details').forEach(d => { d.open = true; });  // an exercise with its solution
  el.scrollIntoView();
  return true;
})
"""


def take_screenshots(browser: Browser, base: str, root: Path, folder: Path, shots=SHOTS) -> list[str]:
    problems = []
    for name, page, selector, width in shots:
        if not (root / page).is_file():
            problems.append(f"screenshot {name}: the site has no {page}")
            continue
        browser.set_viewport(width, 900, mobile=width < 600)
        browser.open(base + page)
        browser.evaluate("(async () => { if (window.MathJax && MathJax.startup) await MathJax.startup.promise; "
                         "await Promise.all([...document.images].map(i => i.decode().catch(() => 0))); })()")
        if selector and not browser.evaluate(f"({SHOW})({json.dumps(selector)})"):
            problems.append(f"screenshot {name}: {page} has no element {selector!r} to show")
            continue
        time.sleep(0.3)
        browser.screenshot(folder / f"{name}.png")
    browser.set_viewport(1280, 900)
    return problems


def check_site(root: Path, repo: Path = REPO, screenshots: Path | None = None, search: str = "DeltaNet",
               search_expect: str | None = None, shots=SHOTS, measures: dict | None = None,
               log=print) -> list[str]:
    """Check the built site at ``root``; return the list of problems (empty when all is well).

    ``measures``, when given, receives each page's reading counts (lines, clipped lines, equations,
    figures, ...) for a before/after table.
    """
    root = Path(root)
    problems = []
    if not (root / "index.html").is_file():
        return [f"{root}: no index.html: build the book first (make book)"]
    for doc in toc_files(repo):
        if not (root / f"{doc}.html").is_file():
            problems.append(f"_toc.yml names {doc}, but the site has no {doc}.html")
    pages = site_pages(root)
    notebooks = [repo / f"{p[:-5]}.ipynb" for p in pages if (repo / f"{p[:-5]}.ipynb").is_file()]
    problems += static_problems(repo, notebooks)
    ids_cache: dict = {}
    t0 = time.monotonic()
    with SiteServer(root) as server, Browser() as browser:
        for page in pages:
            problems += check_page(browser, page, server.base, root, repo, ids_cache, measures)
        problems += check_search(browser, server.base, root, search, search_expect)
        if screenshots:
            browser.screenshot(screenshots / "search.png")
            problems += take_screenshots(browser, server.base, root, screenshots, shots)
    log(f"checked {len(pages)} pages and the search in {time.monotonic() - t0:.1f} s")
    return problems


def print_table(measures: dict, out=print) -> None:
    """The reading counts of every page as a Markdown table, with a total row."""
    cols = ["lines", "clipped", "equations", "wide_equations", "figures", "below_2x", "below_9pt",
            "phone_overflow_px", "harness"]
    out("| page | " + " | ".join(cols) + " |")
    out("|---" * (len(cols) + 1) + "|")
    for page, m in sorted(measures.items()):
        out(f"| {page} | " + " | ".join(str(m[c]) for c in cols) + " |")
    totals = [sum(m[c] for m in measures.values()) for c in cols]
    totals[cols.index("phone_overflow_px")] = sum(1 for m in measures.values() if m["phone_overflow_px"])
    out("| total (phone: pages) | " + " | ".join(str(t) for t in totals) + " |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("site", nargs="?", default=str(REPO / "_build" / "html"))
    ap.add_argument("--screenshots", default=str(REPO / "artifacts" / "screenshots"))
    ap.add_argument("--no-screenshots", action="store_true")
    ap.add_argument("--search", default="DeltaNet")
    ap.add_argument("--repo", default=str(REPO), help="the book's source (for _config.yml, _toc.yml, notebooks)")
    ap.add_argument("--table", action="store_true", help="print each page's reading counts as a table")
    args = ap.parse_args(argv)
    shots = None if args.no_screenshots else Path(args.screenshots)
    if shots:
        for old in shots.glob("*.png"):  # only this run's pictures
            old.unlink()
    measures: dict = {}
    problems = check_site(Path(args.site), Path(args.repo), shots, args.search, measures=measures)
    for p in problems:
        print("PROBLEM", p)
    if args.table:
        print_table(measures)
    print(f"{len(problems)} problems" + (f"; screenshots in {shots}" if shots else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
