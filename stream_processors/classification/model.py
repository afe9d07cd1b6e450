"""A learned second opinion: TF-IDF n-grams and logistic regression, beside the rules.

The rules miss what nobody wrote a rule for (docs/CLASSIFIER.md, the untuned batches). This model
reads the same folded text (lowercase, no diacritics, đ→d) as character 2–5-grams inside words
and word 1–2-grams, and predicts severity and category with two logistic regressions.

scikit-learn is used only to train. The shipped model is plain arrays in one ``.npz`` file,
read with ``allow_pickle=False`` and scored with numpy alone, so loading a model file can never
run code. The arrays carry their own digest, so a file changed after training is refused even
when the caller does not know the expected file hash.

How its opinion combines with the rules is the policy's (``second_opinion``), applied in
``second_opinion.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import unicodedata
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.text import fold

SCHEMA_VERSION = 1

# Feature settings, stored in the file and checked on load: inference must split text exactly
# as training did, or the coefficients point at the wrong features.
DEFAULT_SETTINGS: dict[str, Any] = {
    "char_ngram_range": [2, 5],
    "word_ngram_range": [1, 2],
    "char_max_features": 30000,
    "word_max_features": 8000,
    # Chosen by 5-fold cross-validation on the training corpus (min_df 1 vs 2, C 3/10/30):
    # keeping rare n-grams found a few more critical reports; C made little difference.
    "min_df": 1,
    "sublinear_tf": True,
    "C": 10.0,
}

# sklearn's own patterns (CountVectorizer defaults), repeated here so inference needs no sklearn.
_WORD = re.compile(r"(?u)\b\w\w+\b")
_WHITE = re.compile(r"\s\s+")

FloatArray = npt.NDArray[np.float64]
_WORD_CACHE_SIZE = 50_000

# A zip entry's timestamp is part of the file; a fixed one keeps the same training giving the
# same bytes, so the file hash (the model version) is reproducible.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class ModelError(ValueError):
    """A model file that must not be used; the message says why."""


def fold_text(text: str) -> str:
    """The text the model reads: NFC, casefolded, without diacritics, đ as d."""
    return fold(unicodedata.normalize("NFC", text).casefold())


def char_wb_ngrams(text: str, lo: int, hi: int) -> list[str]:
    """Character n-grams inside space-padded words, as sklearn's ``char_wb`` analyzer makes them."""
    grams: list[str] = []
    for word in _WHITE.sub(" ", text).split():
        padded = f" {word} "
        size = len(padded)
        for n in range(lo, hi + 1):
            offset = 0
            grams.append(padded[offset : offset + n])
            while offset + n < size:
                offset += 1
                grams.append(padded[offset : offset + n])
            if offset == 0:  # a word shorter than n is counted once, like sklearn
                break
    return grams


def word_ngrams(text: str, lo: int, hi: int) -> list[str]:
    """Word n-grams with sklearn's default token pattern (two or more word characters)."""
    tokens = _WORD.findall(text)
    grams: list[str] = list(tokens) if lo == 1 else []
    for n in range(max(lo, 2), min(hi, len(tokens)) + 1):
        grams.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return grams


@dataclass(frozen=True)
class ModelOpinion:
    """What the model thinks of one report."""

    severity: str
    severity_probability: float
    probabilities: dict[str, float]
    category: str
    category_probability: float
    top_features: list[str]


@dataclass(frozen=True)
class _Block:
    """One TF-IDF feature block: vocabulary (term -> column) and idf weights."""

    terms: npt.NDArray[np.str_]
    index: dict[str, int]
    idf: FloatArray


@dataclass(frozen=True)
class _Head:
    """One logistic regression over the concatenated blocks."""

    classes: list[str]
    coef: FloatArray  # (classes, features)
    intercept: FloatArray  # (classes,)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    return _sha256(path.read_bytes())


