"""API keys as the intake keeps them: SHA-256 digests, compared in constant time.

A key in the configuration may be written as ``sha256:<64 hex digits>`` (what ``escalate key
new`` prints), so that whoever reads the configuration or the environment cannot use it; a
plain key still works, and the composition root warns about it. A presented key is hashed and
compared with every configured digest (``hmac.compare_digest``), so the time an answer takes
tells nothing about which key nearly matched, and a digest's length never varies.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from typing import Generic, TypeVar

T = TypeVar("T")

PREFIX = "sha256:"
_HEX = re.compile(r"^[0-9a-f]{64}$")


def is_hashed(configured: str) -> bool:
    return configured.startswith(PREFIX)


def digest_of(configured: str) -> bytes:
    """The digest a configured key stands for; ValueError for a malformed ``sha256:`` entry."""
    if is_hashed(configured):
        hexdigest = configured.removeprefix(PREFIX).lower()
        if not _HEX.match(hexdigest):
            raise ValueError("a hashed key must be sha256: followed by 64 hexadecimal digits")
        return bytes.fromhex(hexdigest)
    return hashlib.sha256(configured.encode("utf-8")).digest()


def hashed(key: str) -> str:
    """The configuration form of ``key``."""
    return PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return secrets.token_urlsafe(32)


class KeyRing(Generic[T]):
    """Configured keys (plain or hashed) → what each stands for (a client name, an authority)."""

    def __init__(self, configured: Mapping[str, T]) -> None:
        self._entries = [(digest_of(key), value) for key, value in configured.items()]
        #: what the plain (unhashed) keys stand for: the composition root warns about them
        self.plain = [value for key, value in configured.items() if not is_hashed(key)]

    def find(self, presented: str | None) -> T | None:
        if not presented:
            return None
        wanted = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found = None
        for stored, value in self._entries:  # every entry, whatever matched before
            if hmac.compare_digest(stored, wanted):
                found = value
        return found

    def __len__(self) -> int:
        return len(self._entries)
