"""The from-scratch tokenizer against the real Qwen3 tokenizer (Rust ``tokenizers`` and ``transformers``)."""

from __future__ import annotations

import json
import random
import re
import shutil
import unicodedata
from collections import Counter
from itertools import pairwise
from pathlib import Path

import huggingface_hub.constants as hub_constants
import pytest
import tokenizers
import torch
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen3next.bpe import bpe, bpe_merge_steps, bytes_to_unicode, to_byte_symbols, token_bytes, unicode_to_bytes
from qwen3next.bpe_trainer import train_bpe
from qwen3next.normalize import nfc
from qwen3next.pretokenizer import QWEN_PATTERN
from qwen3next.tokenizer import Tokenizer
from qwen3next.tokenizer_files import qwen3_files_dir


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.qwen3()


@pytest.fixture(scope="module")
def ref():
    return tokenizers.Tokenizer.from_file(str(qwen3_files_dir() / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf():
    return transformers.AutoTokenizer.from_pretrained(str(qwen3_files_dir()))


# ----------------------------------------------------------------------------- vocabulary facts


def test_sizes_and_special_tokens(tok, ref):
    assert len(tok) == 151669 == ref.get_vocab_size(with_added_tokens=True)
    assert len(tok.vocab) == 151643 and len(tok.ranks) == 151387
    assert [t.id for t in tok.added_tokens] == list(range(151643, 151669))
    assert tok.token_to_id("<|endoftext|>") == 151643
    assert tok.token_to_id("<|im_start|>") == 151644 and tok.token_to_id("<|im_end|>") == 151645
    assert tok.token_to_id("<think>") == 151667 and tok.token_to_id("</think>") == 151668
    # 151643..151656 are special (control) tokens, 151657..151668 are not
    assert set(tok.special_tokens.values()) == set(range(151643, 151657))
    assert tok.eos_token_id == 151645 and tok.pad_token_id == 151643 and tok.bos_token_id is None
    for i in (0, 1, 220, 9707, 151642, 151644, 151668):
        assert tok.id_to_token(i) == ref.id_to_token(i)
    assert tok.token_to_id("not-a-token-at-all") is None


def test_ranks_follow_merges_txt(tok):
    lines = (qwen3_files_dir() / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    for r in (0, 1, 2, 1000, 151386):
        assert tok.ranks[tuple(lines[r].split(" "))] == r
    assert list(tok.ranks.values())[:5] == [0, 1, 2, 3, 4]
    # a pair listed twice keeps its first rank
    toy = Tokenizer({"a": 0, "b": 1, "ab": 2, "ba": 3}, [("a", "b"), ("b", "a"), ("a", "b")])
    assert toy.ranks == {("a", "b"): 0, ("b", "a"): 1}


def test_byte_table():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"
    assert all(unicode_to_bytes()[c] == b for b, c in table.items())
    assert all(c.isprintable() and not c.isspace() for c in table.values())


# ----------------------------------------------------------------------------- encode == reference

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2025; we'll see 12,345.67 tokens!",
    "Qwen3-Next-80B-A3B has 48 layers: 36 Gated DeltaNet + 12 gated attention.",
    "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\r\n",
    "通义千问是阿里云研发的大语言模型。它支持中文、英文等多种语言！",
    "日本語のテキスト、カタカナとひらがな。漢字も。",
    "한국어 문장입니다. 띄어쓰기가 있습니다.",
    "Русский текст, с пунктуацией — и тире.",
    "Ελληνικά: αβγδε ΑΒΓΔΕ.",
    "مرحبا بالعالم! هذا نص عربي.",
    "שלום עולם, זה טקסט בעברית.",
    "हिन्दी पाठ: नमस्ते दुनिया।",
    "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "Emoji: 👩‍👩‍👧‍👦 👍🏽 🇯🇵 ❤️ 🧑‍💻 and ZWJ\u200d joins.",
    "Combining: e\u0301 a\u0308 n\u0303 \u1e9b\u0323 Å vs A\u030a; ﬁ ligature; Ⅻ; ①②; ２０２５",
    "  leading spaces,   runs   of spaces\n\n\n\n and \t\t tabs \u00a0nbsp\u3000ideographic",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nhmm\n</think>\n\nHello<|im_end|>",
    "near misses: <|im_start| <im_start|> <|IM_START|> < think> <think <|endoftext|>> <<think>>",
    "I'M HE'S THEY'RE we'VE you'LL she'D it'S 'sup ''s ’s",
    "URLs https://example.com/a?b=c&d=e#frag and emails a.b@c.org, paths C:\\Users\\x",
    "",
    " ",
    "\n",
    "$$\\sum_{i=1}^{n} x_i^2$$ and `code` **bold** _it_ ~~strike~~",
]


def test_corpus_equal_to_tokenizers(tok, ref):
    for text in CORPUS:
        assert tok.encode(text) == ref.encode(text).ids, text


def test_corpus_equal_to_transformers(tok, hf):
    for text in CORPUS:
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False), text
        ids = tok.encode(text)
        assert tok.decode(ids) == hf.decode(ids)
        assert tok.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


# The fragments hypothesis stitches together: the hard cases named in the issue.
FRAGMENTS = [
    # combining marks and normalisation
    "e\u0301", "\u0301", "a\u0308\u0301", "\u1e9b\u0323", "\u212b", "\uac00\u11a8", "\u1100\u1161\u11a8", "ﬁ",
    "\u0958", "\u2126", "\u0344", "\u07fd", "\u1ac1", "\U00010f46", "\u0316", "\U00011930",
    # emoji, ZWJ sequences, skin tones, flags, variation selectors
    "👩‍👩‍👧", "🧑🏽‍💻", "👍🏿", "🇯🇵🇫🇷", "❤️", "\u200d", "\ufe0f", "🫠",
    # CJK and other scripts without spaces
    "中文", "漢字かなカナ", "한국어", "ภาษาไทย", "𠀀𠀁",
    # right-to-left
    "مرحبا", "שלום", "\u200f", "\u202e", "۱۲۳",
    # whitespace runs
    " ", "  ", "   ", "\n", "\n\n", "\r\n", "\t", " \n ", "\u00a0", "\u3000", "\u2028", "\x0b", "\x0c", "\x85",
    "\x1c", "\x1f",
    # digits and numbers
    "0", "123", "3.14", "1,000", "٣", "²", "½", "Ⅻ",
    # contractions and apostrophes
    "'s", "'S", "'re", "'VE", "'m", "'ll", "'D", "'t", "'x", "'", "’s", "ſ", "'ſ",
    # special-token strings and near misses
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>", "<|fim_prefix|>",
    "<|im_start|", "|im_end|>", "<|im_end", "<think", "think>", "</think", "<|", "|>", "<<|im_end|>>",
    "<|IM_END|>", "<|im_start|><|im_end|>",
    # plain text and code
    "Hello", " world", "x=1;", "def f():", "{}", "...", "!!", "--", "==>", "a_b", "CamelCase",
]

texts = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8), st.text(alphabet=st.characters(codec="utf-8"),
                                                                      max_size=4)),
    max_size=10,
).map("".join)


