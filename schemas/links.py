"""Personal action links: ``{public_url}/a/{token}`` in every notification mail.

The token is signed with ``ESCALATE_SECRET_KEY`` (itsdangerous, HMAC-SHA1 over a URL-safe
payload with a timestamp) and binds one incident, one recipient address and one tier: whoever
holds the mail may act for that organisation on that incident, nothing more. It expires after
the policy's ``acknowledgement.link_valid_for``. The notifier signs, the intake verifies; both
hold the same key. To rotate it, put the old key in ESCALATE_PREVIOUS_SECRET_KEYS: links signed
with it keep working until they expire, new ones are signed with the new key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from schemas.common import Tier

SALT = "escalate.action-link.v1"


class LinkPurpose(StrEnum):
    act = "act"  # acknowledge, resolve, add a note
    review = "review"  # the triage page: also set severity and category


@dataclass(frozen=True)
class LinkClaims:
    incident_id: str
    recipient: str
    tier: Tier
    purpose: LinkPurpose


class BadLink(Exception):
    """A token that is forged, altered, malformed or expired. ``reason`` is a fixed word
    (``expired`` or ``invalid``) fit for a metric label; the token itself is never logged."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LinkSigner:
    def __init__(self, secret_key: str, previous_keys: Sequence[str] = ()) -> None:
        # itsdangerous signs with the last key and accepts a signature by any of them.
        self._serializer = URLSafeTimedSerializer([*previous_keys, secret_key], salt=SALT)

    def sign(self, claims: LinkClaims) -> str:
        return self._serializer.dumps(
            {
                "i": claims.incident_id,
                "r": claims.recipient,
                "t": claims.tier.value,
                "p": claims.purpose.value,
            }
        )

    def verify(self, token: str, max_age_s: int) -> LinkClaims:
        try:
            data = self._serializer.loads(token, max_age=max_age_s)
        except SignatureExpired as exc:
            raise BadLink("expired") from exc
        except (BadSignature, ValueError, TypeError) as exc:
            raise BadLink("invalid") from exc
        try:
            return LinkClaims(
                incident_id=str(data["i"]),
                recipient=str(data["r"]),
                tier=Tier(data["t"]),
                purpose=LinkPurpose(data["p"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadLink("invalid") from exc


def action_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/a/{token}"
