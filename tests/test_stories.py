"""Tests of qwen3next.stories: a deterministic corpus, exact log-probabilities, and its tokenizer files."""

import math
import random

import pytest

from qwen3next import Tokenizer
from qwen3next.stories import (
    ADDED_TOKENS,
    END_OF_TEXT,
    OPENINGS,
    StoryWriter,
    entropy_floor,
    generate_stories,
    save_tokenizer,
    story_stream,
    train_story_tokenizer,
)


@pytest.fixture(scope="module")
def tok():
    return train_story_tokenizer(num_merges=2000, num_stories=1000)


def test_same_seed_same_stories_other_seed_other_stories():
    a, b, c = generate_stories(20, seed=3), generate_stories(20, seed=3), generate_stories(20, seed=4)
    assert [s.text for s in a] == [s.text for s in b] and [s.log_prob for s in a] == [s.log_prob for s in b]
    assert [s.text for s in a] != [s.text for s in c]
    stream = story_stream(3)
    assert [next(stream).text for _ in range(20)] == [s.text for s in a]


def test_choose_records_the_probability_of_what_it_drew():
    w = StoryWriter(random.Random(0))
    picks = [w.choose("abc", [1, 2, 1]) for _ in range(400)]
    expected = sum(math.log({"a": 0.25, "b": 0.5, "c": 0.25}[p]) for p in picks)
    assert math.isclose(w.log_prob, expected) and w.choices == 400
    assert 150 < picks.count("b") < 250  # drawn with the stated weights
    assert w.choose(["only"]) == "only" and w.choices == 400  # one option is no choice
    with pytest.raises(ValueError, match="positive weight"):
        w.choose("ab", [1, 0])


def test_different_choices_write_different_text():
    """The floor is exact only if the grammar is unambiguous: a text determines its choices, hence its
    probability. Equal texts must therefore come with equal log-probabilities."""
    seen = {}
    for s in generate_stories(3000, seed=11):
        assert seen.setdefault(s.text, s.log_prob) == s.log_prob


def test_log_prob_of_a_whole_story_is_its_choices():
    s = generate_stories(1, seed=5)[0]
    assert s.log_prob < 0 and s.choices > 10
    assert s.text.endswith("The end.") and s.text.startswith(OPENINGS)


def test_names_are_introduced_then_used_again():
    for s in generate_stories(50, seed=6):
        intro, middle, end = s.text.split("\n\n")
        for c in s.characters:
            assert f"named {c.name}." in intro and f"{c.name} loved to {c.activity}." in intro
        assert any(c.name in middle + end for c in s.characters[1:])


def test_floor_per_token_and_per_character(tok):
    stories = generate_stories(200, seed=7)
    f = entropy_floor(stories, tok)
    assert math.isclose(f.nats, -sum(s.log_prob for s in stories))
    assert f.tokens == sum(len(tok.encode(s.text)) + 1 for s in stories)
    assert math.isclose(f.nats_per_token * f.tokens, f.nats_per_char * f.characters)
    assert 0.1 < f.nats_per_token < 2.0 and f.bits_per_char < 1.0


def test_tokenizer_round_trips_and_has_the_added_tokens(tok):
    ids = [tok.token_to_id(t) for t in ADDED_TOKENS]
    assert ids == list(range(len(tok) - 3, len(tok)))
    text = generate_stories(1, seed=8)[0].text
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode(text + END_OF_TEXT)[-1] == tok.token_to_id(END_OF_TEXT)
    assert len(tok.encode(text)) < len(text.split()) * 1.6  # whole words are single tokens


def test_saved_tokenizer_loads_identically_here_and_in_transformers(tok, tmp_path):
    from transformers import AutoTokenizer

    save_tokenizer(tok, tmp_path)
    ours = Tokenizer.from_pretrained(tmp_path)
    ref = AutoTokenizer.from_pretrained(tmp_path)
    texts = [s.text for s in generate_stories(30, seed=9)] + [f"Hi{END_OF_TEXT}<|im_start|>user\nÄ ünïcode 42!"]
    for text in texts:
        assert ours.encode(text) == tok.encode(text) == ref.encode(text)
        assert ours.decode(ours.encode(text)) == ref.decode(ref.encode(text))
    assert len(ours) == len(ref) == len(tok)
    assert ref.eos_token == END_OF_TEXT and ours.eos_token_id == tok.token_to_id(END_OF_TEXT)