@pytest.mark.slow
def test_every_code_point_is_classified_like_the_reference(tok):
    """Letters, digits, spaces and NFC for every code point of planes 0-3 and 14 (where all assigned
    characters live), next to a letter and next to a digit: same normalisation, same pre-tokens.
    This is what pins the Unicode version (see LETTERS_AFTER_UNICODE_16 and nfc in the module)."""
    cps = [chr(c) for c in [*range(0x40000), *range(0xE0000, 0xE1000)] if not 0xD800 <= c <= 0xDFFF]
    text = "".join(c + "a" for c in cps) + "".join(c + "1" for c in cps)
    normalized = tokenizers.normalizers.NFC().normalize_str(text)
    assert nfc(text) == normalized
    split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(QWEN_PATTERN), behavior="isolated")
    assert tok.pretokenize(normalized) == [p for p, _ in split.pre_tokenize_str(normalized)]
    # contractions are matched case-insensitively: try every character that case-folds near s,t,r,e,v,m,l,d
    folds = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF
             and set(chr(c).lower() + chr(c).upper() + chr(c).casefold()) & set("strevmldSTREVMLD")]
    text = "".join(f"'{c} '{c}{c} '{c}l " for c in folds)
    assert tok.pretokenize(text) == [p for p, _ in split.pre_tokenize_str(text)]