def _payload_digest(arrays: Mapping[str, np.ndarray[Any, Any]]) -> str:
    """A digest over every array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


class TrainedModel:
    """A model ready to score reports with numpy alone."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        char: _Block,
        word: _Block,
        severity: _Head,
        category: _Head,
        corpora: Mapping[str, str],
        version: str = "",
    ) -> None:
        self.settings = dict(settings)
        self.char = char
        self.word = word
        self.severity = severity
        self.category = category
        self.corpora = dict(corpora)
        # First 12 hex digits of the file's sha256; empty until saved or loaded.
        self.model_version = version
        self._char_range = tuple(self.settings["char_ngram_range"])
        self._word_range = tuple(self.settings["word_ngram_range"])
        self._sublinear = bool(self.settings["sublinear_tf"])
        self._names = np.concatenate([char.terms, word.terms])
        self._word_cache: dict[str, tuple[int, ...]] = {}
        # Explanations skip the commonest quarter of the vocabulary ("he", "cho", "mot"): such
        # n-grams do carry weight, but tell a reviewer nothing about why.
        idf = np.concatenate([char.idf, word.idf])
        self._telling = idf >= (np.percentile(idf, 25) if len(idf) else 0.0)

    # -- features -----------------------------------------------------------------------------

    def _block(self, grams: list[str], block: _Block) -> tuple[list[int], FloatArray]:
        counts: dict[int, int] = {}
        index = block.index
        for gram in grams:
            col = index.get(gram)
            if col is not None:
                counts[col] = counts.get(col, 0) + 1
        return self._weigh(counts, block)

    def _weigh(self, counts: dict[int, int], block: _Block) -> tuple[list[int], FloatArray]:
        cols = sorted(counts)
        if not cols:
            return [], np.zeros(0)
        tf = np.array([counts[c] for c in cols], dtype=np.float64)
        if self._sublinear:
            tf = np.log(tf) + 1.0
        values = tf * block.idf[cols]
        norm = float(np.sqrt(np.dot(values, values)))
        return cols, values / norm if norm > 0 else values

    def _char_columns(self, word: str) -> tuple[int, ...]:
        """Columns of one word's character n-grams (those in the vocabulary), cached.

        Character n-grams never cross a word boundary, so a word always gives the same columns;
        reports reuse a small set of syllables, and the cache halves the time per report.
        """
        cols = self._word_cache.get(word)
        if cols is None:
            index = self.char.index
            found = (index.get(g) for g in char_wb_ngrams(word, *self._char_range))
            cols = tuple(c for c in found if c is not None)
            if len(self._word_cache) >= _WORD_CACHE_SIZE:
                self._word_cache.clear()  # bounded; refilling is cheap
            self._word_cache[word] = cols
        return cols

    def _char_block(self, folded: str) -> tuple[list[int], FloatArray]:
        counts: dict[int, int] = {}
        for word in folded.split():
            for col in self._char_columns(word):
                counts[col] = counts.get(col, 0) + 1
        return self._weigh(counts, self.char)

    def features(self, text: str) -> tuple[npt.NDArray[np.intp], FloatArray]:
        """Sparse TF-IDF vector of one text: column indices and values (each block l2-normed)."""
        folded = fold_text(text)
        ccols, cvals = self._char_block(folded)
        wcols, wvals = self._block(word_ngrams(folded, *self._word_range), self.word)
        offset = len(self.char.terms)
        cols = np.array(ccols + [c + offset for c in wcols], dtype=np.intp)
        return cols, np.concatenate([cvals, wvals])

    @staticmethod
    def _proba(head: _Head, cols: npt.NDArray[np.intp], vals: FloatArray) -> FloatArray:
        scores = head.coef[:, cols] @ vals + head.intercept
        scores = scores - scores.max()
        exp = np.exp(scores)
        result: FloatArray = exp / exp.sum()
        return result

    def predict_proba(self, text: str) -> tuple[FloatArray, FloatArray]:
        """Severity and category probabilities, in the order of their class lists."""
        cols, vals = self.features(text)
        return self._proba(self.severity, cols, vals), self._proba(self.category, cols, vals)

    def predict(
        self,
        text: str,
        top: int = 5,
        order: Sequence[str] | None = None,
        threshold: float = 0.5,
    ) -> ModelOpinion:
        """The model's opinion of one text.

        Without ``order`` the severity is the most probable class. With ``order`` (every
        severity class, lowest first) it is read as an ordinal scale: the highest class whose
        probability, added to those of all classes above it, reaches ``threshold``; the
        opinion's probability is then that sum.
        """
        cols, vals = self.features(text)
        sev = self._proba(self.severity, cols, vals)
        cat = self._proba(self.category, cols, vals)
        k = int(np.argmax(sev))
        p = float(sev[k])
        if order is not None:
            k, p = self._ordinal(sev, order, threshold)
        c = int(np.argmax(cat))
        return ModelOpinion(
            severity=self.severity.classes[k],
            severity_probability=p,
            probabilities={
                name: float(p) for name, p in zip(self.severity.classes, sev, strict=True)
            },
            category=self.category.classes[c],
            category_probability=float(cat[c]),
            top_features=self._top(self.severity.coef[k, cols] * vals, cols, top),
        )

    def _ordinal(
        self, sev: FloatArray, order: Sequence[str], threshold: float
    ) -> tuple[int, float]:
        classes = self.severity.classes
        if sorted(order) != sorted(classes):
            raise ModelError(f"severity order {list(order)} does not name the classes {classes}")
        cumulative = 0.0
        for name in reversed(order):
            k = classes.index(name)
            cumulative += float(sev[k])
            if cumulative >= threshold:
                return k, min(cumulative, 1.0)
        return classes.index(order[0]), 1.0

    def _top(self, contrib: FloatArray, cols: npt.NDArray[np.intp], top: int) -> list[str]:
        """The n-grams that pushed hardest towards the predicted class, overlaps merged.

        Character n-grams overlap ("gui a", "ui an"); a fragment inside one already chosen says
        nothing new to a reviewer, so it is skipped, as are very common and very short ones.
        """
        chosen: list[str] = []
        for i in np.argsort(-contrib, kind="stable"):
            if contrib[i] <= 0 or len(chosen) >= top:
                break
            if not self._telling[cols[i]]:
                continue
            term = str(self._names[cols[i]]).strip()
            if len(term) < 3 or any(term in c or c in term for c in chosen):
                continue
            chosen.append(term)
        return chosen

    # -- storage ------------------------------------------------------------------------------

    def _arrays(self) -> dict[str, np.ndarray[Any, Any]]:
        return {
            "schema_version": np.array(SCHEMA_VERSION, dtype=np.int64),
            "settings": np.array(json.dumps(self.settings, sort_keys=True)),
            "corpora": np.array(json.dumps(self.corpora, sort_keys=True)),
            "char_terms": self.char.terms,
            "char_idf": self.char.idf,
            "word_terms": self.word.terms,
            "word_idf": self.word.idf,
            "severity_classes": np.array(self.severity.classes),
            "severity_coef": self.severity.coef,
            "severity_intercept": self.severity.intercept,
            "category_classes": np.array(self.category.classes),
            "category_coef": self.category.coef,
            "category_intercept": self.category.intercept,
        }

    def save(self, path: Path) -> str:
        """Write one reproducible ``.npz`` (plain arrays only) and return the model version."""
        arrays = self._arrays()
        arrays["payload_sha256"] = np.array(_payload_digest(arrays))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(arrays):
                member = io.BytesIO()
                np.lib.format.write_array(member, arrays[name], allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, member.getvalue(), compresslevel=9)
        data = buf.getvalue()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.model_version = _sha256(data)[:12]
        return self.model_version


