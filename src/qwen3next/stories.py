"""A generated story corpus whose entropy is known exactly, and the tokenizer trained on it.

The book's small model (chapter 10) is trained on children's stories written by a small probabilistic
grammar. Every machine can regenerate the corpus offline from a seed, and, because the generator draws
each choice with a known probability, the exact probability of every story it writes is known too:

* Each story is a sequence of random choices (an opening, a character's kind, name and favourite
  activity, the next event, who does it, ...). :class:`StoryWriter` draws each one with ``choose`` and
  adds ``log p`` of the option drawn to the story's ``log_prob``.
* The grammar is *unambiguous*: different choices always write different text (names are drawn without
  repetition from disjoint lists; a pronoun only ever means "the subject of the sentence before";
  every template starts differently). So ``-log_prob`` is the story's exact information content, and
  no model can do better on average: the cross-entropy of any model on these stories is at least the mean of
  ``-log_prob`` (Gibbs' inequality), whatever its tokenizer.
* Per token that floor depends on the tokenizer: ``sum(-log_prob) / sum(tokens)`` over a sample of stories
  (:func:`entropy_floor`). The same sum per character is tokenizer-free.

Recall matters: characters are introduced with a name and a favourite activity in the first sentences, and
later sentences name them again, give back the object they found ("the shiny key"), and say what they
wanted to do. Those tokens are determined by the story so far, but only for a model that remembers it.

Also here: :func:`train_story_tokenizer` (chapter 02's BPE trainer on this corpus, plus the added tokens
the model needs) and :func:`save_tokenizer`, which writes a ``tokenizer.json`` that both
``transformers.AutoTokenizer`` and :class:`qwen3next.Tokenizer` load.

Leaves out: any natural-language data (nothing is downloaded) and grammar rules that could write one text
two ways (they would make the floor an overestimate).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .pretokenizer import QWEN_PATTERN

END_OF_TEXT = "<|endoftext|>"
ADDED_TOKENS = (END_OF_TEXT, "<|im_start|>", "<|im_end|>")  # ids right after the BPE vocabulary

GIRL_NAMES = ("Lily", "Mia", "Emma", "Zoe", "Ella", "Anna", "Lucy", "Sara", "Nora", "Ruby",
              "Ivy", "Maya", "Lena", "Rosa", "Tina", "Hana", "Alice", "Clara", "Daisy", "Grace")
BOY_NAMES = ("Tom", "Ben", "Sam", "Leo", "Max", "Jack", "Finn", "Noah", "Owen", "Luke",
             "Milo", "Theo", "Hugo", "Eli", "Ravi", "Omar", "Oscar", "Felix", "Jonas", "Peter")
KINDS = ("girl", "boy", "cat", "dog", "rabbit", "fox", "bear", "bird", "mouse", "duck")
ADJECTIVES = ("little", "kind", "brave", "shy", "happy", "curious", "clever", "tiny")
OPENINGS = ("Once upon a time, there was", "One sunny morning, there was", "Long ago, there was")
HOMES = ("in a small house near the woods", "by a big lake", "on a quiet farm", "in a busy town",
         "under an old tree", "next to the sea")
ACTIVITIES = ("sing", "run", "read books", "dance", "climb trees", "swim", "draw pictures", "jump")
PLACES = ("park", "river", "forest", "beach", "market", "hill", "garden", "lake", "school", "zoo")
COLORS = ("red", "blue", "green", "yellow", "shiny", "soft", "small", "big")
OBJECTS = ("ball", "box", "kite", "key", "hat", "shell", "stone", "book", "cup", "flower")
FEELINGS = ("happy", "sad", "sleepy", "excited", "scared", "proud")
SAYINGS = ("Look at this!", "I am so happy!", "Let us play!", "This is fun!", "Can you help me?",
           "What a nice day!")
ENDINGS = ("were very happy", "went home together", "had a great day", "became best friends")
EVENT_WEIGHTS = {"go": 3, "find": 3, "give": 3, "play": 2, "want": 2, "help": 2, "say": 2, "feel": 2, "rain": 1}
NUM_EVENTS = (4, 5, 6, 7, 8)


@dataclass
class Character:
    name: str
    kind: str
    female: bool
    activity: str

    @property
    def pronoun(self) -> str:
        return "she" if self.female else "he"


@dataclass
class Story:
    """One generated story: its text and the natural log of the probability the generator wrote it with."""

    text: str
    log_prob: float
    characters: list[Character] = field(default_factory=list)
    choices: int = 0  # how many random choices were drawn (each contributes -log p to the information)


class StoryWriter:
    """Draws the choices of one story and keeps the running log-probability of what it wrote."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.log_prob = 0.0
        self.choices = 0

    def choose(self, options: Sequence, weights: Sequence[float] | None = None):
        """One option, drawn with probability ``weight / sum(weights)`` (uniform if no weights); its
        ``log p`` is added to the story. A single option is no choice at all and costs nothing."""
        if not options:
            raise ValueError("choose: no options to choose from")
        weights = [1.0] * len(options) if weights is None else [float(w) for w in weights]
        if len(weights) != len(options) or min(weights) <= 0:
            raise ValueError(f"choose: expected one positive weight per option, got "
                             f"{weights}")
        total = sum(weights)
        u = self.rng.random() * total  # random(): the same on every platform
        i = 0
        while i < len(options) - 1 and u >= weights[i]:
            u -= weights[i]
            i += 1
        if len(options) > 1:
            self.log_prob += math.log(weights[i] / total)
            self.choices += 1
        return options[i]


