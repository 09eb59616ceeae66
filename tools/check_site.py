"""Open every page of the built book in headless Chromium and check what a reader would see.

Usage::

    python tools/check_site.py [_build/html] [--screenshots artifacts/screenshots] [--search DeltaNet]

The site is served on 127.0.0.1 (a thread running ``http.server``) and Debian's ``chromium`` is driven
over the DevTools protocol on a pipe (``--remote-debugging-pipe``), so nothing beyond the standard
library and the browser is needed. For every HTML page it checks that

- the page loads with no failed request, no request leaving the machine and no JavaScript exception;
- every image decodes (no missing or broken ``<img>``);
- every internal link points at a file of the site, and its ``#fragment`` at an element id there;
- every piece of math was typeset by MathJax (served from ``_static``, not a CDN) without a TeX error;
- exercise solutions are folded (a click on the toggle shows them) and worded ones closed;
- a page built from a notebook shows at least two figures from its cells, and has exactly one Colab button, pointing at
  ``https://colab.research.google.com/github/<org>/<repo>/blob/<branch>/<notebook>`` (from
  ``_config.yml``), the notebook exists in the repository, and its download link serves the same file;
- a page built from Markdown has no Colab button.

It also checks that every document in ``_toc.yml`` became a page, that the search page finds a term,
and saves screenshots of a few pages. It prints one line per problem and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import functools
import http.server
import json
import os
import posixpath
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

REPO = Path(__file__).resolve().parents[1]
MIN_FIGURES = 2  # DESIGN.md: every chapter draws what it built, at least twice
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",  # the machine has no network: no update or sync calls
    "--disable-component-update",
    "--disable-sync",
    "--mute-audio",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--remote-debugging-pipe",
]


# --------------------------------------------------------------------------------------- browser
class BrowserError(RuntimeError):
    pass


def find_chromium() -> str:
    for name in (os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise BrowserError("no Chromium found: install Debian's `chromium` (make chromium) or set $CHROMIUM")


def _high_fd(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class Browser:
    """A headless Chromium spoken to over the DevTools protocol on fds 3 (in) and 4 (out)."""

    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 30.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # move the child's ends above 9 so that 3<&N and 4>&M cannot overwrite one another (dash takes
        # only one-digit fds in redirections, hence bash)
        to_chrome_r, from_chrome_w = _high_fd(to_chrome_r), _high_fd(from_chrome_w)
        exe = find_chromium()
        # a shell moves the two pipe ends onto fds 3 and 4, where Chromium expects them
        cmd = ["/bin/bash", "-c", f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}', exe,
               *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"]
        self.log = Path(self.profile) / "chromium-stderr.log"
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(cmd, pass_fds=(to_chrome_r, from_chrome_w),
                                         stdout=subprocess.DEVNULL, stderr=err)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict] = []
        try:
            self._attach(width, height, timeout)
        except BaseException:
            self.close()
            raise

    def _attach(self, width: int, height: int, timeout: float) -> None:
        # drive the tab Chromium opened (a tab created in the background never paints: no screenshots)
        deadline = time.monotonic() + timeout
        while True:
            tabs = [t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page"]
            if tabs or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        target = tabs[0]["targetId"] if tabs else self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            self.call(f"{domain}.enable")
        self.call("Page.bringToFront")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    # -- protocol
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                    raise BrowserError(f"Chromium closed the DevTools pipe (exit code {self.proc.poll()}):\n{tail}")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float | None = None) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def call(self, method: str, params: dict | None = None, timeout: float | None = None) -> dict:
        return self.send(method, params, self.session, timeout)

    def wait_event(self, method: str, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if ev.get("method") == method:
                    return ev
            seen = len(self.events)
            self.events.append(self._read_message(deadline))

    def evaluate(self, expression: str, timeout: float | None = None):
        result = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, timeout)
        if "exceptionDetails" in result:
            raise BrowserError(f"evaluating page script: {result['exceptionDetails'].get('text')} "
                               f"{result['exceptionDetails'].get('exception', {}).get('description', '')}")
        return result["result"].get("value")

    # -- pages
    def open(self, url: str) -> None:
        self.events.clear()
        reply = self.call("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise BrowserError(f"{url}: {reply['errorText']}")
        self.wait_event("Page.loadEventFired")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (BrowserError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------- server
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class SiteServer:
    """Serve ``root`` on 127.0.0.1 at a free port, in a background thread."""

    def __init__(self, root: Path):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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


def check_page(browser: Browser, page: str, base: str, root: Path, repo: Path, ids_cache: dict) -> list[str]:
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


def check_site(root: Path, repo: Path = REPO, screenshots: Path | None = None, search: str = "DeltaNet",
               search_expect: str | None = None, screenshot_pages: list[str] | None = None,
               log=print) -> list[str]:
    """Check the built site at ``root``; return the list of problems (empty when all is well)."""
    root = Path(root)
    problems = []
    if not (root / "index.html").is_file():
        return [f"{root}: no index.html: build the book first (make book)"]
    for doc in toc_files(repo):
        if not (root / f"{doc}.html").is_file():
            problems.append(f"_toc.yml names {doc}, but the site has no {doc}.html")
    pages = site_pages(root)
    if screenshot_pages is None:
        chapters = [p for p in pages if (root / "_sources" / (p[:-5] + ".ipynb")).is_file()]
        screenshot_pages = [f"{toc_files(repo)[0]}.html", "book/notation.html", *chapters[:1], *chapters[-1:]]
    ids_cache: dict = {}
    t0 = time.monotonic()
    with SiteServer(root) as server, Browser() as browser:
        for page in pages:
            problems += check_page(browser, page, server.base, root, repo, ids_cache)
            if screenshots and page in screenshot_pages:
                name = page.replace("/", "_").replace(".html", "")
                browser.screenshot(screenshots / f"{name}.png")
                # and further down: at the first figure and the first displayed equation, where there are
                for suffix, selector in (("figure", ".cell_output img, figure img"), ("math", "div.math")):
                    if browser.evaluate(f"(() => {{ const e = document.querySelector('{selector}'); "
                                        "if (!e) return false; e.scrollIntoView(); return true; })()"):
                        time.sleep(0.2)
                        browser.screenshot(screenshots / f"{name}_{suffix}.png")
        problems += check_search(browser, server.base, root, search, search_expect)
        if screenshots:
            browser.screenshot(screenshots / "search.png")
    log(f"checked {len(pages)} pages and the search in {time.monotonic() - t0:.1f} s")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("site", nargs="?", default=str(REPO / "_build" / "html"))
    ap.add_argument("--screenshots", default=str(REPO / "artifacts" / "screenshots"))
    ap.add_argument("--search", default="DeltaNet")
    ap.add_argument("--repo", default=str(REPO), help="the book's source (for _config.yml, _toc.yml, notebooks)")
    args = ap.parse_args(argv)
    for old in Path(args.screenshots).glob("*.png"):  # only this run's pictures
        old.unlink()
    problems = check_site(Path(args.site), Path(args.repo), Path(args.screenshots), args.search)
    for p in problems:
        print("PROBLEM", p)
    print(f"{len(problems)} problems; screenshots in {args.screenshots}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
