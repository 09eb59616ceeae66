"""Sphinx fixes for the book: MathJax served from the site itself, and no doubled inline scripts.

**Local MathJax.** Sphinx's ``sphinx.ext.mathjax`` loads MathJax 3 from a CDN by default. This extension copies the
MathJax 3 ``es5`` bundle vendored by the PyPI package ``django-static-mathjax`` (MathJax 3.2.2,
Apache-2.0; its only Python content is an empty ``mathjax`` module) into ``_build/html/_static/mathjax``.
``_config.yml`` points ``mathjax_path`` at ``mathjax/tex-mml-chtml.js``, which Sphinx resolves
relative to ``_static``.

**Doubled inline scripts.** Sphinx 7.4 keeps file scripts unique but not inline ones, and
sphinx-thebe and sphinx-togglebutton register theirs after the builder is initialised, so every page
got ``const THEBE_JS_URL = ...`` twice and the second copy threw a SyntaxError in the browser.
``_dedupe_scripts`` drops exact repeats from each page's script list.

**Widgets.** The HTML book has no kernel, so an ipywidgets control cannot do anything there, and
myst-nb would fetch require.js and the widget manager from CDNs to draw it. ``_config.yml`` sets
``nb_ipywidgets_js: {}`` (nothing is fetched); ``_widget_notes`` drops the saved widget state from the
page and puts, where each widget would be, a note that the widget is live in Colab or Jupyter. Each
chapter shows a static figure beside its widgets.

**Colab form titles.** A solution cell starts with ``# @title Solution`` so that Colab folds it into a
form; in the HTML book the cell is folded by its ``hide-input`` tag and the title line would only be
noise, so ``_drop_form_titles`` takes it out of the rendered code (the notebook keeps it).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from docutils import nodes
from sphinx.errors import ExtensionError

PACKAGE = "django-static-mathjax==3.2.2.1"
TARGET = "mathjax"  # under _static


def mathjax_source() -> Path:
    """The vendored MathJax 3 ``es5`` folder, or a clear error naming the package to install."""
    try:
        import mathjax  # the module installed by django-static-mathjax
    except ImportError as err:
        raise ExtensionError(
            f"local MathJax: the Python module 'mathjax' is missing; install it with "
            f"`pip install {PACKAGE}` (make venv does)"
        ) from err
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (es5 / "tex-mml-chtml.js").is_file():
        raise ExtensionError(f"local MathJax: expected {es5 / 'tex-mml-chtml.js'}, not found")
    return es5


def _check(app) -> None:
    if app.builder.format == "html":
        path = app.config.mathjax_path
        if "://" in path or path.startswith("//"):
            raise ExtensionError(f"local MathJax: mathjax_path must be local (relative to _static), got {path!r}")
        mathjax_source()


def _copy(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    shutil.copytree(mathjax_source(), Path(app.outdir) / "_static" / TARGET, dirs_exist_ok=True)


def _dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        attrs = getattr(js, "attributes", {}) or {}
        # an inline script is registered once with filename None and once with "": same script
        key = (str(getattr(js, "filename", js) or ""), tuple(sorted((k, str(v)) for k, v in attrs.items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    context["script_files"] = unique


WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = re.compile(r'<script type="application/vnd\.jupyter\.widget-view\+json">.*?</script>', re.S)
WIDGET_NOTE = ('<p class="widget-note"><em>An interactive widget is here when this chapter runs in Colab '
               'or Jupyter (the rocket button at the top opens it in Colab).</em></p>')


def _widget_notes(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files") or []
    context["script_files"] = [js for js in scripts
                               if (getattr(js, "attributes", {}) or {}).get("type") != WIDGET_STATE]
    if "body" in context and "widget-view+json" in context["body"]:
        context["body"] = WIDGET_VIEW.sub(WIDGET_NOTE, context["body"])


FORM_TITLE = re.compile(r"\A\s*# ?@title[^\n]*\n?")


def _drop_form_titles(app, doctree) -> None:
    for block in list(doctree.findall(nodes.literal_block)):
        parent = block.parent
        if parent is None or "cell_input" not in parent.get("classes", []):
            continue
        text = block.astext()
        if FORM_TITLE.match(text):
            new = FORM_TITLE.sub("", text, count=1)
            block.children = [nodes.Text(new)]
            block.rawsource = new


def setup(app):
    app.connect("doctree-read", _drop_form_titles)
    app.connect("builder-inited", _check)
    app.connect("build-finished", _copy)
    app.connect("html-page-context", _dedupe_scripts)
    app.connect("html-page-context", _widget_notes)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
