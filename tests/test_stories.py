"""Tests for the embedded story corpus generator."""

from __future__ import annotations

import random
import re
import statistics

import pytest

from vslm.data.stories import (
    ALL_NAMES,
    GENERATOR_VERSION,
    generate_story,
    iter_stories,
    stories_text,
)


def test_version_is_int() -> None:
    assert isinstance(GENERATOR_VERSION, int) and GENERATOR_VERSION >= 1


def test_same_seed_same_output_different_seed_differs() -> None:
    assert stories_text(123, 50_000) == stories_text(123, 50_000)
    assert stories_text(123, 50_000) != stories_text(124, 50_000)
    assert generate_story(random.Random(5)) == generate_story(random.Random(5))


def test_n_bytes_limit() -> None:
    limit = 20_000
    stories = list(iter_stories(7, n_bytes=limit))
    sizes = [len(s.encode("utf-8")) for s in stories]
    assert sum(sizes) >= limit
    # Only the last story may cross the limit: without it we are still under.
    assert sum(sizes[:-1]) < limit
    assert list(iter_stories(7, n_bytes=0)) == []
    # A prefix of the stream is the same stream: larger limits extend, never change.
    assert list(iter_stories(7, n_bytes=2 * limit))[: len(stories)] == stories


def test_n_stories_count() -> None:
    assert len(list(iter_stories(1, n_stories=17))) == 17
    assert list(iter_stories(1, n_stories=5)) == list(iter_stories(1, n_stories=17))[:5]


@pytest.mark.parametrize("kwargs", [{}, {"n_bytes": 100, "n_stories": 3}])
def test_exactly_one_limit_required(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        iter_stories(0, **kwargs)


def test_stories_text_uses_separator() -> None:
    stories = list(iter_stories(3, n_bytes=5_000))
    assert stories_text(3, 5_000, separator="<|sep|>") == "<|sep|>".join(stories)


def test_ascii_and_no_blank_lines_inside_story() -> None:
    for story in iter_stories(11, n_stories=300):
        assert story.isascii()
        assert "\n\n" not in story
        assert story == story.strip()
        assert not re.search(r"[^A-Za-z.,!?\"'\n -]", story)
        assert "{" not in story and "}" not in story  # no unfilled template slots


def test_story_lengths_vary_in_range() -> None:
    lengths = [len(s.split()) for s in iter_stories(2, n_stories=300)]
    assert min(lengths) >= 60 and max(lengths) <= 500
    assert max(lengths) - min(lengths) > 150


def test_vocabulary_size() -> None:
    text = stories_text(0, 1_000_000)
    words = set(re.findall(r"[a-z]+", text.lower()))
    assert 150 <= len(words) <= 1000


def test_names_recur_within_a_story() -> None:
    name_re = re.compile(r"\b(" + "|".join(ALL_NAMES) + r")\b")
    top_counts = []
    for story in iter_stories(4, n_stories=100):
        counts: dict[str, int] = {}
        for name in name_re.findall(story):
            counts[name] = counts.get(name, 0) + 1
        top_counts.append(max(counts.values()))
    # The measured mean is ~16; 3 is the floor that matters for induction.
    assert statistics.mean(top_counts) >= 8
    assert min(top_counts) >= 3


def test_dialogue_present() -> None:
    stories = list(iter_stories(9, n_stories=200))
    with_quotes = sum('"' in s for s in stories)
    assert with_quotes >= 0.5 * len(stories)
    # Quotes come in pairs.
    assert all(s.count('"') % 2 == 0 for s in stories)
