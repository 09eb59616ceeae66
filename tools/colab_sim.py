"""Run a chapter the way Google Colab does: a fresh Python with torch and nothing of ours.

Usage::

    python tools/colab_sim.py [chapters/01_overview.ipynb ...] [--all] [--keep DIR]

What it does, in a temporary folder:

1. copies the repository's files (what ``git ls-files`` lists: a clone of this working tree);
2. makes a fresh virtual environment holding only what Colab has preinstalled that matters here:
   ``torch`` (``pip install torch==2.13.0``), ``ipykernel`` and ``nbclient``;
3. runs the chapter top to bottom with nbclient, from an empty working folder (like ``/content``),
   with ``QWEN3NEXT_INSTALL=file://<copy>``, so the chapter's first cell installs
   ``qwen3next[book]`` from the copy exactly as it installs it from GitHub in Colab;
4. appends one cell that reports where ``qwen3next`` and ``transformers`` were imported from, and
   checks that they came from the fresh environment (not from this checkout), that the set-up cell
   printed the versions line and that the chapter drew its figures (Colab's inline backend).

It prints the time of each step and exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # what this machine's pip takes from local disk (a CPU build)
COLAB_PREINSTALLED = [TORCH, "ipykernel", "nbclient", "nbformat"]
VERSIONS_LINE = re.compile(r"python \d+\.\d+\S* \| torch \S+ \| transformers \S+ \| qwen3next \S+")

# Runs inside the fresh environment: executes the notebook, then one probe cell, and prints JSON.
DRIVER = r'''
import json, sys, time
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

src, out = sys.argv[1], sys.argv[2]
nb = nbformat.read(src, as_version=4)
probe = nbformat.v4.new_code_cell(
    "import json as _j, sys as _s, qwen3next as _q, transformers as _t\n"
    "print('COLAB-SIM ' + _j.dumps({'python': _s.executable, 'qwen3next': _q.__file__,"
    " 'transformers': _t.__file__, 'transformers_version': _t.__version__}))")
nb.cells.append(probe)
client = NotebookClient(nb, timeout=900, kernel_name="python3", allow_errors=False)
t0 = time.time()
error = None
try:
    client.execute()
except CellExecutionError as err:
    error = str(err)[-3000:]
nbformat.write(nb, out)
print(json.dumps({"seconds": time.time() - t0, "error": error}))
'''


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def repo_files(repo: Path) -> list[str]:
    """The files a clone would have: tracked plus untracked-but-not-ignored (work in progress)."""
    out = run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"]).stdout
    return [f for f in out.split("\0") if f and (repo / f).is_file()]


def copy_repo(repo: Path, dest: Path) -> None:
    if not (repo / ".git").exists():  # not a clone (an unpacked archive): copy all but build outputs
        skip = shutil.ignore_patterns(".git", ".venv", "_build", "build", "student", "artifacts", "*.egg-info",
                                      "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache")
        shutil.copytree(repo, dest, ignore=skip, dirs_exist_ok=True)
        return
    for rel in repo_files(repo):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, target)


def clean_env(**extra) -> dict:
    """This process's environment without anything that points Python at this checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP", "MPLBACKEND")
           and not k.startswith("JUPYTER")}  # Colab's kernel draws with the inline backend
    # PIP_NO_COMPILE: no byte-compiling of every installed file (torch, transformers), which would be
    # most of the install time; Python compiles what it imports anyway
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONHASHSEED="0",
               PIP_NO_COMPILE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def first_cell_output(nb: dict) -> str:
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    return "".join("".join(o.get("text", "")) for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def simulate(notebook: Path, workdir: Path, log=print) -> dict:
    """Run ``notebook`` in a fresh Colab-like environment under ``workdir``; return what was seen.

    Raises ``RuntimeError`` naming the step and what went wrong.
    """
    notebook = Path(notebook).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    times = {}
    src = workdir / "repo"
    venv = workdir / "colab-venv"
    py = venv / "bin" / "python"
    if not (workdir / ".prepared").exists():  # a second chapter in the same workdir reuses the "machine"
        t = time.monotonic()
        copy_repo(REPO, src)
        times["copy repository"] = time.monotonic() - t

        t = time.monotonic()
        base_python = getattr(sys, "_base_executable", sys.executable)
        run([base_python, "-m", "venv", str(venv)])
        try:
            run([str(py), "-m", "pip", "install", "-q", *COLAB_PREINSTALLED], env=clean_env())
        except subprocess.CalledProcessError as err:
            raise RuntimeError(f"installing Colab's preinstalled packages failed:\n{err.stderr[-2000:]}") from err
        times["fresh venv with torch"] = time.monotonic() - t
        (workdir / ".prepared").touch()

    t = time.monotonic()
    content = workdir / "content"  # Colab's working folder: nothing of ours in it
    content.mkdir(exist_ok=True)
    driver = workdir / "driver.py"
    driver.write_text(DRIVER)
    executed = workdir / f"executed_{notebook.name}"
    env = clean_env(QWEN3NEXT_INSTALL=src.resolve().as_uri(), JUPYTER_PLATFORM_DIRS="1",
                    JUPYTER_DATA_DIR=str(workdir / "jupyter-data"), JUPYTER_CONFIG_DIR=str(workdir / "jupyter-config"))
    proc = subprocess.run([str(py), str(driver), str(notebook), str(executed)], cwd=content, env=env,
                          text=True, capture_output=True)
    times["run the chapter"] = time.monotonic() - t
    if proc.returncode != 0:
        raise RuntimeError(f"the nbclient driver failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["error"]:
        raise RuntimeError(f"{notebook.name} failed in the simulated Colab:\n{result['error']}")

    nb = json.loads(executed.read_text())
    probe_text = "".join("".join(o.get("text", "")) for o in nb["cells"][-1]["outputs"])
    match = re.search(r"COLAB-SIM (\{.*\})", probe_text)
    if not match:
        raise RuntimeError(f"the probe cell printed nothing usable: {probe_text!r}")
    seen = json.loads(match.group(1))
    for name in ("qwen3next", "transformers"):
        if not Path(seen[name]).resolve().is_relative_to(venv.resolve()):
            raise RuntimeError(f"{name} was imported from {seen[name]}, not from the fresh environment {venv}: "
                               "the set-up cell did not install it")
    figures = sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
    if figures < 2:
        raise RuntimeError(f"{notebook.name} drew {figures} figures in the simulated Colab (inline backend); "
                           "a chapter draws at least 2")
    versions = first_cell_output(nb)
    if not VERSIONS_LINE.search(versions):
        raise RuntimeError(f"the set-up cell did not print the versions line; it printed {versions!r}")
    seen.update(times=times, versions=VERSIONS_LINE.search(versions).group(0), chapter_seconds=result["seconds"],
                figures=figures)
    for step, secs in times.items():
        log(f"{step}: {secs:.1f} s")
    log(seen["versions"])
    return seen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", help="default: the first chapter in chapters/")
    ap.add_argument("--all", action="store_true", help="every chapter, one after the other, in one environment")
    ap.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temporary one)")
    args = ap.parse_args(argv)
    chapters = sorted((REPO / "chapters").glob("[0-9]*.ipynb"))
    notebooks = [Path(p) for p in args.notebooks] or (chapters if args.all else chapters[:1])
    with tempfile.TemporaryDirectory(prefix="colab-sim-") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        failed = []
        for notebook in notebooks:
            try:
                simulate(notebook, workdir)
                print(f"{notebook.name} ran in the simulated Colab")
            except RuntimeError as err:
                print(f"FAILED {notebook.name}: {err}", file=sys.stderr)
                failed.append(notebook.name)
    print(f"{len(notebooks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