def test_unicode_quirks_of_the_reference(tok, ref):
    for text in ["\U000323b0's", "\U00011935\U00011930", "\U00011938", "a\U00011DE0b", "\u0558x", "q\u0301\u07fd",
                 "a\u07fd\u0301", "e\u1ac1\u0301"]:
        assert tok.encode(text) == ref.encode(text).ids


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts)
def test_hypothesis_equal_to_tokenizers_and_roundtrip(tok, ref, text):
    ids = tok.encode(text)
    assert ids == ref.encode(text).ids
    # NFC as the reference computes it (its own Unicode tables, see qwen3next.normalize)
    assert tok.decode(ids) == nfc(text) == ref.normalizer.normalize_str(text)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 300), st.integers(0, 151668)), max_size=12))
def test_decode_equal_to_tokenizers_on_any_ids(tok, ref, ids):
    # random ids give broken UTF-8 (lone continuation bytes, cut sequences): U+FFFD exactly as the reference
    assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=30))
def test_heap_bpe_equals_naive_merge_loop(tok, word):
    symbols = to_byte_symbols(word)
    assert bpe(symbols, tok.ranks) == bpe_merge_steps(symbols, tok.ranks)[-1][0]


def test_merge_steps_one_word(tok):
    steps = tok.merge_steps(" tokenization")
    first, _ = steps[0]
    assert first == list("Ġtokenization")
    assert steps[-1][0] == tok.bpe(" tokenization") == tok.tokenize(" tokenization")
    ranks = [tok.ranks[pair] for _, pair in steps[1:]]
    assert ranks == sorted(ranks)  # merges happen in rank order
    assert all(len(after) < len(before) for (after, _), (before, _) in zip(steps[1:], steps[:-1], strict=True))


def test_pretokenize_pattern(tok):
    assert tok.pattern == QWEN_PATTERN
    expected = ["Hello", " world", "'s", " ", "1", "2", "3", " ", " x", "\n\n"]
    assert tok.pretokenize("Hello world's 123  x\n\n") == expected
    pre = tokenizers.pre_tokenizers.Split(tokenizers.Regex(QWEN_PATTERN), behavior="isolated")
    for text in CORPUS:
        text = unicodedata.normalize("NFC", text)
        assert tok.pretokenize(text) == [p for p, _ in pre.pre_tokenize_str(text)]


def test_split_added_tokens(tok):
    pieces = tok.split_added("a<|im_start|>b<think>c</think><|im_start|")
    assert pieces == [("a", False), ("<|im_start|>", True), ("b", False), ("<think>", True), ("c", False),
                      ("</think>", True), ("<|im_start|", False)]


# ----------------------------------------------------------------------------- loading


def test_vocab_and_merges_directory_matches(tmp_path, tok, ref):
    src = qwen3_files_dir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(src / name, tmp_path / name)
    tok2 = Tokenizer.from_pretrained(tmp_path)
    assert len(tok2) == len(tok) and tok2.chat_template == tok.chat_template
    for text in CORPUS:
        assert tok2.encode(text) == ref.encode(text).ids


