"""Turn report text and rule phrases into comparable token keys.

Reports arrive with diacritics, without them ("tu tu"), in chat shorthand ("ko", "e", "mk") and in
English. Rules are written once, with proper diacritics. Both sides go through the same steps, so
one phrase matches every spelling:

1. NFC, casefold, drop apostrophes inside words ("don't" -> "dont").
2. Split into word tokens; punctuation only marks clause boundaries (for negation scope).
3. Expand shorthand from the policy lexicon (some entries only in context, like ``mk``).
4. Merge compounds ("đánh giá") into one token so their parts do not match on their own.
5. Give each token a match key. Accented tokens keep their accents (with the tone mark placed
   canonically, so "khoả" equals "khỏa"); tokens typed without any accents in a report that is
   mostly unaccented get a folded key, which matches a phrase token with the same letters once
   diacritics are removed and "đ" becomes "d". So "tu tu" matches "tự tử", while an accented
   "từ từ" does not.

Folding loses information: "ban" is "bạn" (friend), "bán" (sell) and "bắn" (shoot). Syllables the
policy lists in ``ambiguous_folded`` need context in unaccented text: a rule phrase of one word
whose folded form is listed keeps only its exact key, so it matches the word typed with its
accents and never a bare "ban"; a phrase of several words ("bắn chết", "tự tử") keeps folded keys
for every word, because its other words supply the context that picks the reading.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from schemas.rules import ClassificationRules, Shorthand
from schemas.text import fold

# Vietnamese tone marks; the other combining marks (circumflex, breve, horn) are part of the
# letter and stay with it.
_TONES = frozenset("\u0300\u0301\u0303\u0309\u0323")
_APOSTROPHE = re.compile(r"(?<=\w)['’`](?=\w)")
# Numbers keep their separators ("1.500.000", "1,5"): a dot between digits ends no clause.
_TOKEN = re.compile(r"\d+(?:[.,]\d+)+|[\w\u0300-\u036f]+\+?|[.!?;:,\n\r|]+")
# Amounts as people type them ("300k", "1.5tr", "50000đ"): the unit becomes its word, so a rule
# about money sees "300 nghìn" and "k" is never read as the shorthand for "không".
_AMOUNT = re.compile(r"(?<![\w.,])(\d+(?:[.,]\d+)*)(k|tr|đ|vnđ|vnd)(?!\w)")
_AMOUNT_UNITS = {"k": "nghìn", "tr": "triệu", "đ": "đồng", "vnđ": "đồng", "vnd": "đồng"}

EXACT = "E"  # the token as written, accents included
FOLDED = "F"  # an unaccented token that may stand for any accented spelling
COMPOUND = "C"  # a merged compound, by index

# A report where at least this share of word tokens carry diacritics is treated as written with
# accents: its plain-ASCII tokens are then taken at face value ("anh" is not "ảnh").
ACCENTED_SHARE = 0.25


@lru_cache(maxsize=1 << 16)
def canonical(token: str) -> str:
    """The accented form with its tone mark moved to the end (old and new tone placement agree)."""
    base: list[str] = []
    tones: list[str] = []
    for ch in unicodedata.normalize("NFD", token):
        (tones if ch in _TONES else base).append(ch)
    return unicodedata.normalize("NFC", "".join(base)) + "".join(tones)


@lru_cache(maxsize=1 << 16)
def _folded(token: str) -> str:
    return fold(token)


def split(text: str) -> list[str]:
    """Casefolded word tokens and punctuation runs, in order."""
    text = _APOSTROPHE.sub("", unicodedata.normalize("NFC", text).casefold())
    text = _AMOUNT.sub(lambda m: f"{m.group(1)} {_AMOUNT_UNITS[m.group(2)]}", text)
    return _TOKEN.findall(text)


def tokenize(text: str) -> list[str]:
    """Casefolded word tokens only (handy for tests and tools)."""
    return [t for t in split(text) if _is_word(t)]


def _is_word(token: str) -> bool:
    return token[0].isalnum() or token[0] == "_"


def phrase_token_keys(token: str) -> frozenset[str]:
    """A rule's token matches its exact accented form, or the same letters typed without accents."""
    return frozenset((EXACT + canonical(token), FOLDED + _folded(token)))


@dataclass(frozen=True)
class Tokens:
    """A text ready for matching: one key and one clause number per token."""

    keys: list[str]
    clauses: list[int]


class PhraseSet:
    """Phrases as token-key sequences, found by their first token's key."""

    def __init__(self) -> None:
        self.phrases: list[tuple[frozenset[str], ...]] = []
        self.texts: list[str] = []
        self._ids: dict[tuple[frozenset[str], ...], int] = {}
        self._first: dict[str, list[int]] = {}

    def add(self, keys: Sequence[frozenset[str]], text: str) -> int:
        """Register a phrase (deduplicated) and return its id."""
        seq = tuple(keys)
        if not seq:
            raise ValueError(f"phrase {text!r} has no words")
        found = self._ids.get(seq)
        if found is not None:
            return found
        pid = len(self.phrases)
        self.phrases.append(seq)
        self.texts.append(text)
        self._ids[seq] = pid
        for key in seq[0]:
            self._first.setdefault(key, []).append(pid)
        return pid

    def find(self, keys: Sequence[str]) -> list[tuple[int, int, int]]:
        """Every occurrence as (phrase id, start, end) with ``end`` exclusive."""
        out: list[tuple[int, int, int]] = []
        size = len(keys)
        first = self._first
        phrases = self.phrases
        for i, key in enumerate(keys):
            candidates = first.get(key)
            if not candidates:
                continue
            for pid in candidates:
                seq = phrases[pid]
                n = len(seq)
                if i + n > size:
                    continue
                j = 1
                while j < n and keys[i + j] in seq[j]:
                    j += 1
                if j == n:
                    out.append((pid, i, i + n))
        return out


