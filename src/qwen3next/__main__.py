"""``python -m qwen3next``: see :mod:`qwen3next.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