def test_loading_twice_gives_independent_tokenizers_and_rereads_edited_files(tmp_path):
    src = qwen3_files_dir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, tmp_path / name)
    a, b = Tokenizer.from_pretrained(tmp_path), Tokenizer.from_pretrained(tmp_path)
    assert a is not b and a.vocab is not b.vocab and a.encode("hello world") == b.encode("hello world")
    a.chat_template = "changed"
    assert b.chat_template != "changed"
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ messages[0].content }}!"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert Tokenizer.from_pretrained(tmp_path).apply_chat_template([{"role": "user", "content": "hi"}]) == "hi!"


def test_token_bytes_falls_back_to_utf8_like_the_reference():
    # all characters in the byte table: one byte each; any character outside it: the token's UTF-8 text
    assert token_bytes("ĠðŁ") == b" \xf0\x9f"
    assert token_bytes("é x") == "é x".encode()
    assert token_bytes("<|im_end|>") == b"<|im_end|>"


def test_chat_template_jinja_file_wins(tmp_path):
    src = qwen3_files_dir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, tmp_path / name)
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}[{{ m.content }}]{% endfor %}")
    tok2 = Tokenizer.from_pretrained(tmp_path)
    assert tok2.apply_chat_template([{"role": "user", "content": "hi"}]) == "[hi]"


# ----------------------------------------------------------------------------- bad input


def test_encode_rejects_non_strings(tok):
    for bad in (None, 123, b"bytes", ["a"]):
        with pytest.raises(TypeError, match="encode expects a str"):
            tok.encode(bad)


def test_decode_rejects_unknown_ids(tok):
    for bad in (151669, 10**9, -1):
        with pytest.raises(ValueError, match=f"token id {bad} is not in the vocabulary"):
            tok.decode([1, bad])
    with pytest.raises(TypeError, match="token ids must be integers"):
        tok.decode([1, "2"])
    with pytest.raises(TypeError, match="token ids must be integers"):
        tok.decode([1.0])
    with pytest.raises(ValueError, match="token id 151669"):
        tok.id_to_token(151669)


def test_decode_refuses_bytes_and_text(tok):
    # iterating bytes gives ints: b"hi" would decode as the tokens 104 and 105, not as "hi"
    for bad in (b"hi", bytearray(b"hi"), memoryview(b"hi"), "hi"):
        with pytest.raises(TypeError, match=f"decode expects token ids .*got {type(bad).__name__}"):
            tok.decode(bad)
    for bad in (None, 1.5, True, {1: 2}.items()):
        with pytest.raises(TypeError):
            tok.decode(bad)
    assert tok.decode(list(b"hi")) == tok.decode([104, 105]) != "hi"  # a list of ints is ids, as asked


