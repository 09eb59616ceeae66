"""Tests of the command line: ``python -m qwen3next inspect DIR`` and ``python -m qwen3next generate``.

The checkpoint is a tiny random model with the real Qwen3 vocabulary size, written by the reference,
so the bundled Qwen3 tokenizer works with it; its text is gibberish, but the CLI must print exactly
what ``generate`` produces, as it is produced.
"""

from __future__ import annotations

import io
import json
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


def test_generate_on_native_cpu_kernels_prints_the_same(ckpt):
    args = ("generate", "--model", ckpt, "--prompt", "One two three", "--max-new-tokens", 5)
    rc, default, _ = _run(*args)
    rc2, native, err = _run(*args, "--cpu-kernels", "native")
    assert rc == rc2 == 0, err
    assert native.getvalue() == default.getvalue()


def test_generate_with_compiled_decoding_prints_the_same(ckpt):
    args = ("generate", "--model", ckpt, "--prompt", "One two three", "--max-new-tokens", 5)
    rc, eager, _ = _run(*args)
    rc2, compiled, err = _run(*args, "--compile")
    assert rc == rc2 == 0, err
    assert compiled.getvalue() == eager.getvalue()


def test_generate_refuses_a_vocabulary_mismatch(tmp_path):
    small = Qwen3NextConfig.tiny(num_hidden_layers=4)  # 512 ids: the Qwen3 tokenizer's ids do not fit
    random_reference_model(small).save_pretrained(tmp_path)
    rc, out, err = _run("generate", "--model", tmp_path, "--prompt", "Hello world, how are you?")
    assert rc == 2 and "outside the model's vocabulary" in err and "vocab_size=512" in err


def test_generate_checks_max_new_tokens(ckpt):
    rc, _, err = _run("generate", "--model", ckpt, "--prompt", "x", "--max-new-tokens", 0)
    assert rc == 2 and "--max-new-tokens" in err


# ----------------------------------------------------------------------------------- bad input
def _bad_inputs(ckpt: Path, tmp: Path) -> list[tuple[list, str]]:
    """(arguments, what the one error line must say) for every kind of bad input."""
    g = ["generate", "--model", ckpt, "--prompt", "Hi"]
    (tmp / "file.txt").write_text("not a directory")
    return [
        ([], "the following arguments are required: command"),
        (["serve"], "invalid choice: 'serve'"),
        (["generate", "--prompt", "x"], "the following arguments are required: --model"),
        (["inspect", tmp / "missing"], "no such checkpoint directory"),
        (["inspect", tmp / "file.txt"], "no such checkpoint directory"),
        (["inspect", tmp], "no weights"),
        (["generate", "--model", tmp / "missing", "--prompt", "x"], "--model"),
        ([*g, "--tokenizer", tmp / "missing"], "--tokenizer"),
        ([*g, "--device", "cuda:7"], "--device: 'cuda:7' is not available"),
        ([*g, "--device", "gpu"], "--device: 'gpu' is not a device"),
        ([*g, "--device", "meta"], "--device: weights cannot be loaded onto the meta device"),
        ([*g, "--max-new-tokens", "abc"], "--max-new-tokens: invalid int value: 'abc'"),
        ([*g, "--max-new-tokens", "0"], "--max-new-tokens: expected a positive integer, found 0"),
        ([*g, "--max-new-tokens", "-3"], "--max-new-tokens: expected a positive integer"),
        ([*g, "--max-new-tokens", "1e3"], "--max-new-tokens: invalid int value"),
        ([*g, "--temperature", "hot"], "--temperature: invalid float value"),
        ([*g, "--temperature", "-1"], "--temperature: expected a finite number >= 0"),
        ([*g, "--temperature", "nan"], "--temperature: expected a finite number >= 0"),
        ([*g, "--temperature", "inf"], "--temperature: expected a finite number >= 0"),
        ([*g, "--top-k", "-1"], "--top-k: expected an integer >= 0"),
        ([*g, "--top-p", "0"], "--top-p: expected a number in (0, 1]"),
        ([*g, "--top-p", "1.5"], "--top-p: expected a number in (0, 1]"),
        ([*g, "--top-p", "nan"], "--top-p: expected a number in (0, 1]"),
        ([*g, "--seed", "-1"], "--seed: expected an integer in 0 .. 2**64 - 1"),
        ([*g, "--seed", str(2**64)], "--seed: expected an integer in 0 .. 2**64 - 1"),
        ([*g, "--seed", "x"], "--seed: invalid int value"),
        ([*g, "--expert-cache", "0"], "--expert-cache: expected a positive number of experts"),
        ([*g, "--dtype", "int8"], "--dtype: invalid choice: 'int8'"),
        ([*g, "--cpu-kernels", "mkl"], "--cpu-kernels: invalid choice: 'mkl'"),
        ([*g, "--cpu-kernels", "native", "--speculative", "2"], "--cpu-kernels: applies to one-token decoding"),
        ([*g, "--prompt", ""], "--prompt: the prompt encodes to no tokens"),
        ([*g, "--bogus"], "unrecognized arguments: --bogus"),
        (["chat", "--model", ckpt, "--max-len", "0"], "--max-len: expected a positive number of tokens"),
        (["chat", "--model", ckpt, "--temperature", "-1"], "--temperature: expected a finite number >= 0"),
        (["chat", "--model", ckpt, "--tools", tmp / "missing.json"], "--tools"),
        (["chat", "--model", ckpt, "--device", "gpu"], "--device: 'gpu' is not a device"),
        (["chat", "--model", ckpt, "--cpu-kernels", "mkl"], "--cpu-kernels: invalid choice: 'mkl'"),
    ]


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert all(not line.strip() or line.startswith(("error:", "  ", "[")) for line in lines), err
    return errors[0]


def test_every_bad_input_is_one_error_line(ckpt, tmp_path):
    for argv, expected in _bad_inputs(ckpt, tmp_path):
        rc, out, err = _run(*argv)
        assert rc == 2, (argv, err)
        assert expected in _one_error_line(err), (argv, err)


def test_bad_input_as_a_process_prints_no_traceback(ckpt, tmp_path):
    """The same through ``python -m qwen3next`` (a handful, started side by side: each pays for importing torch)."""
    wanted = ("the following arguments are required: command", "--device: 'cuda:7' is not available", "no weights",
              "--max-new-tokens: invalid int value: 'abc'")
    cases = [c for c in _bad_inputs(ckpt, tmp_path) if c[1] in wanted]
    assert len(cases) == len(wanted)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("QWEN3NEXT_TRACEBACK", None)
    procs = [(subprocess.Popen([sys.executable, "-m", "qwen3next", *map(str, argv)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env), expected) for argv, expected in cases]
    for p, expected in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 2 and out == "", (p.args, err)
        assert expected in _one_error_line(err), (p.args, err)


def test_a_checkpoint_report_is_one_error_line_with_details(ckpt, tmp_path):
    import shutil

    d = tmp_path / "c"
    shutil.copytree(ckpt, d)
    raw = json.loads((d / "config.json").read_text())
    raw["hidden_size"] = 48
    (d / "config.json").write_text(json.dumps(raw))
    rc, out, err = _run("generate", "--model", d, "--prompt", "Hi")
    assert rc == 2
    assert "the weights do not match" in _one_error_line(err)
    assert "  - " in err and "hidden_size: config.json has 48" in err
