"""Embedded, deterministic corpora for the built-in tasks (no downloads, stdlib only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainer.data.builtin.queries import search_queries
from trainer.data.builtin.sentiment import sentiment_reviews
from trainer.data.builtin.split import Split
from trainer.data.builtin.translation import translation_pairs

BUILTIN: dict[str, Callable[..., Split[Any]]] = {
    "translation": translation_pairs,
    "sentiment": sentiment_reviews,
    "autocomplete": search_queries,
}
"""Task name -> corpus generator (keyword arguments: seed, num_train, num_valid)."""

__all__ = ["BUILTIN", "Split", "search_queries", "sentiment_reviews", "translation_pairs"]
