"""Classification rules: the operator-edited part of the policy that turns report text into labels.

The classifier (stream_processors/classification) compiles these once per policy version. Every
model forbids unknown keys, so a misspelt key is refused with its line instead of being ignored.
Phrases are written with proper Vietnamese diacritics; the classifier also matches them against
text typed without accents (see docs/CLASSIFIER.md).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from schemas.common import Category, ReporterRole, Severity, nfc

_WORD = re.compile(r"\w", re.UNICODE)
_RULE_ID = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
_SINGLE_TOKEN = re.compile(r"^[\w\u0300-\u036f]+$", re.UNICODE)


def _phrase(value: str) -> str:
    """A phrase must hold at least one word, or it would match everywhere (or nowhere)."""
    text = " ".join(nfc(value).split())
    if not _WORD.search(text):
        raise ValueError("a phrase must contain at least one letter or digit")
    return text


def _not_yaml_bool(value: object) -> object:
    """YAML reads a bare no/yes/on/off as true/false; say so instead of "not a string"."""
    if isinstance(value, bool):
        raise ValueError(
            'YAML read this word as true/false: put it in quotes (for example "no" or "off")'
        )
    return value


def _word(value: str) -> str:
    """Lexicon keys and context words are single tokens, compared after casefolding."""
    text = nfc(value).strip().casefold()
    if not _SINGLE_TOKEN.match(text):
        raise ValueError(f"{value!r} must be one word (letters/digits, no spaces or punctuation)")
    return text


def _folded_syllable(value: str) -> str:
    """An entry of ``ambiguous_folded``: one syllable as typed without accents ("ban", "dam")."""
    text = _word(value)
    if not (text.isascii() and text.isalpha()):
        raise ValueError(
            f"{value!r} must be one syllable typed without accents, the way it appears in "
            "unaccented text (for example 'ban' for bắn/bạn/bán, 'dam' for đâm/dám)"
        )
    return text


Phrase = Annotated[str, BeforeValidator(_not_yaml_bool), AfterValidator(_phrase)]
Word = Annotated[str, BeforeValidator(_not_yaml_bool), AfterValidator(_word)]
FoldedSyllable = Annotated[str, BeforeValidator(_not_yaml_bool), AfterValidator(_folded_syllable)]

DEFAULT_CATEGORY_SEVERITY: dict[Category, Severity] = {
    Category.sexual_exploitation: Severity.critical,
    Category.threat_of_violence: Severity.critical,
    Category.self_harm: Severity.critical,
    Category.cyberbullying: Severity.high,
    Category.privacy_violation: Severity.high,
    Category.account_compromise: Severity.high,
    Category.fraud: Severity.medium,
    Category.intrusion: Severity.medium,
    Category.credential_leak: Severity.medium,
    Category.harmful_content: Severity.medium,
    Category.other: Severity.low,
}


class Shorthand(BaseModel):
    """A shorthand whose meaning depends on its neighbours (``mk``: password or "me")."""

    model_config = ConfigDict(extra="forbid")

    expand: Phrase = Field(description="Expansion used when one of `near` is close by.")
    near: list[Word] = Field(min_length=1, description="Words that confirm the expansion.")
    window: int = Field(default=4, ge=1, le=20, description="How many tokens either side.")
    otherwise: Phrase | None = Field(default=None, description="Expansion when none is near.")
    note: str | None = None


class NegationCue(BaseModel):
    """A phrase that cancels a match starting at most ``window`` tokens after it."""

    model_config = ConfigDict(extra="forbid")

    phrase: Phrase
    window: int = Field(default=1, ge=0, le=8)


class Negation(BaseModel):
    """How negated mentions ("no child is in danger") are recognised and ignored."""

    model_config = ConfigDict(extra="forbid")

    cues: list[NegationCue] = Field(default_factory=list)
    not_negation: list[Phrase] = Field(
        default_factory=list,
        description="Phrases that contain a cue but do not negate ('nếu không', 'not only').",
    )
    clause_breaks: list[Phrase] = Field(
        default_factory=list,
        description="Words that end a negation's reach, besides punctuation ('nhưng', 'but').",
    )


class When(BaseModel):
    """Conditions on the structured fields of a report; all given ones must hold."""

    model_config = ConfigDict(extra="forbid")

    immediate_danger: bool | None = None
    category_hint: list[Category] = Field(default_factory=list)
    reporter_role: list[ReporterRole] = Field(default_factory=list)


class Rule(BaseModel):
    """One rule: fires when its phrases occur (and are not negated) and its conditions hold.

    ``any``: at least one phrase occurs. ``all``: every group has a phrase that occurs, and with
    ``within`` they all fit in a span of that many tokens. Both may be given; then both must hold.
    ``unless``: if any of these occurs anywhere in the report, the rule does not fire.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    category: Category
    severity: Severity | None = Field(
        default=None, description="Overrides the category's default severity."
    )
    any: list[Phrase] = Field(default_factory=list)
    all: list[list[Phrase]] = Field(default_factory=list)
    within: int | None = Field(default=None, ge=1, le=200)
    unless: list[Phrase] = Field(default_factory=list)
    weight: int = Field(
        default=10, ge=0, le=1000, description="Decides the category among equal severities."
    )
    when: When | None = None
    review: bool = Field(default=False, description="A decision resting on it needs a human.")
    note: str | None = None

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not _RULE_ID.match(value):
            raise ValueError("rule id must look like 'category.name' (lowercase, digits, _ and .)")
        return value

    @field_validator("all")
    @classmethod
    def _groups_not_empty(cls, value: list[list[str]]) -> list[list[str]]:
        for i, group in enumerate(value):
            if not group:
                raise ValueError(f"all[{i}] is an empty group: it could never match")
        return value

    @model_validator(mode="after")
    def _has_phrases(self) -> Rule:
        if not self.any and not self.all:
            raise ValueError(f"rule {self.id!r} needs phrases in `any` or `all`")
        if self.within is not None and len(self.all) < 2:
            raise ValueError(f"rule {self.id!r}: `within` needs at least two `all` groups")
        return self


