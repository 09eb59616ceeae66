"""Mark exercise solutions in chapter notebooks so every reader's tool folds them.

A code cell whose first line is ``# @title Solution`` gets the tags ``solution`` and ``hide-input``
(the book folds it, ``make student`` removes it) and ``cellView: form`` (Colab folds it). Also sets
the python3 kernelspec. Usage: ``python tools/tag_solutions.py chapters/NN_slug.ipynb ...``
"""

import sys

import nbformat

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def tag(path: str) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.metadata["kernelspec"] = KERNELSPEC
    nb.metadata.setdefault("language_info", {"name": "python"})
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.lstrip().startswith("# @title Solution"):
            tags = cell.metadata.setdefault("tags", [])
            for t in ("solution", "hide-input"):
                if t not in tags:
                    tags.append(t)
            cell.metadata["cellView"] = "form"
    nbformat.write(nb, path)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        tag(p)
