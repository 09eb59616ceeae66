"""Shared test set-up: offline, deterministic, and paths to the project's fact files."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def released_config_path() -> Path:
    """The released config.json: the shared fact file when it is beside the checkout, else the package copy."""
    shared = ROOT.parent / "shared" / "data" / "qwen3-next-80b-a3b-instruct.config.json"
    return shared if shared.is_file() else ROOT / "src" / "qwen3next" / "data" / shared.name
