"""Tests for the embedded corpora in trainer.data.builtin."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from trainer.data.builtin import (
    BUILTIN,
    Split,
    search_queries,
    sentiment_reviews,
    translation_pairs,
)
from trainer.data.builtin import queries as q
from trainer.data.builtin import sentiment as s
from trainer.data.builtin import translation as t

ASCII_TEXT = re.compile(r"[a-z0-9]+( [a-z0-9]+)*")
FRENCH_TEXT = re.compile(r"[a-zàâçéèêëîïôûùüÿ]+( [a-zàâçéèêëîïôûùüÿ]+)*")
SMALL = {"num_train": 400, "num_valid": 60}


def _texts(task: str, item: Any) -> list[tuple[str, re.Pattern[str]]]:
    """The text fields of one corpus item, with the pattern each must match."""
    if task == "translation":
        return [(item[0], ASCII_TEXT), (item[1], FRENCH_TEXT)]
    if task == "sentiment":
        return [(item[0], ASCII_TEXT)]
    return [(item, ASCII_TEXT)]


def _key(task: str, item: Any) -> str:
    """The part of an item that must not occur in both splits."""
    return str(item if task == "autocomplete" else item[0])


@pytest.fixture(scope="module")
def corpora() -> dict[str, Split[Any]]:
    return {name: generate() for name, generate in BUILTIN.items()}


def test_registry_maps_tasks_to_generators() -> None:
    expected = {
        "translation": translation_pairs,
        "sentiment": sentiment_reviews,
        "autocomplete": search_queries,
    }
    assert expected == BUILTIN


@pytest.mark.parametrize("task", sorted(BUILTIN))
def test_same_seed_same_corpus_other_seed_differs(task: str) -> None:
    generate: Callable[..., Split[Any]] = BUILTIN[task]
    first = generate(seed=3, **SMALL)
    assert generate(seed=3, **SMALL) == first
    assert generate(seed=4, **SMALL) != first


def _digest() -> str:
    corpora = {name: generate(seed=1, **SMALL) for name, generate in sorted(BUILTIN.items())}
    payload = {name: [split.train, split.valid] for name, split in corpora.items()}
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def test_same_corpus_in_other_processes() -> None:
    """Hash randomization (PYTHONHASHSEED) must not change the corpora."""
    code = "from tests.trainer.test_builtin_corpora import _digest; print(_digest())"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": root}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        digests.add(out.stdout.strip())
    assert digests == {_digest()}


@pytest.mark.parametrize(
    ("task", "num_train", "num_valid"),
    [
        ("translation", 20000, 500),
        ("sentiment", 12000, 500),
        ("autocomplete", 30000, 1000),
    ],
)
def test_default_sizes(
    corpora: dict[str, Split[Any]], task: str, num_train: int, num_valid: int
) -> None:
    assert (len(corpora[task].train), len(corpora[task].valid)) == (num_train, num_valid)


@pytest.mark.parametrize("task", sorted(BUILTIN))
@pytest.mark.parametrize(("num_train", "num_valid"), [(50, 10), (1000, 100)])
def test_requested_sizes(task: str, num_train: int, num_valid: int) -> None:
    split = BUILTIN[task](seed=0, num_train=num_train, num_valid=num_valid)
    assert (len(split.train), len(split.valid)) == (num_train, num_valid)


@pytest.mark.parametrize("task", sorted(BUILTIN))
def test_valid_never_overlaps_train(corpora: dict[str, Split[Any]], task: str) -> None:
    train = {_key(task, item) for item in corpora[task].train}
    valid = {_key(task, item) for item in corpora[task].valid}
    assert train & valid == set()


@pytest.mark.parametrize("task", sorted(BUILTIN))
def test_text_is_lowercase_words_without_punctuation(
    corpora: dict[str, Split[Any]], task: str
) -> None:
    for item in corpora[task].train + corpora[task].valid:
        for text, pattern in _texts(task, item):
            assert pattern.fullmatch(text), (task, text)


# --- translation -----------------------------------------------------------------------------


def test_translation_vocabulary_is_large_and_unambiguous() -> None:
    assert len(t.english_words()) >= 300
    assert (len(t.NOUNS), len(t.ADJECTIVES), len(t.VERBS)) >= (120, 70, 60)
    nouns = {f for n in t.NOUNS.values() for f in (n.en, n.en_plural)}
    verbs = {f for v in t.VERBS.values() for f in (v.en, v.en_3sg)}
    groups = [nouns, verbs, set(t.ADJECTIVES), set(t.DETERMINERS), {"is", "are", "very"}]
    assert sum(map(len, groups)) == len(set().union(*groups)), "a word has two roles"


def test_french_nouns_never_need_elision() -> None:
    for noun in t.NOUNS.values():
        assert noun.fr[0] not in "aeiouyhâéèêîô", noun


@pytest.mark.parametrize(
    ("english", "french"),
    [
        ("the small black dog sees a red car", "le petit chien noir voit une voiture rouge"),
        ("the old women eat the green apples", "les vieilles femmes mangent les pommes vertes"),
        ("the red car is fast", "la voiture rouge est rapide"),
        ("the red cars are fast", "les voitures rouges sont rapides"),
        ("the cat is happy", "le chat est content"),
        ("the cats are very happy", "les chats sont très contents"),
        ("the dog sees the cat", "le chien voit le chat"),
        ("the dogs see the cat", "les chiens voient le chat"),
        ("an old dog eats an apple", "un vieux chien mange une pomme"),
        (
            "these beautiful girls have a new white hat",
            "ces belles filles ont un nouveau chapeau blanc",
        ),
        ("my mother is very proud", "ma mère est très fière"),
        ("the babies sleep", "les bébés dorment"),
        ("her brother builds the big castles", "son frère construit les grands châteaux"),
        ("the women are old", "les femmes sont vieilles"),
    ],
)
def test_translate_follows_the_agreement_rules(english: str, french: str) -> None:
    assert t.translate(english) == french


@pytest.mark.parametrize(
    "english",
    [
        "the dog see the cat",  # verb agreement
        "the dogs is happy",  # copula agreement
        "a dogs sleep",  # "a" with a plural
        "these dog sleeps",
        "a old dog sleeps",  # must be "an"
        "an dog sleeps",
        "the dog",
        "the dog sleeps the cat",
        "the dog sees",
        "the dog is very",
        "our horses drink",  # unknown verb
    ],
)
def test_translate_rejects_sentences_outside_the_grammar(english: str) -> None:
    with pytest.raises(ValueError):
        t.translate(english)


def test_translation_corpus_matches_translate_and_lengths(corpora: dict[str, Split[Any]]) -> None:
    split = corpora["translation"]
    lengths = collections.Counter(len(en.split()) for en, _ in split.train)
    assert min(lengths) == 3 and max(lengths) <= 9
    for english, french in split.train + split.valid:
        assert t.translate(english) == french


NOUN_FORMS = {
    form: (noun, form == noun.en_plural)
    for noun in t.NOUNS.values()
    for form in (noun.en, noun.en_plural)
}
VERB_FORMS = {form: verb for verb in t.VERBS.values() for form in (verb.en, verb.en_3sg)}


def test_translation_corpus_agreement(corpora: dict[str, Split[Any]]) -> None:
    """E.g. "the red cars" -> "les voitures rouges", "the dogs see" -> "les chiens voient"."""
    checked: collections.Counter[tuple[str, bool]] = collections.Counter()
    for english, french in corpora["translation"].train:
        words = [*english.split(), ""]
        for i, word in enumerate(words):
            if word != "the":
                continue
            adjective = t.ADJECTIVES.get(words[i + 1])
            end = i + 2 if adjective else i + 1
            if words[end] not in NOUN_FORMS:  # e.g. two adjectives
                continue
            noun, plural = NOUN_FORMS[words[end]]
            article = "les" if plural else ("la" if noun.feminine else "le")
            fr_noun = noun.fr_plural if plural else noun.fr
            agreed = adjective.agree(feminine=noun.feminine, plural=plural) if adjective else ""
            if adjective is None and i == 0 and words[end + 1] in VERB_FORMS:
                verb = VERB_FORMS[words[end + 1]]
                fr_verb = verb.fr_plural if plural else verb.fr
                kind, expected = "subject-verb", f"{article} {fr_noun} {fr_verb}"
            elif adjective is None:
                kind, expected = "bare", f"{article} {fr_noun}"
            elif adjective.before:
                kind, expected = "before", f"{article} {agreed} {fr_noun}"
            else:
                kind, expected = "after", f"{article} {fr_noun} {agreed}"
            assert f" {expected} " in f" {french} ", (english, french, expected)
            checked[kind, plural] += 1
    kinds = ("subject-verb", "bare", "before", "after")
    assert all(checked[kind, plural] >= 50 for kind in kinds for plural in (False, True)), checked


# --- sentiment -------------------------------------------------------------------------------


@pytest.mark.parametrize("part", ["train", "valid"])
def test_sentiment_labels_are_balanced(corpora: dict[str, Split[Any]], part: str) -> None:
    items = getattr(corpora["sentiment"], part)
    assert 0.45 <= sum(label for _, label in items) / len(items) <= 0.55


def test_sentiment_labels_follow_the_rules(corpora: dict[str, Split[Any]]) -> None:
    split = corpora["sentiment"]
    for text, label in split.train + split.valid:
        assert s.label(text) == label, text


@pytest.mark.parametrize(
    ("text", "label"),
    [
        *s.PROBES,
        ("really terrible", 0),
        ("not awful at all", 1),
        ("i did not like the plot", 0),
        ("i loved the acting but the ending was not good", 0),
        ("the staff was rude and the price was overpriced", 0),
        ("extremely fun movie", 1),
    ],
)
def test_label_rules(text: str, label: int) -> None:
    assert s.label(text) == label


def test_probes_are_in_train_only_with_their_labels(corpora: dict[str, Split[Any]]) -> None:
    split = corpora["sentiment"]
    train = collections.defaultdict(set)
    for text, label in split.train:
        train[text].add(label)
    valid = {text for text, _ in split.valid}
    assert len(s.PROBES) >= 10
    for text, label in s.PROBES:
        assert train[text] == {label}, text
        assert text not in valid
    assert {"not good", "not bad"} <= set(train)


def test_short_reviews_are_common(corpora: dict[str, Split[Any]]) -> None:
    train = corpora["sentiment"].train
    assert sum(len(text.split()) <= 3 for text, _ in train) / len(train) >= 0.10


def test_sentiment_word_lists() -> None:
    assert len(s.POSITIVE) >= 28 and len(s.NEGATIVE) >= 28
    assert set(s.POSITIVE) & set(s.NEGATIVE) == set()
    assert len(s.ASPECTS) >= 12


# --- queries ---------------------------------------------------------------------------------


def test_distinct_queries_are_unique_deterministic_and_valid() -> None:
    ranked = q.distinct_queries(seed=0)
    assert ranked == q.distinct_queries(seed=0) != q.distinct_queries(seed=1)
    assert sorted(ranked) == sorted(q.distinct_queries(seed=1))
    assert len(ranked) == len(set(ranked)) >= 1000
    assert len(q.TEMPLATES) >= 40
    for query in ranked:
        assert 3 <= len(query) <= 40 and set(query) <= set(q.ALPHABET), query


def test_query_splits_use_only_the_alphabet_and_length_bounds(
    corpora: dict[str, Split[Any]],
) -> None:
    split = corpora["autocomplete"]
    for query in split.train + split.valid:
        assert 3 <= len(query) <= 40 and set(query) <= set(q.ALPHABET), query


def test_queries_are_zipf_distributed(corpora: dict[str, Split[Any]]) -> None:
    counts = collections.Counter(corpora["autocomplete"].train).most_common()
    assert counts[0][0] == q.distinct_queries(seed=0)[0]  # rank 1 is the most frequent
    assert counts[0][1] >= 10 * counts[99][1]


def test_valid_queries_come_from_the_held_out_ranks(corpora: dict[str, Split[Any]]) -> None:
    ranked = q.distinct_queries(seed=0)
    held_out = set(ranked[q.HOLD_OUT_EVERY - 1 :: q.HOLD_OUT_EVERY])
    assert 0.04 <= len(held_out) / len(ranked) <= 0.06
    valid = corpora["autocomplete"].valid
    assert set(valid) <= held_out
    assert collections.Counter(valid).most_common(1)[0][0] == ranked[q.HOLD_OUT_EVERY - 1]
