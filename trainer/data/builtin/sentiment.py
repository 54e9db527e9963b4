"""Embedded sentiment corpus: short movie and product reviews where word order matters.

Each review is labelled 1 (positive) or 0 (negative) by these rules, which :func:`label`
implements and every generated review follows:

* A sentiment word sets the polarity: one of ~30 positive or ~30 negative adjectives
  ("good", "terrible"), or a verb ("loved", "hated", "like", "recommend").
* Intensifiers keep the polarity: "very good" -> 1, "really terrible" -> 0.
* "not" flips it: "not good" -> 0, "not bad" -> 1, "not bad at all" -> 1,
  "i did not like the plot" -> 0, "i would not recommend it" -> 0.
* With "but", the clause after "but" decides: "the acting was good but the plot was terrible"
  -> 0. Clauses joined by "and" always share a polarity.

About a quarter of the reviews are very short (1 to 4 words: "good", "not good", "very bad",
"great movie"), so a bag-of-words model cannot do well: "not" and "but" only make sense in
context. Labels are balanced, text is lowercase without punctuation, validation reviews are
distinct and never occur in train, and every entry of :data:`PROBES` occurs in train.
"""

from __future__ import annotations

import random

from trainer.data.builtin.split import Split


def _words(text: str) -> list[str]:
    return text.split()


POSITIVE = _words(
    "good great excellent amazing wonderful fantastic brilliant superb lovely enjoyable "
    "beautiful delightful charming fun impressive outstanding perfect pleasant solid memorable "
    "fresh clever touching nice awesome terrific stunning entertaining satisfying tasty"
)
NEGATIVE = _words(
    "bad terrible awful horrible boring dull poor weak disappointing mediocre bland dreadful "
    "lousy annoying painful stupid slow messy confusing forgettable predictable clumsy lazy "
    "ugly rude overpriced tedious pathetic sloppy pointless"
)
INTENSIFIERS = ("very", "really", "extremely", "so", "quite", "truly", "incredibly")
_NOUN_INTENSIFIERS = ("very", "really", "extremely", "truly", "incredibly")  # "really good movie"
ASPECTS = _words(
    "movie film plot acting soundtrack story ending dialogue food service price product "
    "quality design battery screen delivery staff"
)
_LIKED = ("loved", "liked", "enjoyed", "adored")
_DISLIKED = ("hated", "disliked")
_DID_NOT = ("like", "enjoy", "love")  # "i did not like the plot" -> negative
_POSITIVE_WORDS = frozenset(POSITIVE) | frozenset(_LIKED) | frozenset(_DID_NOT) | {"recommend"}
_NEGATIVE_WORDS = frozenset(NEGATIVE) | frozenset(_DISLIKED)

PROBES: list[tuple[str, int]] = [
    ("good", 1),
    ("not good", 0),
    ("bad", 0),
    ("not bad", 1),
    ("very good", 1),
    ("very bad", 0),
    ("not bad at all", 1),
    ("not terrible", 1),
    ("the food was not good", 0),
    ("i would not recommend it", 0),
    ("the plot was good but the acting was awful", 0),
    ("the acting was awful but the plot was good", 1),
]
"""Hand-written checks (demo probes); all of them occur in the training split."""


def label(text: str) -> int:
    """Labels a review with the corpus rules (1 = positive, 0 = negative).

    Args:
        text: A review in the corpus style, e.g. ``"the acting was good but the plot was bad"``.

    Returns:
        1 if the deciding clause is positive, else 0.

    Raises:
        ValueError: If the deciding clause has no known sentiment word.
    """
    clause = text.split(" but ")[-1].split(" and ")[0].split()
    for word in clause:
        if word in _POSITIVE_WORDS or word in _NEGATIVE_WORDS:
            return int((word in _POSITIVE_WORDS) != ("not" in clause))
    raise ValueError(f"no sentiment word in {text!r}")


