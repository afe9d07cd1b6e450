"""Identifiers that several stages must derive the same way."""

from __future__ import annotations

import hashlib
import json
import secrets

# Crockford-style alphabet without look-alikes (no I, L, O, U) so codes survive being read aloud.
_CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def incident_id_for_report(report_id: str) -> str:
    """A single report opens an incident whose id derives from the report's."""
    return "inc-" + report_id


def school_key(school_code: str) -> str:
    """The key that brings one school's reports together (codes are case-insensitive)."""
    return school_code.strip().upper()


def event_id(*parts: str) -> str:
    """Deterministic id for an event, so a replay is recognised and written once.

    Parts are JSON-encoded before hashing so ("a", "b") and ("a|b",) can never collide.
    """
    canonical = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def notification_id(incident_id: str, recipient_email: str, step: int) -> str:
    return event_id("notification", incident_id, recipient_email.lower(), str(step))


def new_tracking_code() -> str:
    """A short code a reporter can keep, e.g. ``ESC-7K3M-9Q2X`` (40 bits of randomness)."""
    raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(8))
    return f"ESC-{raw[:4]}-{raw[4:]}"


def tracking_code_from(digest: bytes) -> str:
    """The same shape of code from the first 40 bits of a secret-keyed digest."""
    if len(digest) < 5:
        raise ValueError("a tracking code needs at least 40 bits")
    bits = int.from_bytes(digest[:5], "big")
    raw = "".join(_CODE_ALPHABET[(bits >> (5 * (7 - n))) & 31] for n in range(8))
    return f"ESC-{raw[:4]}-{raw[4:]}"