def test_decode_accepts_tensors(tok):
    ids = tok.encode("Hello, 世界")
    assert tok.decode(torch.tensor(ids)) == "Hello, 世界"
    assert tok.decode([torch.tensor(i) for i in ids]) == "Hello, 世界"


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer directory not found"):
        Tokenizer.from_pretrained(tmp_path / "does" / "not" / "exist")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"malformed tokenizer file .*tokenizer\.json"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}))
    with pytest.raises(ValueError, match=r"tokenizer\.json.*BPE"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}))
    with pytest.raises(FileNotFoundError, match=r"merges\.txt"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(ValueError, match=r"merges\.txt, line 2"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "merges.txt").write_text("a a\n")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "merges.txt").write_text("")
    (tmp_path / "tokenizer_config.json").write_text("[1, 2")
    with pytest.raises(ValueError, match=r"tokenizer_config\.json"):
        Tokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.update(normalizer=["NFC"]), "normalizer must be NFC or null"),
    (lambda d: d.update(pre_tokenizer=[1]), "pre_tokenizer must be an object"),
    (lambda d: d["pre_tokenizer"].update(pretokenizers=[{"type": "Split", "behavior": "Isolated", "pattern": "x"}]),
     "needs a {'Regex': pattern}"),
    (lambda d: d["model"].update(vocab=["a"]), "model.vocab must map"),
    (lambda d: d["model"].update(merges=[1]), "model.merges must be a list"),
    (lambda d: d["model"].update(merges=[["a", 1]]), "every merge must be a pair of strings"),
    (lambda d: d.update(added_tokens=[{"content": "<x>"}]), "integer 'id'"),
    (lambda d: d.update(added_tokens=[{"content": 5, "id": 3}]), "string 'content'"),
])
def test_wrongly_typed_tokenizer_json_fields(tmp_path, change, expected):
    data = json.loads((qwen3_files_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    data["model"]["merges"] = data["model"]["merges"][:10]
    change(data)
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"tokenizer\.json: .*" + re.escape(expected)):
        Tokenizer.from_pretrained(tmp_path)


def test_tokenizer_files_that_are_not_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"tokenizer\.json: nested too deeply"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_bytes(b'{"model": "\xff"}')
    with pytest.raises(ValueError, match=r"tokenizer\.json: not UTF-8"):
        Tokenizer.from_pretrained(tmp_path)


def test_repo_id_offline_is_a_clear_error(monkeypatch):
    # offline for sure, whenever huggingface_hub was imported: nothing may reach the network in tests
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="could not be downloaded"):
        Tokenizer.from_pretrained("qwen3next-book/definitely-not-a-real-repo")


# ----------------------------------------------------------------------------- chat templates


def _generation_prompt_block(template: str) -> str:
    start = template.index("{%- if add_generation_prompt %}")
    return template[start:]


def thinking_template(template: str) -> str:
    """The Thinking style: the public Qwen3 *-Thinking templates open the assistant turn with
    '<think>\\n' unconditionally. Built from the shipped (hybrid) template by replacing its final
    generation-prompt block; everything else (how past <think> blocks are shown) is unchanged."""
    block = "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n<think>\\n' }}\n{%- endif %}\n"
    return template[: template.index("{%- if add_generation_prompt %}")] + block


def instruct_template(template: str) -> str:
    """The Instruct style: the generation prompt ends at '<|im_start|>assistant\\n', no thinking switch."""
    block = "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
    return template[: template.index("{%- if add_generation_prompt %}")] + block


CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "2+2?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is Qwen3-Next?"},
        {"role": "assistant", "content": "<think>\nThe user asks about a model.\n</think>\n\nA hybrid MoE model."},
        {"role": "user", "content": "How many layers?"},
    ],
    [
        {"role": "user", "content": "Count to 3."},
        {"role": "assistant", "content": "<think>\ncounting\n</think>\n\n1, 2, 3"},
        {"role": "user", "content": "Now backwards."},
        {"role": "assistant", "content": "<think>\n\nreverse\n\n</think>\n\n\n3, 2, 1"},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "greet back"},
        {"role": "user", "content": "中文也可以吗？"},
        {"role": "assistant", "content": "可以。", "reasoning_content": None},
    ],
    [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "{\"temp\": 21}"},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "<think>ok</think>It is 21°C and sunny."},
    ],
]

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


@pytest.mark.parametrize("style", ["shipped", "thinking", "instruct"])
def test_chat_template_equal_to_transformers(tok, hf, style):
    template = {"shipped": tok.chat_template, "thinking": thinking_template(tok.chat_template),
                "instruct": instruct_template(tok.chat_template)}[style]
    if style != "shipped":
        assert template != tok.chat_template
    for messages in CONVERSATIONS:
        for gen in (True, False):
            for extra in ({}, {"enable_thinking": False}, {"tools": TOOLS}):
                ours = tok.apply_chat_template(messages, add_generation_prompt=gen, chat_template=template, **extra)
                theirs = hf.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False,
                                                chat_template=template, **extra)
                assert ours == theirs, (style, messages, gen, extra)
                # and the ids of the rendered chat
                assert tok.encode(ours) == hf.apply_chat_template(
                    messages, add_generation_prompt=gen, tokenize=True, return_dict=False,
                    chat_template=template, **extra)