def _adjective_phrase(rng: random.Random, positive: bool) -> list[str]:
    """Samples e.g. ["good"], ["very", "good"], ["not", "bad"], ["not", "bad", "at", "all"]."""
    r = rng.random()
    if r < 0.45:
        return [rng.choice(POSITIVE if positive else NEGATIVE)]
    if r < 0.75:
        return [rng.choice(INTENSIFIERS), rng.choice(POSITIVE if positive else NEGATIVE)]
    flipped = rng.choice(NEGATIVE if positive else POSITIVE)
    return ["not", flipped] if r < 0.92 else ["not", flipped, "at", "all"]


def _short(rng: random.Random, positive: bool) -> list[str]:
    """Samples 1 to 4 words: "not bad", "very good", "great movie", "really awful service"."""
    if rng.random() < 0.65:
        return _adjective_phrase(rng, positive)
    words = [rng.choice(POSITIVE if positive else NEGATIVE), rng.choice(ASPECTS)]
    return [rng.choice(_NOUN_INTENSIFIERS), *words] if rng.random() < 0.3 else words


def _clause(rng: random.Random, positive: bool, aspect: str, verb: str) -> list[str]:
    """Samples a clause such as "the plot was very good" or "the food is not bad at all"."""
    return ["the", aspect, verb, *_adjective_phrase(rng, positive)]


def _opinion(rng: random.Random, positive: bool, aspect: str) -> list[str]:
    """Samples "i loved the plot", "i did not enjoy the food", "i would not recommend it"."""
    if rng.random() < 0.3:
        target = ["it"] if rng.random() < 0.3 else ["this", aspect]
        return ["i", "would", *([] if positive else ["not"]), "recommend", *target]
    if positive:
        return ["i", rng.choice(_LIKED), "the", aspect]
    verb = [rng.choice(_DISLIKED)] if rng.random() < 0.5 else ["did", "not", rng.choice(_DID_NOT)]
    return ["i", *verb, "the", aspect]


def _review(rng: random.Random, positive: bool) -> str:
    """Samples one review whose label is ``positive``."""
    first, second = rng.sample(ASPECTS, 2)
    verb = rng.choice(("was", "is"))
    r = rng.random()
    if r < 0.28:
        words = _short(rng, positive)
    elif r < 0.52:
        words = _clause(rng, positive, first, verb)
    elif r < 0.64:
        words = _opinion(rng, positive, first)
    elif r < 0.88:  # the clause after "but" decides; the first one usually disagrees
        opening = positive if rng.random() < 0.15 else not positive
        if rng.random() < 0.25:
            words = _opinion(rng, opening, first)
        else:
            words = _clause(rng, opening, first, verb)
        words += ["but", *_clause(rng, positive, second, verb)]
    else:
        words = [*_clause(rng, positive, first, verb), "and", *_clause(rng, positive, second, verb)]
    return " ".join(words)


def sentiment_reviews(
    *, seed: int = 0, num_train: int = 12000, num_valid: int = 500
) -> Split[tuple[str, int]]:
    """Generates labelled reviews (1 = positive, 0 = negative).

    Args:
        seed: Seed; the same seed gives the same corpus in every process.
        num_train: Number of training reviews (short ones repeat); includes :data:`PROBES`.
        num_valid: Number of distinct validation reviews, none of which occurs in train.

    Returns:
        The train/valid split of ``(text, label)`` pairs.
    """
    valid_rng = random.Random(f"sentiment:{seed}:valid")
    train_rng = random.Random(f"sentiment:{seed}:train")
    probes = PROBES[:num_train]
    excluded = {text for text, _ in PROBES}
    held_out: dict[str, int] = {}  # insertion-ordered, so deterministic
    while len(held_out) < num_valid:  # alternate labels: exactly balanced
        positive = len(held_out) % 2 == 0
        text = _review(valid_rng, positive)
        if text not in excluded:
            held_out.setdefault(text, int(positive))
    train = list(probes)
    while len(train) < num_train:
        positive = len(train) % 2 == 0
        text = _review(train_rng, positive)
        if text not in held_out:
            train.append((text, int(positive)))
    train_rng.shuffle(train)
    return Split(train=train, valid=list(held_out.items()))
