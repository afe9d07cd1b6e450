"""Vocabularies shared by every contract (labels from POLICY.md)."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum

# Hanoi keeps UTC+7 all year (no daylight saving), so a fixed offset is exact and needs no tz data.
HANOI_TZ = timezone(timedelta(hours=7), "UTC+07:00")


class Channel(StrEnum):
    web_form = "web_form"
    app = "app"
    telegram = "telegram"
    zalo = "zalo"
    messenger = "messenger"
    email = "email"
    hotline = "hotline"
    bulk_import = "bulk_import"


class ReporterRole(StrEnum):
    student = "student"
    parent = "parent"
    teacher = "teacher"
    school_staff = "school_staff"
    other = "other"
    anonymous = "anonymous"


class Severity(StrEnum):
    critical = "critical"
    high = "high"
    medium = "medium"
    low = "low"


SEVERITY_RANK: dict[Severity, int] = {
    Severity.low: 0,
    Severity.medium: 1,
    Severity.high: 2,
    Severity.critical: 3,
}


class Category(StrEnum):
    sexual_exploitation = "sexual_exploitation"
    threat_of_violence = "threat_of_violence"
    self_harm = "self_harm"
    cyberbullying = "cyberbullying"
    privacy_violation = "privacy_violation"
    account_compromise = "account_compromise"
    fraud = "fraud"
    intrusion = "intrusion"
    credential_leak = "credential_leak"
    harmful_content = "harmful_content"
    other = "other"


class Tier(StrEnum):
    school = "school"
    district_office = "district_office"
    city_office = "city_office"
    police = "police"


def nfc(text: str) -> str:
    """Every string that enters the pipeline is stored in Unicode NFC."""
    return unicodedata.normalize("NFC", text)


# C0 and C1 controls (Unicode category Cc) except tab and newline, which text legitimately uses.
_CONTROLS = [c for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if chr(c) not in "\t\n\r\x85"]
# Explicit bidi embeddings, overrides (U+202A-U+202E) and isolates (U+2066-U+2069). They make a
# text display in an order other than the one it is stored in ("Trojan source" spoofing), so a
# recipient could read something other than what the classifier and the audit trail saw.
_BIDI_CONTROLS = [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
# Every other invisible format character (Unicode category Cf): zero-width spaces and joiners,
# soft hyphens, the BOM, tag characters. Put inside a word they hide it from the classifier
# ("dụ d<U+200B>ỗ" was read as two harmless fragments, and a critical grooming report came out
# low) while the recipient still reads the word. Vietnamese and English need none of them; an
# emoji sequence joined by U+200D falls apart into its emoji, which still say the same.
# Searched once over the planes that have any (the BMP, the SMP and tags in plane 14).
_FORMAT = [
    c
    for c in (*range(0x20000), *range(0xE0000, 0xE0080))
    if unicodedata.category(chr(c)) == "Cf"
    and c not in range(0x202A, 0x202F)
    and c not in range(0x2066, 0x206A)
]
# Lone UTF-16 surrogates (category Cs) are not characters and cannot be encoded as UTF-8.
_SURROGATES = range(0xD800, 0xE000)
# What ends a line: NEL (U+0085) is a C1 control that means "new line", so it becomes a line
# break rather than vanishing and gluing two words together; likewise U+2028 and U+2029.
_LINE_BREAKS = (0x0A, 0x0D, 0x85, 0x2028, 0x2029)

_DROP: dict[int, str | None] = dict.fromkeys((*_CONTROLS, *_BIDI_CONTROLS, *_FORMAT, *_SURROGATES))
_MULTI_LINE = str.maketrans({**_DROP, **dict.fromkeys(_LINE_BREAKS, "\n")})
_ONE_LINE = str.maketrans({**_DROP, **dict.fromkeys((*_LINE_BREAKS, 0x09), " ")})


def clean_text(text: str, *, single_line: bool = False) -> str:
    """Free text as a reporter meant it, safe for every later stage (mail, logs, SQL, terminals).

    Reports come from web forms, apps, chat bots and bulk imports, and some carry characters
    nobody typed: NUL and other C0/C1 controls (they break mail headers, PostgreSQL text and
    terminals), lone surrogates from broken UTF-16 (they cannot be encoded as UTF-8, so such a
    report could not even be written to Kafka), and bidi overrides that make a text read
    differently from how it is stored. Those are removed; newline and tab stay. CR LF and a lone
    CR become LF, and so do NEL, U+2028 and U+2029, so that "a line" means one thing downstream.
    Invisible format characters (zero-width spaces and joiners, soft hyphens) go too: inside a
    word they hid it from the classifier.

    ``single_line`` is for fields such as a name that end up in a mail header or a table cell:
    there every line break and tab becomes a space, and the ends are trimmed.

    The result is NFC, so Vietnamese text with diacritics comes out as its NFC form, unchanged
    when it was NFC already. Cleaning a cleaned text changes nothing.
    """
    text = text.replace("\r\n", "\n")
    if single_line:
        return nfc(text.translate(_ONE_LINE)).strip()
    return nfc(text.translate(_MULTI_LINE))


def utcnow() -> datetime:
    return datetime.now(UTC)