def _new_character(w: StoryWriter, used: set[str]) -> Character:
    kind = w.choose(KINDS)
    female = kind == "girl" or (kind != "boy" and w.choose((True, False)))
    name = w.choose([n for n in (GIRL_NAMES if female else BOY_NAMES) if n not in used])
    used.add(name)
    return Character(name, kind, female, activity="")


def _subject(w: StoryWriter, who: Character, previous: Character | None) -> str:
    """A sentence's subject: the name, or (only for the previous sentence's subject) maybe a pronoun."""
    if who is previous and w.choose((True, False)):
        return who.pronoun.capitalize()
    return who.name


def _event(w: StoryWriter, cast: list[Character], state: dict) -> str:
    """One sentence of the middle of the story; ``state`` holds where they are, what they found and who
    the last subject was."""
    applicable = {"go", "want", "help", "say", "feel"}
    if state["place"] is not None:
        applicable |= {"find", "rain"}
    if state["objects"]:
        applicable |= {"give", "play"}
    kinds = [k for k in EVENT_WEIGHTS if k in applicable]
    kind = w.choose(kinds, [EVENT_WEIGHTS[k] for k in kinds])
    previous, state["previous"] = state["previous"], None
    if kind == "go":
        a, b = w.choose([(a, b) for a in cast for b in cast if a is not b])
        state["place"] = w.choose([p for p in PLACES if p != state["place"]])
        state["previous"] = a
        return f"One day, {a.name} and {b.name} went to the {state['place']}."
    if kind == "find":
        a = w.choose(cast)
        thing = f"{w.choose(COLORS)} {w.choose(OBJECTS)}"
        if thing not in state["objects"]:
            state["objects"].append(thing)
        state["previous"] = a
        return f"At the {state['place']}, {a.name} found a {thing}."
    if kind == "give":
        a, b = w.choose([(a, b) for a in cast for b in cast if a is not b])
        thing = w.choose(state["objects"])
        text = f"{_subject(w, a, previous)} gave the {thing} to {b.name}."
        state["previous"] = a
        return text
    if kind == "play":
        a, b = w.choose([(a, b) for a in cast for b in cast if a is not b])
        state["previous"] = a
        return f"{a.name} and {b.name} played with the {w.choose(state['objects'])} all day."
    if kind == "help":
        a, b = w.choose([(a, b) for a in cast for b in cast if a is not b])
        text = f"{_subject(w, a, previous)} helped {b.name} {b.activity}."
        state["previous"] = a
        return text
    if kind == "want":
        a = w.choose(cast)
        b = w.choose([b for b in cast if b is not a])
        text = f"{_subject(w, a, previous)} wanted to {a.activity}, so {a.pronoun} asked {b.name} to come too."
        state["previous"] = a
        return text
    if kind == "say":
        a = w.choose(cast)
        state["previous"] = a
        return f'"{w.choose(SAYINGS)}" said {a.name}.'
    if kind == "feel":
        a = w.choose(cast)
        text = f"{_subject(w, a, previous)} felt {w.choose(FEELINGS)}."
        state["previous"] = a
        return text
    state["place"] = None  # rain: everyone goes home
    return "Then it started to rain, and everyone ran home."


def generate_story(rng: random.Random) -> Story:
    """Write one story with the choices drawn from ``rng``; returns its text and exact log-probability."""
    w = StoryWriter(rng)
    used: set[str] = set()
    hero = _new_character(w, used)
    intro = [f"{w.choose(OPENINGS)} a {w.choose(ADJECTIVES)} {hero.kind} named {hero.name}.",
             f"{hero.name} lived {w.choose(HOMES)}."]
    cast = [hero]
    for i in range(w.choose((1, 2), (3, 2))):
        friend = _new_character(w, used)
        intro.append(f"{hero.name} had {'a' if i == 0 else 'another'} friend, a {w.choose(ADJECTIVES)} "
                     f"{friend.kind} named {friend.name}.")
        cast.append(friend)
    for c in cast:
        c.activity = w.choose(ACTIVITIES)
        intro.append(f"{c.name} loved to {c.activity}.")
    state = {"place": None, "objects": [], "previous": None}
    middle = [_event(w, cast, state) for _ in range(w.choose(NUM_EVENTS))]
    friend = w.choose(cast[1:])
    ending = f"In the end, {hero.name} and {friend.name} {w.choose(ENDINGS)}. The end."
    text = " ".join(intro) + "\n\n" + " ".join(middle) + "\n\n" + ending
    return Story(text, w.log_prob, cast, w.choices)


