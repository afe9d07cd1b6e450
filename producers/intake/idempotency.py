"""Safe retries: the same ``Idempotency-Key`` and body gives the same report, once.

An app that lost the answer to ``POST /v1/reports`` (a dropped connection, a timeout) sends the
report again with the same key. Within ``WINDOW`` the intake answers with the report it already
stored, and writes nothing; the same key with a different report is a client error (409).

What makes it survive restarts and work across intake processes is the report topic itself:
each accepted report carries its claim (a hash of client and key, and a hash of the report),
and every intake reads the topic back into a ``ClaimBook`` as part of its status view. Two
further rules close the gaps that reading back leaves:

- Requests with the same key in one process wait for each other (``InFlight``), so the second
  sees the first's outcome instead of racing it.
- The report id and the tracking code of a keyed report derive from the claim (the code with a
  server-side secret, so it cannot be guessed from the key). Should two processes still both
  write, or a write time out at the client after the broker stored it, the copies carry the same
  ids: the status page shows one report, and the grouper takes the copy as a repeat report of
  the same incident, not as a new one.

Neither the key nor the report is kept in readable form: only their SHA-256 digests.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TypeVar

from schemas.ids import event_id, tracking_code_from
from schemas.reports import IdempotencyClaim, ReportIn

HEADER = "Idempotency-Key"
WINDOW = timedelta(hours=24)
MAX_KEY_LENGTH = 255
#: claims kept in memory at most (the oldest go first); a day of a large city's reports
MAX_CLAIMS = 200_000

T = TypeVar("T")

_NAMESPACE = uuid.UUID("6f1d3c52-0a8e-4c5e-9a57-3f4b8f0e2d11")


class InvalidKey(ValueError):
    """The header is present but cannot be a key; the message says why."""


def parse_key(raw: str | None) -> str | None:
    """The key from the header's value; None when the client sent none."""
    if raw is None:
        return None
    key = raw.strip()
    if not key:
        raise InvalidKey(f"the {HEADER} header is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"the {HEADER} header is longer than {MAX_KEY_LENGTH} characters")
    if not all(0x20 <= ord(c) < 0x7F for c in key):
        raise InvalidKey(f"the {HEADER} header may hold only printable ASCII characters")
    return key


def claim_for(client: str, key: str, report: ReportIn) -> IdempotencyClaim:
    """Keys are per API client: two apps choosing the same key do not collide."""
    canonical = report.model_dump_json().encode("utf-8")
    return IdempotencyClaim(
        key_id=event_id("idempotency", client, key),
        request_sha256=hashlib.sha256(canonical).hexdigest(),
    )


def report_id_for(claim: IdempotencyClaim) -> str:
    return str(uuid.uuid5(_NAMESPACE, claim.key_id))


def tracking_code_for(claim: IdempotencyClaim, secret: bytes) -> str:
    """Derived with the intake's secret: knowing a key does not reveal its tracking code."""
    digest = hmac.new(secret, claim.key_id.encode("ascii"), hashlib.sha256).digest()
    return tracking_code_from(digest)


@dataclass(frozen=True, slots=True)
class Remembered:
    """What a retry is answered with."""

    report_id: str
    tracking_code: str
    request_sha256: str
    received_at: datetime


class ClaimBook:
    """Claims by key id, newest last, bounded by ``WINDOW`` and ``MAX_CLAIMS``; thread-safe."""

    def __init__(self, window: timedelta = WINDOW, max_claims: int = MAX_CLAIMS) -> None:
        self._claims: OrderedDict[str, Remembered] = OrderedDict()
        self._window = window
        self._max = max_claims
        self._lock = threading.Lock()

    def remember(self, key_id: str, remembered: Remembered) -> None:
        with self._lock:
            known = self._claims.get(key_id)
            if known is not None and known.received_at <= remembered.received_at:
                return  # the first write of a key is the one retries are answered with
            self._claims[key_id] = remembered
            self._claims.move_to_end(key_id)
            while len(self._claims) > self._max:
                self._claims.popitem(last=False)

    def find(self, key_id: str, now: datetime) -> Remembered | None:
        with self._lock:
            found = self._claims.get(key_id)
            # Drop what has aged out from the old end while we hold the lock anyway.
            while self._claims:
                oldest_key, oldest = next(iter(self._claims.items()))
                if now - oldest.received_at <= self._window:
                    break
                del self._claims[oldest_key]
        if found is None or now - found.received_at > self._window:
            return None
        return found

    def __len__(self) -> int:
        with self._lock:
            return len(self._claims)


class Outcome(StrEnum):
    new = "new"
    replayed = "replayed"
    conflict = "conflict"


def decide(claim: IdempotencyClaim, found: Remembered | None) -> Outcome:
    if found is None:
        return Outcome.new
    if hmac.compare_digest(found.request_sha256, claim.request_sha256):
        return Outcome.replayed
    return Outcome.conflict


class InFlight:
    """Runs one request per key id at a time within this process (on one event loop)."""

    def __init__(self) -> None:
        # key id -> (lock, requests holding or waiting for it)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def one_at_a_time(self, key_id: str, work: Callable[[], Awaitable[T]]) -> T:
        lock, users = self._locks.get(key_id, (asyncio.Lock(), 0))
        self._locks[key_id] = (lock, users + 1)
        try:
            async with lock:
                return await work()
        finally:
            lock, users = self._locks[key_id]
            if users == 1:
                del self._locks[key_id]
            else:
                self._locks[key_id] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
