"""Qwen3-Next-80B-A3B from first principles: the package behind the book.

The public interface (see CONTRIBUTING.md): ``Qwen3NextConfig``, ``Qwen3NextForCausalLM``, ``Tokenizer``,
``generate``. The model and the tokenizer are imported lazily so that ``import qwen3next`` stays fast
and each chapter only pays for the modules it uses.
"""

from importlib import import_module

# Bound eagerly: the submodule ``qwen3next.generate`` shares the function's name, and importing the
# submodule first would otherwise leave the *module* under ``qwen3next.generate``.
from .generate import generate

__version__ = "0.1.0"

_PUBLIC = {
    "Qwen3NextConfig": "config",
    "Qwen3NextForCausalLM": "model",
    "Tokenizer": "tokenizer",
}

__all__ = [*_PUBLIC, "generate", "tiny_pretrained_path", "__version__"]


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(import_module(f"qwen3next.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'qwen3next' has no attribute {name!r}")


def tiny_pretrained_path():
    """The book's own trained small Qwen3-Next (chapter 10): a checkpoint directory inside the package
    (``config.json``, ``model.safetensors`` with the MTP head, the tokenizer and the training logs)."""
    from pathlib import Path

    path = Path(__file__).parent / "data" / "tiny-qwen3-next"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path}: the trained model is missing; `make train` writes it")
    return path


def print_versions() -> None:
    """Print the versions a chapter ran with (Python, torch, transformers, this package)."""
    import platform

    import torch

    try:
        from transformers import __version__ as transformers_version
    except ImportError:  # the package itself does not need the reference
        transformers_version = "not installed"
    print(f"python {platform.python_version()} | torch {torch.__version__} | "
          f"transformers {transformers_version} | qwen3next {__version__}")