def generate_stories(n: int, seed: int = 0) -> list[Story]:
    """``n`` stories from ``random.Random(seed)``: the same list on every machine."""
    rng = random.Random(seed)
    return [generate_story(rng) for _ in range(n)]


def story_stream(seed: int = 0) -> Iterator[Story]:
    """Stories without end from ``random.Random(seed)`` (training never sees one twice)."""
    rng = random.Random(seed)
    while True:
        yield generate_story(rng)


# ---------------------------------------------------------------------------------------- the floor
@dataclass
class EntropyFloor:
    """The information in a sample of stories, per story, per character and per token of a tokenizer."""

    nats: float  # sum of -log_prob over the stories
    stories: int
    characters: int  # characters of text (the end-of-text marker not counted)
    tokens: int  # tokens of the text plus one end-of-text token per story

    @property
    def nats_per_story(self) -> float:
        return self.nats / self.stories

    @property
    def nats_per_char(self) -> float:
        return self.nats / self.characters

    @property
    def nats_per_token(self) -> float:
        return self.nats / self.tokens

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / math.log(2)


def entropy_floor(stories: Sequence[Story], tokenizer=None) -> EntropyFloor:
    """The exact information content of ``stories``, per token of ``tokenizer`` (and per character).

    Each story is scored as the model sees it: its tokens plus the end-of-text token that follows it
    (which costs nothing: "The end." says the story is over). A model's mean loss over the same tokens
    can only be above ``nats_per_token`` on average.
    """
    nats = -sum(s.log_prob for s in stories)
    chars = sum(len(s.text) for s in stories)
    tokens = sum(len(tokenizer.encode(s.text)) + 1 for s in stories) if tokenizer is not None else 0
    return EntropyFloor(nats, len(stories), chars, tokens)


# -------------------------------------------------------------------------------------- tokenizer
def train_story_tokenizer(num_merges: int = 700, num_stories: int = 4000, seed: int = 1):
    """Chapter 02's BPE trainer on ``num_stories`` stories, plus the added tokens of :data:`ADDED_TOKENS`.

    The stories come from a seed of their own, apart from the training and validation streams.
    """
    from .bpe_trainer import train_bpe
    from .tokenizer import AddedToken, Tokenizer

    trained = train_bpe([s.text for s in generate_stories(num_stories, seed)], num_merges)
    added = [AddedToken(t, len(trained.vocab) + i, special=True) for i, t in enumerate(ADDED_TOKENS)]
    return Tokenizer(trained.vocab, trained.merges, added,
                     special_tokens_map={"eos_token": END_OF_TEXT, "pad_token": END_OF_TEXT})


def tokenizer_json(tok) -> dict:
    """The ``tokenizer.json`` of a byte-level BPE :class:`~qwen3next.Tokenizer`, in the layout of Qwen3's."""
    level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": t.id, "content": t.content, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": t.normalized, "special": t.special} for t in tok.added_tokens],
        "normalizer": {"type": "NFC"} if tok.normalize else None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False}, level]},
        "post_processor": level,
        "decoder": level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": tok.vocab, "merges": [[a, b] for (a, b), _ in sorted(tok.ranks.items(),
                                                                               key=lambda kv: kv[1])]},
    }


def save_tokenizer(tok, directory: str | Path, model_max_length: int = 4096) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (a ``Qwen2Tokenizer``, like Qwen3's)."""
    if tok.pattern != QWEN_PATTERN:
        raise ValueError("save_tokenizer: only the Qwen split pattern is written (transformers' Qwen2Tokenizer)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer_json(tok), ensure_ascii=False) + "\n")
    special = tok.special_tokens_map
    config = {
        "tokenizer_class": "Qwen2Tokenizer", "add_bos_token": False, "add_prefix_space": False,
        "bos_token": None, "eos_token": special.get("eos_token"), "pad_token": special.get("pad_token"),
        "unk_token": None, "errors": "replace", "clean_up_tokenization_spaces": False,
        "split_special_tokens": False, "model_max_length": model_max_length,
        "added_tokens_decoder": {str(t.id): {"content": t.content, "lstrip": False, "normalized": t.normalized,
                                             "rstrip": False, "single_word": False, "special": t.special}
                                 for t in tok.added_tokens},
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
