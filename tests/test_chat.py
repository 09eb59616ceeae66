"""Multi-turn chat: each turn reuses the cache and still equals a cold prefill of the whole conversation.

The model is a tiny random one with the real Qwen3 vocabulary, so the bundled tokenizer and chat
template work with it. Its own replies are gibberish; to test what a real reply does to the next
turn (reasoning that the template drops, a tool call, text that re-tokenizes the same) some tests
*script* the sampled tokens, while the model still computes every logit that is compared.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from safetensors.torch import save_file

from qwen3next import chat
from qwen3next.chat import ChatSession, parse_tool_calls, split_reasoning
from qwen3next.cli import main
from qwen3next.config import Qwen3NextConfig
from qwen3next.engine import run_alone
from qwen3next.model import Qwen3NextForCausalLM
from qwen3next.tokenizer import Tokenizer

CFG = Qwen3NextConfig.tiny(num_hidden_layers=4, vocab_size=151936, hidden_size=32)
TOL = 1e-5
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return Qwen3NextForCausalLM(CFG).eval()


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.qwen3()


@pytest.fixture(scope="module")
def thinking_tok():
    """The bundled template with a Thinking-style generation prompt (it opens ``<think>`` itself)."""
    t = Tokenizer.qwen3()
    key = "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}"
    assert key in t.chat_template
    t.chat_template = t.chat_template.replace(key, key[:-4] + "<think>\\n' }}")
    return t


@torch.no_grad()
def cold_logits(model, ids):
    return model(torch.tensor([ids])).logits[0, -1]


def script(monkeypatch, tok, texts):
    """Make the session 'sample' the tokens of ``texts`` (one reply each, then <|im_end|>)."""
    queue = []
    for text in texts:
        queue += tok.encode(text) + [tok.token_to_id("<|im_end|>")]

    def scripted(logits, *args, **kwargs):
        return torch.tensor([queue.pop(0)])

    monkeypatch.setattr(chat, "next_token", scripted)


def test_reasoning_and_tool_calls_are_split_from_the_content():
    assert split_reasoning("plan\n</think>\n\nHello", opened=True) == ("plan", "Hello", False)
    assert split_reasoning("<think>\nplan</think>Hi", opened=False) == ("plan", "Hi", False)
    assert split_reasoning("still planning", opened=True) == ("still planning", "", True)
    assert split_reasoning("Hi", opened=False) == (None, "Hi", False)
    text = ('Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
            '\n<tool_call>\n{"name": oops}\n</tool_call>')
    content, calls = parse_tool_calls(text)
    assert content == "Let me look."
    assert (calls[0].name, calls[0].arguments) == ("get_weather", {"city": "Paris"})
    assert str(calls[0]) == 'get_weather({"city": "Paris"})'
    assert calls[1].error is not None and "malformed tool call" in str(calls[1])


def test_every_turn_equals_a_cold_prefill_and_reuses_the_cache(lm, tok):
    session = ChatSession(lm, tok, system="Be brief.", block_size=16, record_logits=True)
    first = session.send("What is a hybrid model?", max_new_tokens=6)
    assert first.reused_tokens == 0
    for text in ("And the state?", "Thanks."):
        reply = session.send(text, max_new_tokens=6)
        ids = session.render()[:reply.prompt_tokens]  # this turn's prompt
        assert reply.reused_tokens > 0
        assert (reply.logits[0] - cold_logits(lm, ids)).abs().max() < TOL
        tokens, _ = run_alone(lm, ids, 6, eos_token_id=sorted(session.stop_ids))
        assert reply.tokens == tokens


def test_a_reply_that_retokenizes_the_same_is_reused_whole(lm, tok, monkeypatch):
    """Instruct-style: only the new message (and the end of the last reply) is prefilled."""
    script(monkeypatch, tok, ["Hello there, friend.", "Sure."])
    session = ChatSession(lm, tok, block_size=16, record_logits=True)
    session.send("Hi", max_new_tokens=20)
    cached = session.seq.num_computed  # the prompt and the reply (its last token is not read yet)
    reply = session.send("Tell me more", max_new_tokens=20)
    assert reply.reused_tokens == cached
    ids = session.render()[:reply.prompt_tokens]
    assert reply.prefilled_tokens == len(ids) - cached
    assert (reply.logits[0] - cold_logits(lm, ids)).abs().max() < TOL


def test_thinking_is_dropped_from_later_turns_and_the_turn_still_equals_cold(lm, thinking_tok, monkeypatch):
    """The template re-renders turn 1 without its reasoning: the cache is reused up to the start of
    that reply's header (the snapshot at its <|im_start|>), then the rest is read again."""
    tok = thinking_tok
    script(monkeypatch, tok, ["Let me think about it.\n</think>\n\nIt is 4.", "Ok.\n</think>\n\nYes."])
    session = ChatSession(lm, tok, block_size=16, record_logits=True)
    assert session.thinking
    first = session.send("2 + 2?", max_new_tokens=30)
    assert (first.reasoning, first.content) == ("Let me think about it.", "It is 4.")
    assert session.messages[-1] == {"role": "assistant", "content": "It is 4.",
                                    "reasoning_content": "Let me think about it."}
    prompt1 = tok.encode(tok.apply_chat_template([{"role": "user", "content": "2 + 2?"}]))
    header = len(prompt1) - 5  # the prompt ends <|im_start|> assistant \n <think> \n
    reply = session.send("Sure?", max_new_tokens=30)
    ids = session.render()[:reply.prompt_tokens]
    assert "Let me think" not in tok.decode(ids)
    assert reply.reused_tokens == header
    assert (reply.logits[0] - cold_logits(lm, ids)).abs().max() < TOL


