"""Speculative decoding from a Hub-layout checkpoint: the trunk written by the reference
(``transformers``' ``save_pretrained``), the ``mtp.*`` tensors added in their own shard as the release
lists them in its index; in bf16/fp32 and as an FP8 copy; and ``python -m qwen3next generate --speculative``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from qwen3next import Qwen3NextConfig, Qwen3NextForCausalLM, generate
from qwen3next.checkpoint import INDEX_FILE
from qwen3next.cli import main
from qwen3next.fp8 import write_fp8_checkpoint
from qwen3next.mtp import MultiTokenPredictor
from qwen3next.reference import random_reference_model
from qwen3next.speculative import speculative_generate

pytestmark = pytest.mark.usefixtures("one_thread")
# the real vocabulary size, so that the bundled Qwen3 tokenizer works for the command line
CFG = Qwen3NextConfig.tiny(num_hidden_layers=4, vocab_size=151936, hidden_size=32)


@pytest.fixture(scope="module")
def reference():
    return random_reference_model(CFG, seed=4)


@pytest.fixture(scope="module")
def ckpt(reference, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("spec_ckpt")
    reference.save_pretrained(d, max_shard_size="10MB")
    torch.manual_seed(5)
    with torch.device("cpu"):
        head = MultiTokenPredictor(CFG)
    with torch.no_grad():
        for name, p in head.named_parameters():
            p.normal_(0.0, 0.3 if "norm" in name else 0.05)
    tensors = {f"mtp.{k}": v.contiguous() for k, v in head.state_dict().items()}
    save_file(tensors, d / "model-mtp.safetensors", metadata={"format": "pt"})
    index = json.loads((d / INDEX_FILE).read_text())
    index["weight_map"].update(dict.fromkeys(tensors, "model-mtp.safetensors"))
    (d / INDEX_FILE).write_text(json.dumps(index))
    return d


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 5000, (2, 7), generator=torch.Generator().manual_seed(6))


@torch.no_grad()
def test_speculative_on_the_hub_layout_gives_the_references_tokens(ckpt, reference, ids):
    model = Qwen3NextForCausalLM.from_pretrained(ckpt, mtp=True)
    assert isinstance(model.mtp, MultiTokenPredictor)
    expected = reference.generate(ids, max_new_tokens=10, do_sample=False)  # the reference's own greedy loop
    for rollback in ("replay", "checkpoints"):
        ours, stats = speculative_generate(model, ids, 10, num_draft_tokens=2, rollback=rollback)
        assert torch.equal(ours, expected), rollback
        assert stats.drafted > 0


@torch.no_grad()
def test_speculative_on_an_fp8_copy(ckpt, ids, tmp_path):
    d = write_fp8_checkpoint(ckpt, tmp_path / "fp8", block=(16, 16))
    assert any("mtp." in k and k.endswith("weight_scale_inv")
               for k in json.loads((d / INDEX_FILE).read_text())["weight_map"])  # the head is FP8 too
    model = Qwen3NextForCausalLM.from_pretrained(d, dtype=torch.float32, mtp=True)
    ours, _ = speculative_generate(model, ids, 8, num_draft_tokens=3, rollback="checkpoints")
    assert torch.equal(ours, generate(model, ids, 8))


def test_the_command_line_drafts_and_reports_acceptance(ckpt):
    out, err = io.StringIO(), io.StringIO()
    argv = ["generate", "--model", str(ckpt), "--prompt", "Once upon a time", "--max-new-tokens", "6",
            "--speculative", "2"]
    assert main(argv, out=out, err=err) == 0, err.getvalue()
    assert "drafts accepted" in err.getvalue() and "by position" in err.getvalue()
    plain_out = io.StringIO()
    assert main(argv[:-2], out=plain_out, err=io.StringIO()) == 0
    assert out.getvalue() == plain_out.getvalue()  # the same text as plain greedy decoding


def test_the_command_line_refuses_a_negative_draft_count(ckpt):
    err = io.StringIO()
    argv = ["generate", "--model", str(ckpt), "--prompt", "Hi", "--speculative", "-1"]
    assert main(argv, out=io.StringIO(), err=err) == 2
    assert "--speculative" in err.getvalue()
