"""Shared test set-up: offline, deterministic, the released config file, a tiny model."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def released_config_path() -> Path:
    """The released config.json, as the package ships it."""
    return ROOT / "src" / "qwen3next" / "data" / "qwen3-next-80b-a3b-instruct.config.json"


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: tiny models and hundreds of small per-expert matmuls gain nothing from a
    second thread, and on a busy machine OpenMP threads waiting for each other make them much slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    """A seeded tiny Qwen3-Next (the 3:1 hybrid pattern) in eval mode."""
    from qwen3next import Qwen3NextConfig, Qwen3NextForCausalLM

    torch.manual_seed(0)
    return Qwen3NextForCausalLM(Qwen3NextConfig.tiny()).eval()
