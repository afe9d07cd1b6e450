"""Vocabularies shared by every contract (labels from POLICY.md)."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from enum import StrEnum


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


def utcnow() -> datetime:
    return datetime.now(UTC)