@dataclass(frozen=True)
class _Word:
    """A token after shorthand expansion; ``exact`` when it came from the lexicon."""

    text: str
    exact: bool
    clause: int


class Normalizer:
    """Built once per policy: the lexicon, compounds and clause breaks, ready to apply."""

    def __init__(self, rules: ClassificationRules) -> None:
        self._simple: dict[str, list[str]] = {}
        self._context: dict[str, tuple[list[str], frozenset[str], int, list[str] | None]] = {}
        for key, entry in rules.lexicon.items():
            if isinstance(entry, Shorthand):
                other = tokenize(entry.otherwise) if entry.otherwise else None
                near = frozenset(_folded(w) for w in entry.near)
                self._context[key] = (tokenize(entry.expand), near, entry.window, other)
            else:
                self._simple[key] = tokenize(entry)
        self.ambiguous = frozenset(rules.ambiguous_folded)
        self._compounds = PhraseSet()
        for phrase in rules.compounds:
            words = self._expand([(t, 0) for t in tokenize(phrase)])
            self._compounds.add([phrase_token_keys(w.text) for w in words], phrase)
        self._breaks = PhraseSet()
        for phrase in rules.negation.clause_breaks:
            self.add_phrase(self._breaks, phrase)

    def _expand(self, raw: list[tuple[str, int]]) -> list[_Word]:
        """Apply the lexicon to (token, clause) pairs."""
        out: list[_Word] = []
        folded_raw: list[str] | None = None
        for i, (tok, clause) in enumerate(raw):
            simple = self._simple.get(tok)
            if simple is not None:
                out.extend(_Word(w, True, clause) for w in simple)
                continue
            ctx = self._context.get(tok)
            if ctx is None:
                out.append(_Word(tok, False, clause))
                continue
            expand, near, window, other = ctx
            if folded_raw is None:
                folded_raw = [_folded(t) for t, _ in raw]
            lo, hi = max(0, i - window), min(len(raw), i + window + 1)
            if any(folded_raw[j] in near for j in range(lo, hi) if j != i):
                out.extend(_Word(w, True, clause) for w in expand)
            elif other is not None:
                out.extend(_Word(w, True, clause) for w in other)
            else:
                out.append(_Word(tok, False, clause))
        return out

    def _merge(self, words: list[_Word], keys: list[str]) -> tuple[list[str], list[int]]:
        """Replace compound occurrences (leftmost, longest) by one compound key each."""
        clauses = [w.clause for w in words]
        hits = self._compounds.find(keys)
        if not hits:
            return keys, clauses
        best: dict[int, tuple[int, int]] = {}
        for pid, start, end in hits:
            if start not in best or end > best[start][1]:
                best[start] = (pid, end)
        merged_keys: list[str] = []
        merged_clauses: list[int] = []
        i = 0
        while i < len(keys):
            if i in best:
                pid, end = best[i]
                merged_keys.append(f"{COMPOUND}{pid}")
                merged_clauses.append(clauses[i])
                i = end
            else:
                merged_keys.append(keys[i])
                merged_clauses.append(clauses[i])
                i += 1
        return merged_keys, merged_clauses

    def _phrase_keys(self, phrase: str) -> list[frozenset[str]]:
        words = self._expand([(t, 0) for t in tokenize(phrase)])
        keys = [EXACT + canonical(w.text) for w in words]
        merged, _ = self._merge(words, keys)
        out: list[frozenset[str]] = []
        for key in merged:
            if key.startswith(COMPOUND):
                out.append(frozenset((key,)))
            else:
                out.append(phrase_token_keys(key[1:]))
        if len(merged) == 1 and not merged[0].startswith(COMPOUND):
            word = merged[0][1:]
            if _folded(word) in self.ambiguous:
                # One ambiguous word alone: only its accented spelling is evidence.
                out = [frozenset((merged[0],))]
        return out

    def add_phrase(self, target: PhraseSet, phrase: str) -> int:
        """Compile a rule phrase the same way report text is normalised, and register it."""
        return target.add(self._phrase_keys(phrase), phrase)

    def tokens(self, text: str) -> Tokens:
        """Normalise one report's text into match keys with clause numbers."""
        raw: list[tuple[str, int]] = []
        clause = 0
        for tok in split(text):
            if _is_word(tok):
                raw.append((tok, clause))
            else:
                clause += 1
        words = self._expand(raw)
        # Judge the writer's habit from what they typed, not from lexicon expansions.
        typed = [w for w in words if not w.exact]
        accented = sum(1 for w in typed if not w.text.isascii())
        face_value = bool(typed) and accented >= ACCENTED_SHARE * len(typed)
        keys = [
            EXACT + canonical(w.text)
            if (w.exact or face_value or not w.text.isascii())
            else FOLDED + w.text
            for w in words
        ]
        keys, clauses = self._merge(words, keys)
        breaks = self._breaks.find(keys)
        if breaks:
            starts = sorted({start for _, start, _ in breaks})
            shift = 0
            out: list[int] = []
            k = 0
            for i, c in enumerate(clauses):
                while k < len(starts) and starts[k] <= i:
                    shift += 1
                    k += 1
                out.append(c + shift)
            clauses = out
        return Tokens(keys=keys, clauses=clauses)


def compile_phrases(norm: Normalizer, target: PhraseSet, phrases: Iterable[str]) -> list[int]:
    """Register many phrases and return their ids, in order."""
    return [norm.add_phrase(target, p) for p in phrases]
