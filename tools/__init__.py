"""The book's own tools: the browser check of the built site, the Sphinx fixes, the student notebooks,
the simulated Colab, the BPE corpus and the figures of the Markdown pages.

Run them as modules from the repository root (``python -m tools.check_site``); the tests import them
as a package (``from tools import check_site``), with the root on pytest's ``pythonpath``.
"""