_EXPECTED = {
    "schema_version",
    "settings",
    "corpora",
    "char_terms",
    "char_idf",
    "word_terms",
    "word_idf",
    "severity_classes",
    "severity_coef",
    "severity_intercept",
    "category_classes",
    "category_coef",
    "category_intercept",
    "payload_sha256",
}


def load(path: Path, expected_sha256: str | None = None) -> TrainedModel:
    """Read a model file, refusing anything that is not exactly what training wrote."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model: {exc}") from None
    digest = _sha256(data)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise ModelError(
            f"{path}: sha256 {digest} does not match the expected {expected_sha256}; refused"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as exc:  # a damaged zip or array header: never use it
        raise ModelError(f"{path}: not a readable model file ({exc}); refused") from None
    if set(arrays) != _EXPECTED:
        raise ModelError(f"{path}: unexpected arrays {sorted(set(arrays) ^ _EXPECTED)}; refused")
    version = int(arrays["schema_version"])
    if version != SCHEMA_VERSION:
        raise ModelError(
            f"{path}: model schema version {version}, this code reads {SCHEMA_VERSION}; "
            "retrain with `escalate classify train`"
        )
    stored = str(arrays.pop("payload_sha256"))
    if _payload_digest(arrays) != stored:
        raise ModelError(f"{path}: array contents do not match their recorded digest; refused")
    return _from_arrays(path, arrays, digest[:12])


def _from_arrays(path: Path, a: Mapping[str, np.ndarray[Any, Any]], version: str) -> TrainedModel:
    settings = json.loads(str(a["settings"]))
    corpora = json.loads(str(a["corpora"]))
    n_char, n_word = len(a["char_terms"]), len(a["word_terms"])
    width = n_char + n_word
    problems = []
    if a["char_idf"].shape != (n_char,) or a["word_idf"].shape != (n_word,):
        problems.append("idf vectors do not match the vocabularies")
    for name in ("severity", "category"):
        k = len(a[f"{name}_classes"])
        if a[f"{name}_coef"].shape != (k, width):
            problems.append(f"{name} coefficients {a[f'{name}_coef'].shape} != {(k, width)}")
        if a[f"{name}_intercept"].shape != (k,):
            problems.append(f"{name} intercepts do not match its classes")
    if problems:
        raise ModelError(f"{path}: " + "; ".join(problems) + "; refused")

    def read_block(prefix: str) -> _Block:
        terms = a[f"{prefix}_terms"]
        return _Block(
            terms, {str(t): i for i, t in enumerate(terms)}, a[f"{prefix}_idf"].astype(np.float64)
        )

    def read_head(prefix: str) -> _Head:
        return _Head(
            [str(c) for c in a[f"{prefix}_classes"]],
            np.ascontiguousarray(a[f"{prefix}_coef"], dtype=np.float64),
            a[f"{prefix}_intercept"].astype(np.float64),
        )

    return TrainedModel(
        settings,
        read_block("char"),
        read_block("word"),
        read_head("severity"),
        read_head("category"),
        corpora,
        version,
    )


# -- training (scikit-learn) ------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One training row: report text and its labels."""

    text: str
    severity: str
    category: str


