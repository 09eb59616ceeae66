"""Tests of the command line: ``python -m qwen3next inspect DIR`` and ``python -m qwen3next generate``.

The checkpoint is a tiny random model with the real Qwen3 vocabulary size, written by the reference,
so the bundled Qwen3 tokenizer works with it; its text is gibberish, but the CLI must print exactly
what ``generate`` produces, as it is produced.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qwen3next.cli import main
from qwen3next.config import Qwen3NextConfig
from qwen3next.inspection import describe
from qwen3next.model import Qwen3NextForCausalLM
from qwen3next.reference import random_reference_model

CFG = Qwen3NextConfig.tiny(num_hidden_layers=4, vocab_size=151936, hidden_size=32)
STOP = [151643, 151645]  # <|endoftext|>, <|im_end|>


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    random_reference_model(CFG).save_pretrained(d, max_shard_size="10MB")
    return d


@pytest.fixture(scope="module")
def tok():
    from qwen3next.tokenizer import Tokenizer

    return Tokenizer.qwen3()


class Recorder(io.StringIO):
    """Remembers every write, to tell streamed output from output printed at the end."""

    def __init__(self):
        super().__init__()
        self.writes: list[str] = []

    def write(self, s):
        self.writes.append(s)
        return super().write(s)


def _expected_text(ckpt: Path, tok, text: str, n: int, **load) -> str:
    model = Qwen3NextForCausalLM.from_pretrained(ckpt, **load)
    from qwen3next.generate import generate

    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        out = generate(model, ids, n, eos_token_id=STOP)
    new = [t for t in out[0, ids.shape[1]:].tolist() if t not in STOP]
    return tok.decode(new, skip_special_tokens=True)


def _run(*argv):
    out, err = Recorder(), io.StringIO()
    rc = main([str(a) for a in argv], out=out, err=err)
    return rc, out, err.getvalue()


def test_inspect_runs_as_a_module(ckpt):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "qwen3next", "inspect", str(ckpt)], capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    s = describe(ckpt)
    assert f"{s.model_params:,}" in res.stdout
    assert "routed experts" in res.stdout and "offload experts" in res.stdout and "F32 x" in res.stdout
    assert f"{sum(s.tensors.values()):,} tensors" in res.stdout


def test_inspect_reports_a_broken_checkpoint(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 16)
    rc, out, err = _run("inspect", tmp_path)
    assert rc == 2 and out.getvalue() == ""
    assert "error:" in err and "config.json is missing" in err


def test_generate_streams_the_greedy_continuation(ckpt, tok):
    rc, out, err = _run("generate", "--model", ckpt, "--prompt", "The capital of France is", "--max-new-tokens", 6)
    assert rc == 0, err
    expected = _expected_text(ckpt, tok, "The capital of France is", 6)
    assert out.getvalue() == expected + "\n"
    assert len([w for w in out.writes if w]) > 1  # printed piece by piece, not all at the end
    assert "tokens/s" in err and "bundled Qwen3 tokenizer" in err


def test_generate_chat_uses_the_template(ckpt, tok):
    rc, out, err = _run("generate", "--model", ckpt, "--prompt", "Hi!", "--chat", "--max-new-tokens", 4)
    assert rc == 0, err
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi!"}], add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert out.getvalue() == _expected_text(ckpt, tok, prompt, 4) + "\n"


def test_generate_with_offloaded_experts_prints_the_same(ckpt):
    args = ("generate", "--model", ckpt, "--prompt", "One two three", "--max-new-tokens", 5)
    rc, full, _ = _run(*args)
    rc2, off, err = _run(*args, "--offload-experts", "--expert-cache", 3)
    assert rc == rc2 == 0
    assert off.getvalue() == full.getvalue()
    assert "read from disk" in err


def test_generate_refuses_a_vocabulary_mismatch(tmp_path):
    small = Qwen3NextConfig.tiny(num_hidden_layers=4)  # 512 ids: the Qwen3 tokenizer's ids do not fit
    random_reference_model(small).save_pretrained(tmp_path)
    rc, out, err = _run("generate", "--model", tmp_path, "--prompt", "Hello world, how are you?")
    assert rc == 2 and "outside the model's vocabulary" in err and "vocab_size=512" in err


def test_generate_checks_max_new_tokens(ckpt):
    rc, _, err = _run("generate", "--model", ckpt, "--prompt", "x", "--max-new-tokens", 0)
    assert rc == 2 and "--max-new-tokens" in err