def test_chat_template_styles_end_as_spec_says(tok):
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs).endswith("<|im_start|>assistant\n")
    assert tok.apply_chat_template(msgs, chat_template=thinking_template(tok.chat_template)).endswith(
        "<|im_start|>assistant\n<think>\n")
    assert tok.apply_chat_template(msgs, enable_thinking=False).endswith("<think>\n\n</think>\n\n")


def test_chat_template_bad_input(tok):
    with pytest.raises(ValueError, match="non-empty list"):
        tok.apply_chat_template([])
    with pytest.raises(TypeError, match="must be a dict"):
        tok.apply_chat_template(["hello"])
    plain = Tokenizer({"a": 0}, [])
    with pytest.raises(ValueError, match="no chat template"):
        plain.apply_chat_template([{"role": "user", "content": "a"}])


# ----------------------------------------------------------------------------- trainer


def _naive_train(texts, num_merges):
    """Recount every pair from scratch at each step: slow, obviously right."""
    import regex

    words = Counter()
    for t in texts:
        words.update(regex.findall(QWEN_PATTERN, unicodedata.normalize("NFC", t)))
    seqs = {w: list(to_byte_symbols(w)) for w in words}
    merges = []
    for _ in range(num_merges):
        counts = Counter()
        for w, s in seqs.items():
            for p in pairwise(s):
                counts[p] += words[w]
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges


def test_trainer_matches_naive_and_roundtrips():
    rng = random.Random(0)
    words = ["the", "token", "tokens", "tokenizer", "merge", "merges", "byte", "bytes", "中文", "😀", "aaaa"]
    texts = [" ".join(rng.choice(words) for _ in range(30)) + rng.choice([".", "\n", "!!"]) for _ in range(40)]
    trained = train_bpe(texts, 60)
    assert trained.merges == _naive_train(texts, 60)
    # a merged pair's count never exceeds the count of the pair merged before it
    assert trained.counts == sorted(trained.counts, reverse=True)
    assert len(trained.vocab) == 256 + len(trained.merges)
    tok = trained.tokenizer()
    for t in texts:
        ids = tok.encode(t)
        assert tok.decode(ids) == t
        assert len(ids) < len(t.encode("utf-8"))
    with pytest.raises(ValueError, match="num_merges"):
        train_bpe(texts, -1)


def test_trainer_on_shipped_corpus():
    from qwen3next.bpe_trainer import load_corpus

    documents = load_corpus()
    # the book's own text only: every document is a file of this repository (tools/make_corpus.py),
    # and chapter 02 holds out the one it names
    root = Path(__file__).resolve().parents[1]
    assert documents and all((root / name).is_file() for name in documents), sorted(documents)
    assert "src/qwen3next/delta_rule.py" in documents
    corpus = list(documents.values())
    assert sum(len(t.encode("utf-8")) for t in corpus) < 300_000
    trained = train_bpe(corpus, 200)
    assert len(trained.merges) == 200
    assert trained.counts == sorted(trained.counts, reverse=True)
    # the first merge is the most frequent adjacent byte pair of the corpus, counted directly
    pairs = Counter()
    for t in corpus:
        for w in tok_words(t):
            pairs.update(pairwise(w))
    assert trained.counts[0] == max(pairs.values()) == pairs[trained.merges[0]]
    # a tokenizer with these merges compresses its own corpus
    ours = trained.tokenizer()
    n_bytes = sum(len(t.encode("utf-8")) for t in corpus)
    assert sum(len(ours.encode(t)) for t in corpus) < 0.6 * n_bytes


def tok_words(text):
    import regex

    return [to_byte_symbols(w) for w in regex.findall(QWEN_PATTERN, unicodedata.normalize("NFC", text))]
