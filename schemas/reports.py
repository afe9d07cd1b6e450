"""What a reporter submits, and the accepted report as it travels on Kafka."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
)
from pydantic_core import PydanticCustomError

from schemas.common import HANOI_TZ, Category, Channel, ReporterRole, clean_text, utcnow

MAX_DESCRIPTION_CHARS = 10_000
# Online classes in Hanoi schools are far younger than this; an earlier date is a typing slip.
EARLIEST_OCCURRED_AT = datetime(2000, 1, 1, tzinfo=HANOI_TZ)
# Room for a reporter's clock that runs ahead or a time zone mix-up, not for dates in the future.
OCCURRED_AT_FUTURE_SLACK = timedelta(days=1)


def _free_text(value: object) -> object:
    # Non-strings are left for pydantic to refuse with its usual message.
    return clean_text(value).strip() if isinstance(value, str) else value


def _one_line_text(value: object) -> object:
    return clean_text(value, single_line=True) if isinstance(value, str) else value


# Cleaning (see ``clean_text``) for multi-line free text, with NFC and trimmed ends. A
# BeforeValidator runs before the constraints written to its left in the same ``Annotated``, so
# put it last: then a description made only of control characters is "too short" (pydantic's
# string_too_short, which intake turns into a plain reason) instead of an empty text accepted.
FREE_TEXT = BeforeValidator(_free_text)
# The same for text that must stay on one line (names): line breaks and tabs become spaces.
ONE_LINE_TEXT = BeforeValidator(_one_line_text)

NfcStr = Annotated[str, FREE_TEXT]


def _date_as_text(value: object) -> object:
    """A date comes as ISO 8601 text. A bare number would be read as seconds since 1970 (so
    ``0`` became 1970-01-01 and was refused only as "too early"), which nobody sending a
    report means; refuse it with the form the date should take."""
    if isinstance(value, bool | int | float):
        raise PydanticCustomError(
            "occurred_at_not_text",
            "give the date as text, for example 2026-05-04T19:30:00+07:00 (a number is not a date)",
        )
    return value


#: a description must say something in words: letters or digits, not only emoji or marks
MIN_DESCRIPTION_WORD_CHARS = 3


def in_words(text: str) -> bool:
    """Whether ``text`` says something in letters or digits (a description must)."""
    return sum(1 for ch in text if ch.isalnum()) >= MIN_DESCRIPTION_WORD_CHARS


def _has_words(value: str) -> str:
    if not in_words(value):
        raise PydanticCustomError(
            "description_without_words",
            "please describe what happened in words (letters or numbers, not only emoji "
            "or symbols)",
        )
    return value


def _plausible_occurred_at(value: datetime) -> datetime:
    """Naive times are Hanoi time; a date before 2000 or beyond tomorrow cannot be right.

    Without bounds, a date such as 9999-12-31T23:59:59Z was accepted and later broke stages
    that convert it to local time (the year 10000 does not exist for ``datetime``).
    """
    if value.tzinfo is None or value.utcoffset() is None:
        value = value.replace(tzinfo=HANOI_TZ)
    if value < EARLIEST_OCCURRED_AT:
        raise PydanticCustomError(
            "occurred_at_too_early",
            "the date is before 2000-01-01; please check the year of the incident",
        )
    if value > utcnow() + OCCURRED_AT_FUTURE_SLACK:
        raise PydanticCustomError(
            "occurred_at_in_future",
            "the date is in the future; please give when the incident happened (a time without "
            "a UTC offset is read as Hanoi time, UTC+7)",
        )
    return value


class ReporterContact(BaseModel):
    """How to reach the reporter. Sensitive: only tiers the policy names may see it."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(max_length=200), ONE_LINE_TEXT] | None = None
    phone: Annotated[str | None, Field(max_length=40, pattern=r"^[0-9+() .-]{3,40}$")] = None
    email: EmailStr | None = None


class ReportIn(BaseModel):
    """A report as a reporter (or a channel adapter on their behalf) sends it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    channel: Channel
    reporter_role: ReporterRole
    school_code: Annotated[str, Field(min_length=2, max_length=40, pattern=r"^[A-Za-z0-9._-]+$")]
    description: Annotated[
        str,
        Field(min_length=5, max_length=MAX_DESCRIPTION_CHARS),
        AfterValidator(_has_words),
        FREE_TEXT,
    ]
    immediate_danger: bool = False
    category_hint: Category | None = None
    occurred_at: Annotated[
        Annotated[datetime, AfterValidator(_plausible_occurred_at), BeforeValidator(_date_as_text)]
        | None,
        Field(
            description="When it happened. A time without a UTC offset is Hanoi time (UTC+7). "
            "From 2000-01-01 to at most one day after the time of submission."
        ),
    ] = None
    contact: ReporterContact | None = None
    evidence_urls: Annotated[list[AnyHttpUrl], Field(max_length=20)] = []


class IdempotencyClaim(BaseModel):
    """What a client's ``Idempotency-Key`` retry is matched by; digests only, never the key."""

    model_config = ConfigDict(extra="forbid")

    key_id: str = Field(
        pattern=r"^[0-9a-f]{32}$", description="Digest of the intake client and its key."
    )
    request_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the report as validated."
    )


class ReportSubmitted(BaseModel):
    """An accepted report: written to Kafka before the reporter is told 'accepted'."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    report_id: str
    tracking_code: str
    received_at: datetime
    intake_client: str = Field(description="Name of the API key or channel that brought it in.")
    report: ReportIn
    follow_up_of: str | None = Field(
        default=None,
        description="The incident this report adds to: set when a reporter sends more "
        "information from the status page of an earlier report. The grouper attaches it to "
        "that incident as an update, whatever its age or wording.",
    )
    idempotency: IdempotencyClaim | None = Field(
        default=None,
        description="Set when the client sent an Idempotency-Key: a retry with the same key "
        "and report within 24 hours is answered with this report instead of a new one.",
    )
