"""What a reader sees on a page: widths, figures, the phone layout and harness text.

The browser half (:func:`measure_page`, :func:`measure_phone`) runs in a page that
:mod:`tools.check_site` has opened; :func:`layout_problems` turns the measurements into problems. The
static half (:func:`figure_code_problems`) reads the code that draws the figures (the chapters and
``src/qwen3next/viz``) for font sizes and figure widths the page cannot measure.

What counts as a problem:

- a line of code or output wider than its box (the box scrolls sideways; the end of the line, often
  the result, is out of view). Boxes that wrap their lines (``white-space: pre-wrap``) clip only an
  unbreakable run wider than the box, and that is what is counted there;
- a display equation wider than the column;
- at 390 CSS pixels (a phone) the page itself scrolls sideways;
- a figure with fewer than 2 image pixels per displayed pixel (blurry on high-density screens), or
  shown smaller than it was drawn, so that 9 pt labels show below 9 pt;
- harness words a reader should never see (nbval comments and tags, Colab form titles,
  ``inspect.getsource`` dumps, references to documents outside the book, MyST roles left as text).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from urllib.parse import unquote, urlsplit

MIN_DENSITY = 2.0  # image pixels per CSS pixel: what "retina" rendering gives
MIN_LABEL_PT = 9.0  # the smallest label the book style draws, and the smallest a reader may see
COLUMN_INCHES = 6.8  # qwen3next.viz.COLUMN_INCHES (tools do not import the package)
PHONE_WIDTH = 390

# Text of the test harness, never to be shown on a page: (pattern, JavaScript regex flags, what it is).
HARNESS = [
    (r"NBVAL", "g", "an nbval comment (use the cell tag nbval-ignore-output)"),
    (r"nbval-", "gi", "an nbval tag name"),
    (r"# ?@title", "gi", "a Colab form title (the book strips it from solutions)"),
    (r"inspect\.getsource", "g", "a source dump (use qwen3next.viz.show_source)"),
    (r"\bSPEC\b", "g", "a reference to a document readers do not have (cite the reference page)"),
    (r"\.\./shared", "g", "a path outside the repository"),
    (r"\bissue #?\d+\b", "gi", "an issue number"),
    (r"\{(?:term|doc|ref|cite|numref|eq|math|glossary|bibliography)\}", "g", "MyST syntax shown as text"),
]

READING_PROBE = r"""
(async (harness) => {
  // a reader may open every fold: measure the folded cells too
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  await new Promise(r => requestAnimationFrame(() => setTimeout(r, 50)));
  const art = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const ctx = document.createElement('canvas').getContext('2d');
  const expand = (s, tab) => s.replace(/[^\t]*\t/g, m => m.slice(0, -1) + ' '.repeat(tab - (m.length - 1) % tab));
  const out = {lines: 0, clipped: 0, examples: [], equations: 0, wide_equations: [], figures: [], harness: []};
  for (const pre of art.querySelectorAll('pre')) {
    const st = getComputedStyle(pre);
    const lines = pre.textContent.replace(/\n$/, '').split('\n');
    out.lines += lines.length;
    if (pre.scrollWidth <= pre.clientWidth + 1 || !pre.clientWidth) continue;
    const avail = pre.clientWidth - parseFloat(st.paddingLeft) - parseFloat(st.paddingRight);
    ctx.font = `${st.fontStyle} ${st.fontWeight} ${st.fontSize} ${st.fontFamily}`;
    const fits = Math.floor(avail / ctx.measureText('0').width);
    const wraps = !['pre', 'nowrap'].includes(st.whiteSpace);
    const kind = pre.closest('.cell_input') ? 'code' : pre.closest('.cell_output') ? 'output' : 'code block';
    let found = 0;
    for (const raw of lines) {
      const line = expand(raw, parseInt(st.tabSize) || 8);
      const pieces = wraps ? line.split(/\s+/) : [line];
      if (Math.max(...pieces.map(p => ctx.measureText(p).width)) > avail + 1) {
        found++;
        if (out.examples.length < 3) out.examples.push({kind, chars: [...line].length, fits, line: line.slice(0, 100)});
      }
    }
    if (!found && out.examples.length < 3)  // the box scrolls although no line is too long: say so
      out.examples.push({kind, chars: 0, fits, line: `(box scrolls by ${pre.scrollWidth - pre.clientWidth} px)`});
    out.clipped += Math.max(found, 1);
  }
  for (const c of art.querySelectorAll('mjx-container[display="true"]')) {
    out.equations++;
    const m = c.querySelector('mjx-math');
    const w = m ? m.getBoundingClientRect().width : 0;
    if (w > c.clientWidth + 1) {
      let tex = '';
      try { tex = MathJax.startup.document.getMathItemsWithin(c)[0].math; } catch (e) { tex = c.textContent; }
      tex = tex.trim().replace(/\s+/g, ' ').slice(0, 70);
      out.wide_equations.push({width: Math.round(w), column: c.clientWidth, tex});
    }
  }
  for (const img of art.querySelectorAll('img')) {
    const r = img.getBoundingClientRect();
    if (!r.width || !img.naturalWidth) continue;
    const attr = parseFloat(img.getAttribute('width')) || parseFloat(img.style.width) || null;
    out.figures.push({src: (img.getAttribute('src') || '').split('/').pop().slice(0, 24), url: img.src,
                      natural: img.naturalWidth, shown: r.width, drawn: attr});
  }
  const clone = art.cloneNode(true);
  clone.querySelectorAll('script, style, mjx-assistive-mml').forEach(n => n.remove());
  const text = clone.textContent;
  for (const [pattern, flags, what] of harness) {
    const re = new RegExp(pattern, flags);
    let m, n = 0, first = null;
    while ((m = re.exec(text))) { n++; if (!first) first = text.slice(Math.max(0, m.index - 30), m.index + 40); }
    if (n) out.harness.push({what, n, context: first.replace(/\s+/g, ' ').trim()});
  }
  return out;
})
"""

PHONE_PROBE = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  await Promise.all([...document.images].map(i => i.decode().catch(() => null)));
  await new Promise(r => requestAnimationFrame(() => setTimeout(r, 50)));
  const root = document.documentElement, vw = root.clientWidth;
  const out = {viewport: vw, width: Math.max(root.scrollWidth, document.body.scrollWidth), culprits: []};
  if (out.width <= vw + 1) return out;
  const scrollsOnItsOwn = el => !['visible', 'clip'].includes(getComputedStyle(el).overflowX)
                                && el.getBoundingClientRect().right <= vw + 1;
  const over = el => el.getBoundingClientRect().right > vw + 1 && el.getBoundingClientRect().width > 0;
  const fixed = el => {
    for (; el; el = el.parentElement) if (['fixed', 'sticky'].includes(getComputedStyle(el).position)) return true;
    return false;
  };
  for (const el of document.body.querySelectorAll('*')) {
    if (!over(el) || [...el.children].some(over)) continue;  // the innermost elements past the edge
    if (el.closest('svg') || fixed(el)) continue;  // icons; bars and drawers that move with the window
    let a = el.parentElement, inside = false;
    for (; a && a !== document.body; a = a.parentElement) if (scrollsOnItsOwn(a)) { inside = true; break; }
    if (inside) continue;
    const cls = (el.className && el.className.baseVal === undefined ? el.className : '').split(' ')[0];
    const text = (el.textContent || '').trim().slice(0, 50);
    const right = Math.round(el.getBoundingClientRect().right);
    out.culprits.push(`<${el.tagName.toLowerCase()}${cls ? '.' + cls : ''}> ${text} (right edge at ${right} px)`);
    if (out.culprits.length >= 3) break;
  }
  return out;
})()
"""


