"""A second opinion for reports that no rule recognises.

Rules are precise and explainable, but people describe the same event in endless ways; a report
that matches no rule would otherwise be filed as ``other``/``low``. Here a small multinomial naive
Bayes model, trained at start-up on the project's labelled example reports, names the category
those reports most resemble. The engine only asks it when no rule fired, only trusts it above a
probability threshold, and always flags its decisions for human review.

Features are word unigrams and adjacent pairs in folded form (no diacritics, "đ" as "d"), so
"tự tử" and "tu tu" count as the same evidence.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

from schemas.common import Category
from stream_processors.classification.normalize import fold, tokenize

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
SMOOTHING = 0.5


def features(text: str) -> set[str]:
    words = [fold(t) for t in tokenize(text)]
    return set(words) | {f"{a} {b}" for a, b in pairwise(words)}


class ExampleModel:
    """Built once; ``predict`` costs a few dictionary look-ups per word."""

    def __init__(self, examples: Iterable[tuple[str, Category]]) -> None:
        rows = list(examples)
        if not rows:
            raise ValueError("the fallback model needs at least one labelled example")
        digest = hashlib.sha256()
        per_category: dict[Category, Counter[str]] = defaultdict(Counter)
        docs: Counter[Category] = Counter()
        for text, category in rows:
            digest.update(f"{category.value}\t{text}\n".encode())
            docs[category] += 1
            per_category[category].update(features(text))
        self.version = digest.hexdigest()[:12]
        self.categories = sorted(docs, key=lambda c: c.value)
        vocabulary = set().union(*per_category.values())
        size = len(vocabulary)
        self._prior = [math.log(docs[c] / len(rows)) for c in self.categories]
        totals = [sum(per_category[c].values()) + SMOOTHING * size for c in self.categories]
        self._unseen = [math.log(SMOOTHING / t) for t in totals]
        self._weights: dict[str, list[float]] = {
            feature: [
                math.log((per_category[c][feature] + SMOOTHING) / totals[i])
                for i, c in enumerate(self.categories)
            ]
            for feature in vocabulary
        }

    @classmethod
    def from_jsonl(cls, paths: Iterable[Path]) -> ExampleModel:
        """Rows shaped like the labelled corpora: ``{"report": {...}, "expect": {...}}``."""
        examples = []
        for path in sorted(paths):
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    examples.append(
                        (row["report"]["description"], Category(row["expect"]["category"]))
                    )
        return cls(examples)

    @classmethod
    def bundled(cls) -> ExampleModel:
        return cls.from_jsonl(EXAMPLES_DIR.glob("*.jsonl"))

    def predict(self, text: str) -> tuple[Category, float]:
        """The most likely category and its posterior probability among the categories."""
        scores = list(self._prior)
        known = [self._weights[f] for f in features(text) if f in self._weights]
        for i in range(len(scores)):
            scores[i] += sum(w[i] for w in known)
        # Features never seen in training carry no evidence; their smoothing terms cancel out.
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        best = max(range(len(scores)), key=scores.__getitem__)
        return self.categories[best], weights[best] / sum(weights)