class ClassificationRules(BaseModel):
    """The `classification:` section of the policy file."""

    model_config = ConfigDict(extra="forbid")

    lexicon: dict[Word, Phrase | Shorthand] = Field(
        default_factory=dict, description="Chat shorthand -> what it stands for."
    )
    ambiguous_folded: list[FoldedSyllable] = Field(
        default_factory=list,
        description="Syllables that, typed without accents, are too ambiguous to stand for a "
        "rule word on their own ('ban' is bạn/bán/bắn): in unaccented text a one-word phrase "
        "with this folded form does not match; a phrase of several words still does.",
    )
    compounds: list[Phrase] = Field(
        default_factory=list,
        description="Multi-word terms kept whole, so 'đánh' does not match inside 'đánh giá'.",
    )
    category_severity: dict[Category, Severity] = Field(
        default_factory=lambda: dict(DEFAULT_CATEGORY_SEVERITY)
    )
    immediate_danger_category: Category = Field(
        default=Category.threat_of_violence,
        description="Category when 'a child is in immediate danger' is ticked and nothing else "
        "tells what the danger is.",
    )
    negation: Negation = Field(default_factory=Negation)
    rules: list[Rule] = Field(default_factory=list)

    @field_validator("category_severity")
    @classmethod
    def _every_category(cls, value: dict[Category, Severity]) -> dict[Category, Severity]:
        missing = [c.value for c in Category if c not in value]
        if missing:
            raise ValueError(f"category_severity is missing {', '.join(missing)}")
        return value

    @field_validator("ambiguous_folded")
    @classmethod
    def _no_duplicate_syllables(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for syllable in value:
            if syllable in seen:
                raise ValueError(f"ambiguous_folded lists {syllable!r} twice")
            seen.add(syllable)
        return value

    @field_validator("compounds")
    @classmethod
    def _compound_words(cls, value: list[str]) -> list[str]:
        for phrase in value:
            if len(phrase.split()) < 2:
                raise ValueError(f"compound {phrase!r} must have at least two words")
        return value

    @field_validator("rules")
    @classmethod
    def _unique_ids(cls, value: list[Rule]) -> list[Rule]:
        seen: dict[str, int] = {}
        for i, rule in enumerate(value):
            if rule.id in seen:
                raise ValueError(f"duplicate rule id {rule.id!r} (rules {seen[rule.id]} and {i})")
            seen[rule.id] = i
        return value