def _vectorizers(settings: Mapping[str, Any]) -> tuple[Any, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    common = {
        "lowercase": False,  # the text is already folded by fold_text
        "min_df": settings["min_df"],
        "sublinear_tf": settings["sublinear_tf"],
        "dtype": np.float64,
    }
    char = TfidfVectorizer(
        analyzer="char_wb",
        ngram_range=tuple(settings["char_ngram_range"]),
        max_features=settings["char_max_features"],
        **common,
    )
    word = TfidfVectorizer(
        analyzer="word",
        ngram_range=tuple(settings["word_ngram_range"]),
        max_features=settings["word_max_features"],
        **common,
    )
    return char, word


@dataclass
class Fitted:
    """The scikit-learn objects behind a model, kept for tests that compare the two."""

    char: Any
    word: Any
    severity: Any
    category: Any

    def transform(self, texts: Sequence[str]) -> Any:
        from scipy.sparse import hstack

        folded = [fold_text(t) for t in texts]
        return hstack([self.char.transform(folded), self.word.transform(folded)]).tocsr()


def fit(
    rows: Sequence[Example], seed: int = 0, settings: Mapping[str, Any] | None = None
) -> Fitted:
    """Fit the vectorizers and both regressions with scikit-learn."""
    from scipy.sparse import hstack
    from sklearn.linear_model import LogisticRegression

    settings = dict(settings or DEFAULT_SETTINGS)
    char, word = _vectorizers(settings)
    folded = [fold_text(r.text) for r in rows]
    x = hstack([char.fit_transform(folded), word.fit_transform(folded)]).tocsr()

    def regression(labels: list[str]) -> Any:
        lr = LogisticRegression(
            C=settings["C"],
            class_weight="balanced",
            solver="lbfgs",
            max_iter=5000,
            random_state=seed,
        )
        return lr.fit(x, labels)

    return Fitted(
        char,
        word,
        regression([r.severity for r in rows]),
        regression([r.category for r in rows]),
    )


def train(
    rows: Sequence[Example],
    seed: int = 0,
    corpora: Mapping[str, str] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> TrainedModel:
    """Train on labelled rows and return the numpy-only model (save it to get a version)."""
    settings = dict(settings or DEFAULT_SETTINGS)
    fitted = fit(rows, seed, settings)
    return from_fitted(fitted, settings, corpora or {})


def from_fitted(
    fitted: Fitted, settings: Mapping[str, Any], corpora: Mapping[str, str]
) -> TrainedModel:
    def block(vec: Any) -> _Block:
        terms = np.array([str(t) for t in vec.get_feature_names_out()])
        return _Block(terms, {str(t): i for i, t in enumerate(terms)}, vec.idf_.astype(np.float64))

    def head(lr: Any) -> _Head:
        return _Head(
            [str(c) for c in lr.classes_],
            np.ascontiguousarray(lr.coef_, dtype=np.float64),
            lr.intercept_.astype(np.float64),
        )

    return TrainedModel(
        settings,
        block(fitted.char),
        block(fitted.word),
        head(fitted.severity),
        head(fitted.category),
        corpora,
    )