def measure_page(browser) -> dict:
    """Measure the open page (opens every ``<details>`` on it: run after the checks of folding)."""
    return browser.evaluate(f"({READING_PROBE})({json.dumps(HARNESS)})", timeout=60)


def measure_phone(browser) -> dict:
    """Measure the open page's sideways overflow (open it with a phone-wide viewport first)."""
    return browser.evaluate(PHONE_PROBE, timeout=60)


def png_dpi(path: Path) -> float | None:
    """The resolution a PNG says it was drawn at (its ``pHYs`` chunk; matplotlib writes the dpi there)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    i = 8
    while i + 8 <= len(data):
        (n,), kind = struct.unpack(">I", data[i:i + 4]), data[i + 4:i + 8]
        if kind == b"pHYs":
            x, _, unit = struct.unpack(">IIB", data[i + 8:i + 17])
            return x * 0.0254 if unit == 1 else None
        if kind == b"IDAT":  # pHYs comes before the image data
            return None
        i += 12 + n
    return None


def add_dpi(figures: list[dict], base: str, root: Path) -> None:
    """Give each measured figure the dpi its file was drawn at (None when the file does not say)."""
    for f in figures:
        url = f.get("url", "")
        f["dpi"] = png_dpi(root / unquote(urlsplit(url).path)[len(urlsplit(base).path):]) \
            if url.startswith(base) else None


def label_scale(fig: dict) -> float:
    """How large a label drawn at 1 pt shows, in CSS pt, relative to the book style shown at its size.

    A PNG drawn at ``dpi`` makes a point ``dpi/72`` image pixels; shown at ``shown/natural`` of its pixel
    size, a point is ``dpi * shown / natural / 72`` CSS pixels, against 96/72 for a CSS point. The
    book style (100 dpi, 2x: 200 dpi shown at half its pixels) gives 100/96. Without a dpi in the
    file, the image is taken as drawn at 100 dpi for its ``width`` attribute (or for half its pixels).
    """
    if fig.get("dpi"):
        return fig["dpi"] * fig["shown"] / fig["natural"] / 96
    drawn = fig["drawn"] or fig["natural"] / MIN_DENSITY
    return 100 * fig["shown"] / drawn / 96


def figure_counts(figures: list[dict]) -> tuple[int, int]:
    """(figures below 2x density, figures whose 9 pt labels show below 9 pt) among ``figures``."""
    blurry = sum(1 for f in figures if f["natural"] / f["shown"] < MIN_DENSITY - 0.02)
    small = sum(1 for f in figures if label_scale(f) < 1 - 0.005)
    return blurry, small


def layout_problems(page: str, m: dict, phone: dict | None) -> list[str]:
    """Problems from the measurements of one page at 1280 px (``m``) and at 390 px (``phone``)."""
    problems = []
    if m["clipped"]:
        ex = "; ".join(f"{e['kind']} line of {e['chars']} characters: {e['line'][:60]!r}" if e["chars"]
                       else f"{e['kind']} {e['line']}" for e in m["examples"][:2])
        fits = m["examples"][0]["fits"] if m["examples"] else "?"
        problems.append(f"{page}: {m['clipped']} of {m['lines']} lines of code and output are wider than their "
                        f"box ({fits} characters fit; wrap them in the code that prints them), e.g. {ex}")
    for eq in m["wide_equations"]:
        problems.append(f"{page}: display equation {eq['width']} px wide in a {eq['column']} px column (split it "
                        f"with aligned): {eq['tex']!r}")
    for f in m["figures"]:
        density, scale = f["natural"] / f["shown"], label_scale(f)
        if density < MIN_DENSITY - 0.02:
            problems.append(f"{page}: figure {f['src']} has {f['natural']} pixels for {f['shown']:.0f} shown "
                            f"({density:.2f}x, needs {MIN_DENSITY:.0f}x: call qwen3next.viz.use_book_style())")
        if scale < 1 - 0.005:
            problems.append(f"{page}: figure {f['src']} is shown smaller than drawn: its 9 pt labels show at "
                            f"{MIN_LABEL_PT * scale:.1f} pt (draw it at most {COLUMN_INCHES} inches wide)")
    for h in m["harness"]:
        problems.append(f"{page}: harness text visible to a reader, {h['what']} ({h['n']}x): ...{h['context']}...")
    if phone and phone["width"] > phone["viewport"] + 1:
        problems.append(f"{page}: at {phone['viewport']} px the page scrolls sideways to {phone['width']} px: "
                        + ("; ".join(phone["culprits"]) or "(no single element found)"))
    return problems


def summary(m: dict, phone: dict | None) -> dict:
    """The counts of one page, for a before/after table."""
    blurry, small = figure_counts(m["figures"])
    return {"lines": m["lines"], "clipped": m["clipped"], "equations": m["equations"],
            "wide_equations": len(m["wide_equations"]), "figures": len(m["figures"]), "below_2x": blurry,
            "below_9pt": small, "phone_overflow_px": max(0, phone["width"] - phone["viewport"]) if phone else 0,
            "harness": sum(h["n"] for h in m["harness"])}


# ------------------------------------------------------------------ the code that draws the figures
SMALL_FONT = re.compile(r"(?<![\w.])(?:fontsize|size|labelsize|titlesize)\s*=\s*(?:(\d+(?:\.\d+)?)\b|"
                        r"[\"'](xx-small|x-small|small|smaller)[\"'])")
FIGSIZE = re.compile(r"figsize\s*=\s*[(\[]\s*(\d+(?:\.\d+)?)\s*,")


def figure_code_problems(name: str, code: str, notebook: bool) -> list[str]:
    """Font sizes below 9 pt and figures wider than the column in ``code`` (a chapter's cells joined,
    or a module of ``qwen3next.viz``); a chapter that draws must call ``use_book_style()``."""
    problems = []
    for m in SMALL_FONT.finditer(code):
        if (m.group(1) and float(m.group(1)) < MIN_LABEL_PT) or m.group(2):
            line = code[:m.start()].count("\n") + 1
            problems.append(f"{name}: a font size below {MIN_LABEL_PT:.0f} pt ({m.group(0)!r}, line {line})")
    for m in FIGSIZE.finditer(code):
        if float(m.group(1)) > COLUMN_INCHES + 1e-9:
            line = code[:m.start()].count("\n") + 1
            problems.append(f"{name}: a figure {m.group(1)} inches wide (at most {COLUMN_INCHES}: it would be "
                            f"shrunk, and its labels with it; line {line})")
    draws = re.search(r"\bplt\.(?:subplots|figure|show)\b|\bdraw_\w+\(", code)
    if notebook and draws and "use_book_style()" not in code:
        problems.append(f"{name}: draws figures without qwen3next.viz.use_book_style() (2x density, 9 pt labels)")
    return problems


def notebook_code(path: Path) -> str:
    """All code cells of a notebook, joined (line numbers count from the first code cell)."""
    nb = json.loads(path.read_text())
    return "\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                     for c in nb.get("cells", []) if c.get("cell_type") == "code")


def static_problems(repo: Path, notebooks: list[Path]) -> list[str]:
    """:func:`figure_code_problems` for ``notebooks`` and every module of ``src/qwen3next/viz``."""
    problems = []
    for nb in notebooks:
        problems += figure_code_problems(nb.relative_to(repo).as_posix(), notebook_code(nb), notebook=True)
    for mod in sorted((repo / "src" / "qwen3next" / "viz").glob("*.py")):
        problems += figure_code_problems(mod.relative_to(repo).as_posix(), mod.read_text(), notebook=False)
    return problems
