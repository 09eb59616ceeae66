"""Speculative decoding on the book's trained small model (chapter 10): exact on held-out stories, a head
that drafts well, and the wrong wirings that collapse its acceptance."""

from __future__ import annotations

import pytest
import torch

import qwen3next
from qwen3next import Qwen3NextForCausalLM, Tokenizer, generate
from qwen3next.speculative import (
    PreNormHidden,
    SpeculativeDecoder,
    SwappedConcat,
    UnshiftedTokens,
    speculative_generate,
)
from qwen3next.stories import END_OF_TEXT, generate_stories

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained():
    path = qwen3next.tiny_pretrained_path()
    model = Qwen3NextForCausalLM.from_pretrained(path, mtp=True).eval()
    tok = Tokenizer.from_pretrained(path)
    prompts = [torch.tensor([tok.encode(s.text)[:20]]) for s in generate_stories(4, seed=987_654)]
    return model, prompts, tok.token_to_id(END_OF_TEXT)


@pytest.mark.slow
@torch.no_grad()
@pytest.mark.parametrize("rollback", ["replay", "checkpoints"])
def test_exact_on_held_out_stories(trained, rollback):
    model, prompts, eot = trained
    for k in (1, 2, 3, 4):
        for ids in prompts[:2]:
            plain = generate(model, ids, 32, eos_token_id=eot)
            ours, stats = speculative_generate(model, ids, 32, num_draft_tokens=k, rollback=rollback,
                                               eos_token_id=eot)
            assert torch.equal(ours, plain), (k, rollback)
            assert stats.accepted > 0


def first_draft_acceptance(model, prompts, eot, cls=SpeculativeDecoder):
    drafted = accepted = 0
    for ids in prompts:
        d = cls(model, ids, 32, num_draft_tokens=2, eos_token_id=eot)
        while not d.done:
            d.step()
        assert torch.equal(d.output(ids), generate(model, ids, 32, eos_token_id=eot))  # exact anyway
        drafted, accepted = drafted + d.stats.drafted_at[0], accepted + d.stats.accepted_at[0]
    return accepted / drafted


@pytest.mark.slow
@torch.no_grad()
def test_wrong_wirings_collapse_acceptance(trained):
    model, prompts, eot = trained
    right = first_draft_acceptance(model, prompts, eot)
    assert right > 0.5  # the trained head agrees with the trunk most of the time
    for control in (SwappedConcat, UnshiftedTokens):
        wrong = first_draft_acceptance(model, prompts, eot, control)
        assert wrong < 0.5 * right, (control.__name__, wrong, right)


@pytest.mark.slow
@torch.no_grad()
def test_the_pre_norm_hidden_state_differs_only_by_the_final_gain(trained):
    """The head normalises what it reads (``pre_fc_norm_hidden``), and an RMSNorm does not see the scale
    of its input: fed the pre-norm state instead of ``norm(x) * (1 + w)``, the head sees its input without
    the final norm's gain. This model's gain is nearly uniform, so acceptance barely moves."""
    model, prompts, eot = trained
    gain = 1 + model.model.norm.weight.float()
    assert gain.std() / gain.mean() < 0.1
    right = first_draft_acceptance(model, prompts, eot)
    assert abs(first_draft_acceptance(model, prompts, eot, PreNormHidden) - right) < 0.1
    x = torch.randn(3, model.config.hidden_size)
    head_norm = model.mtp.pre_fc_norm_hidden
    assert torch.allclose(head_norm(x), head_norm(model.model.norm(x) / gain), atol=1e-5)