def test_a_snapshot_not_restored_is_caught(lm, thinking_tok, monkeypatch):
    """Skip the restore (keep the states of the whole first reply): the next turn's logits move."""
    script(monkeypatch, thinking_tok, ["Hmm.\n</think>\n\n4.", "Yes."])
    monkeypatch.setattr(chat, "copy_slot", lambda *args, **kwargs: None)
    session = ChatSession(lm, thinking_tok, block_size=16, record_logits=True)
    session.send("2 + 2?", max_new_tokens=30)
    reply = session.send("Sure?", max_new_tokens=30)
    ids = session.render()[:reply.prompt_tokens]
    assert (reply.logits[0] - cold_logits(lm, ids)).abs().max() > 1e-3


def test_regenerate_restores_the_states_before_the_last_reply(lm, tok):
    session = ChatSession(lm, tok, block_size=16, record_logits=True)
    first = session.send("Hi", max_new_tokens=5)
    again = session.regenerate(max_new_tokens=5)
    assert again.reused_tokens == again.prompt_tokens and again.prefilled_tokens == 0
    assert again.tokens == first.tokens and len(session.messages) == 2
    assert (again.logits[0] - first.logits[0]).abs().max() == 0
    sampled = session.regenerate(max_new_tokens=5, temperature=1.0, seed=3)
    assert sampled.prompt_tokens == first.prompt_tokens
    with pytest.raises(ValueError, match="no reply to regenerate"):
        ChatSession(lm, tok).regenerate()


def test_a_tool_call_is_reported_and_rendered_back(lm, tok, monkeypatch):
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 2}}\n</tool_call>'
    script(monkeypatch, tok, [call, "It is 4."])
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    session = ChatSession(lm, tok, tools=tools, block_size=16, record_logits=True)
    reply = session.send("2 + 2 with the tool", max_new_tokens=40)
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("add", {"a": 2, "b": 2})]
    assert session.messages[-1]["tool_calls"] == [{"name": "add", "arguments": {"a": 2, "b": 2}}]
    result = session.send("4", role="tool", max_new_tokens=40)
    ids = session.render()[:result.prompt_tokens]
    assert "<tool_response>\n4\n</tool_response>" in tok.decode(ids)
    assert result.reused_tokens > 0
    assert (result.logits[0] - cold_logits(lm, ids)).abs().max() < TOL


def test_no_reuse_prefills_everything_and_gives_the_same_reply(lm, tok):
    a = ChatSession(lm, tok, record_logits=True)
    b = ChatSession(lm, tok, record_logits=True, reuse=False)
    for text in ("One", "Two"):
        ra, rb = a.send(text, max_new_tokens=4), b.send(text, max_new_tokens=4)
    assert rb.reused_tokens == 0 and ra.reused_tokens > 0
    assert ra.tokens == rb.tokens and (ra.logits[0] - rb.logits[0]).abs().max() < TOL


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN to switch off")
def test_native_cpu_kernels_run_only_the_decoding_steps_and_reply_the_same(lm, tok):
    bf16 = copy.deepcopy(lm).to(torch.bfloat16)
    seen = []  # (tokens in the call, oneDNN on) for each forward of the first MoE block
    bf16.model.layers[0].mlp.register_forward_pre_hook(
        lambda m, args: seen.append((args[0].shape[1], torch.backends.mkldnn.enabled)))
    default = ChatSession(bf16, tok).send("One", max_new_tokens=6)
    seen.clear()
    native = ChatSession(bf16, tok, cpu_kernels="native").send("One", max_new_tokens=6)
    assert native.tokens == default.tokens
    assert seen[0] == (native.prompt_tokens, True)  # the prefill keeps oneDNN
    assert seen[1:] and all(step == (1, False) for step in seen[1:])
    assert torch.backends.mkldnn.enabled
    with pytest.raises(ValueError, match="cpu_kernels: expected one of"):
        ChatSession(lm, tok, cpu_kernels="mkl")


# ----------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, lm):
    d = tmp_path_factory.mktemp("chat")
    save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, str(d / "model.safetensors"))
    CFG.to_json(d / "config.json")
    return d


def test_the_chat_command_keeps_the_cache_between_turns(ckpt, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n/regenerate\nMore\n/reset\nAgain\n"))
    out, err = io.StringIO(), io.StringIO()
    assert main(["chat", "--model", str(ckpt), "--max-new-tokens", "4"], out=out, err=err) == 0
    turns = [line for line in err.getvalue().splitlines() if line.startswith("[turn")]
    assert len(turns) == 4
    assert turns[0].startswith("[turn 1: 0 tokens reused")
    assert " 0 prefilled" in turns[1]  # regenerate: nothing to read again
    assert "[turn 2: 0 tokens reused" not in turns[2]
    assert turns[3].startswith("[turn 1: 0 tokens reused")  # after /reset
    assert "[conversation cleared]" in err.getvalue()


def test_a_hub_name_without_a_network_says_so_in_one_line(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    err = io.StringIO()
    assert main(["chat", "--model", "thinking-fp8"], out=io.StringIO(), err=err) == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --model thinking-fp8: Qwen/Qwen3-Next-80B-A3B-Thinking-FP8")
    assert "HF_HUB_OFFLINE=1" in lines[0]
    err = io.StringIO()
    assert main(["chat", "--model", "no-such-model"], out=io.StringIO(), err=err) == 2
    assert "not a checkpoint directory, nor a Hub id" in err.getvalue()
