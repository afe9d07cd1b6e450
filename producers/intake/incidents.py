"""The intake's read-only view of where each incident stands, and of each tracking code.

The escalator owns ``escalation.state.v1``, a compacted topic holding the latest
``EscalationState`` per incident. The intake only needs to show that state (on the action page,
in the authority API and to reporters who look up their tracking code), so it reads the whole
topic into memory and keeps following it. There is no consumer group: every intake process needs
every partition, and committing offsets would only make a restart skip the states it must
rebuild.

Reporters look their report up by tracking code. A state lists the codes of every report its
incident holds (grouping appends later reports' codes), but a report that was just accepted has
no state yet, so the view also follows ``reports.submitted.v1`` and notes the codes this intake
has just published itself (a lookup straight after submission then works before the topic is
read back).

Memory: the states (as before), plus one small entry per tracking code (incident id, school code,
time received; no report text). Codes listed by a state live as long as that state and go with
its tombstone. Codes known only from a submitted report (not yet in any state) are capped at
``max_pending_codes``; past the cap the oldest are forgotten first. Normally a code is pending
for seconds, until the escalator writes its incident's state.
"""

from __future__ import annotations

import logging
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError

from producers.intake.follower import TopicFollower
from producers.intake.idempotency import ClaimBook, Remembered
from schemas.escalation import EscalationState
from schemas.ids import _CODE_ALPHABET, incident_id_for_report
from schemas.reports import IdempotencyClaim, ReportSubmitted
from schemas.topics import ESCALATION_STATE, REPORTS_SUBMITTED

log = logging.getLogger("escalate.intake.incidents")

#: Codes known only from reports.submitted (no state lists them yet) kept at most.
MAX_PENDING_CODES = 200_000

_CODE_CHARS = frozenset(_CODE_ALPHABET)
# Letters a reporter may type for the digits they resemble; the alphabet leaves them out for
# exactly that reason, so mapping them back can never turn one valid code into another.
_LOOK_ALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})
_DASHES = str.maketrans("", "", "-\u2010\u2011\u2012\u2013\u2014\u2212")


def normalise_tracking_code(raw: str) -> str | None:
    """``ESC-XXXX-XXXX`` from what a reporter typed, or None when it cannot be a code.

    Case, spaces, dashes (also the typographic ones a phone keyboard inserts), full-width
    characters and a missing ``ESC`` prefix are forgiven.
    """
    if len(raw) > 64:
        return None
    compact = "".join(unicodedata.normalize("NFKC", raw).split()).translate(_DASHES).upper()
    if len(compact) == 11 and compact.startswith("ESC"):
        compact = compact[3:]
    compact = compact.translate(_LOOK_ALIKES)
    if len(compact) != 8 or not _CODE_CHARS.issuperset(compact):
        return None
    return f"ESC-{compact[:4]}-{compact[4:]}"


class ReportStatus(StrEnum):
    """What a reporter is told about their report; nothing about who was told or how serious."""

    received = "received"  # accepted; the authorities are being told
    under_review = "under_review"  # the intake desk's triage is open and not answered yet
    acknowledged = "acknowledged"  # an organisation took it in hand
    resolved = "resolved"


def status_of(state: EscalationState | None) -> ReportStatus:
    if state is None:
        return ReportStatus.received
    if state.resolved is not None:
        return ReportStatus.resolved
    if any(t.acknowledged for t in state.tiers.values()):
        return ReportStatus.acknowledged
    if state.review is not None and state.review.reviewed_at is None:
        return ReportStatus.under_review
    return ReportStatus.received


@dataclass(frozen=True, slots=True)
class CodeStatus:
    """A tracking code's standing. Only ``tracking_code``, ``status`` and ``updated_at`` may be
    shown to the reporter; the incident id and school code serve follow-up reports."""

    tracking_code: str
    status: ReportStatus
    updated_at: datetime
    incident_id: str
    school_code: str


@dataclass(frozen=True, slots=True)
class _CodeEntry:
    incident_id: str
    school_code: str
    received_at: datetime
    #: listed by an incident's state: authoritative, a submitted record never overrides it
    from_state: bool


# What a miss looks up, so an unknown code costs what a known one does (see find_code).
_NO_ENTRY = _CodeEntry("", "", datetime(2000, 1, 1, tzinfo=UTC), False)


class _ReportHead(BaseModel):
    model_config = ConfigDict(extra="ignore")

    school_code: str


class _SubmittedHead(BaseModel):
    """The few fields of a ``ReportSubmitted`` the index needs; the text is never kept."""

    model_config = ConfigDict(extra="ignore")

    report_id: str
    tracking_code: str
    received_at: datetime
    follow_up_of: str | None = None
    report: _ReportHead
    idempotency: IdempotencyClaim | None = None


class IncidentLookup(Protocol):
    """What the action pages need from a view; tests pass a fake holding known states."""

    def get(self, incident_id: str) -> EscalationState | None: ...

    def ready(self) -> bool: ...


@runtime_checkable
class ReportLookup(IncidentLookup, Protocol):
    """What the reporters' status page needs on top: tracking codes."""

    def find_code(self, code: str) -> CodeStatus | None: ...

    def note_submitted(self, submitted: ReportSubmitted) -> None: ...


@runtime_checkable
class ClaimLookup(Protocol):
    """What ``Idempotency-Key`` retries need: the reports stored under a key (see idempotency)."""

    def find_claim(self, key_id: str, now: datetime) -> Remembered | None: ...

    def ready(self) -> bool: ...


class StatusIndex:
    """States by incident id and tracking codes by code, in memory; safe across threads.

    Pure bookkeeping (no Kafka), so it can be tested alone; ``IncidentView`` feeds it.
    """

    def __init__(self, max_pending_codes: int = MAX_PENDING_CODES) -> None:
        self._states: dict[str, EscalationState] = {}
        self._codes: dict[str, _CodeEntry] = {}
        # Codes not (yet) listed by any state, oldest first: the part of the index to bound.
        self._pending: OrderedDict[str, None] = OrderedDict()
        self._max_pending = max_pending_codes
        self._lock = threading.Lock()
        self.claims = ClaimBook()

    def get(self, incident_id: str) -> EscalationState | None:
        with self._lock:
            return self._states.get(incident_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._states)

    def code_count(self) -> int:
        with self._lock:
            return len(self._codes)

    def find_code(self, code: str) -> CodeStatus | None:
        """The standing of a tracking code in any accepted spelling; None: not known.

        A miss does the same work as a hit (a lookup of a sentinel entry, a state lookup that
        misses, the status built and then dropped), so the time taken does not tell an attacker
        which guessed codes exist.
        """
        normal = normalise_tracking_code(code) or ""
        with self._lock:
            entry = self._codes.get(normal, _NO_ENTRY)
            state = self._states.get(entry.incident_id)
        found = CodeStatus(
            tracking_code=normal,
            status=status_of(state),
            updated_at=state.updated_at if state is not None else entry.received_at,
            incident_id=entry.incident_id,
            school_code=entry.school_code,
        )
        return found if entry is not _NO_ENTRY else None

    def apply_state(self, state: EscalationState) -> None:
        with self._lock:
            self._states[state.incident_id] = state
            if state.incident is None:
                return
            entry = _CodeEntry(
                state.incident_id, state.incident.school_code, state.incident.received_at, True
            )
            for code in state.incident.tracking_codes:
                normal = normalise_tracking_code(code) or code
                self._codes[normal] = entry
                self._pending.pop(normal, None)

    def forget(self, incident_id: str) -> None:
        """A tombstone: the escalator has forgotten the incident, and its codes go with it."""
        with self._lock:
            state = self._states.pop(incident_id, None)
            if state is None or state.incident is None:
                return
            for code in state.incident.tracking_codes:
                normal = normalise_tracking_code(code) or code
                entry = self._codes.get(normal)
                if entry is not None and entry.incident_id == incident_id:
                    del self._codes[normal]

    def note_submitted(self, submitted: ReportSubmitted) -> None:
        self.apply_submitted(
            _SubmittedHead(
                report_id=submitted.report_id,
                tracking_code=submitted.tracking_code,
                received_at=submitted.received_at,
                follow_up_of=submitted.follow_up_of,
                report=_ReportHead(school_code=submitted.report.school_code),
                idempotency=submitted.idempotency,
            )
        )

    def apply_submitted(self, head: _SubmittedHead) -> None:
        if head.idempotency is not None:
            self.claims.remember(
                head.idempotency.key_id,
                Remembered(
                    head.report_id,
                    head.tracking_code,
                    head.idempotency.request_sha256,
                    head.received_at,
                ),
            )
        normal = normalise_tracking_code(head.tracking_code) or head.tracking_code
        # Until a state says otherwise, a report is its own incident, or, sent from the status
        # page, part of the one it follows up.
        incident_id = head.follow_up_of or incident_id_for_report(head.report_id)
        with self._lock:
            known = self._codes.get(normal)
            if known is not None and known.from_state:
                return  # the state is newer knowledge (grouping may have moved the code)
            self._codes[normal] = _CodeEntry(
                incident_id, head.report.school_code, head.received_at, False
            )
            self._pending[normal] = None
            self._pending.move_to_end(normal)
            while len(self._pending) > self._max_pending:
                oldest, _ = self._pending.popitem(last=False)
                self._codes.pop(oldest, None)


class IncidentView:
    """Follows the state topic (and the submitted reports) in a background thread; lookups
    answer from memory.

    ``ready()`` is true once everything that was on the topics when the view (re)connected has
    been read, so 'unknown incident' or 'unknown code' means unknown, not 'not read yet'. Read
    with ``read_committed``: the escalator writes state inside transactions, and a state from an
    aborted transaction never happened.
    """

    def __init__(
        self,
        bootstrap: str,
        topic_prefix: str = "",
        poll_ms: int = 500,
        retry_s: float = 2.0,
        follow_reports: bool = True,
        max_pending_codes: int = MAX_PENDING_CODES,
    ) -> None:
        self._topic = ESCALATION_STATE.name(topic_prefix)
        self._reports_topic = REPORTS_SUBMITTED.name(topic_prefix) if follow_reports else None
        self._index = StatusIndex(max_pending_codes)
        # A broker that is away (at start or later) is waited for, not fatal: the intake keeps
        # taking reports meanwhile, and the page says 'status not available'.
        self._follower = TopicFollower(
            bootstrap,
            [self._topic] + ([self._reports_topic] if self._reports_topic else []),
            self._apply,
            "incident-view",
            poll_ms,
            retry_s,
        )

    def get(self, incident_id: str) -> EscalationState | None:
        return self._index.get(incident_id)

    def find_code(self, code: str) -> CodeStatus | None:
        return self._index.find_code(code)

    def note_submitted(self, submitted: ReportSubmitted) -> None:
        self._index.note_submitted(submitted)

    def find_claim(self, key_id: str, now: datetime) -> Remembered | None:
        return self._index.claims.find(key_id, now)

    def ready(self) -> bool:
        return self._follower.caught_up()

    def wait_ready(self, timeout_s: float) -> bool:
        return self._follower.wait_caught_up(timeout_s)

    def __len__(self) -> int:
        return len(self._index)

    def start(self) -> None:
        self._follower.start()

    def close(self, timeout_s: float = 10.0) -> None:
        self._follower.close(timeout_s)

    def _apply(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int, offset: int
    ) -> None:
        if topic == self._reports_topic:
            self._apply_report(value, partition, offset)
            return
        if value is None:
            # A tombstone: the escalator has forgotten this incident.
            if key is not None:
                self._index.forget(key.decode("utf-8", "replace"))
            return
        try:
            state = EscalationState.model_validate_json(value)
        except ValidationError as exc:
            self._skipped(topic, partition, offset, exc)
            return
        self._index.apply_state(state)

    def _apply_report(self, value: bytes | None, partition: int, offset: int) -> None:
        if value is None:
            return
        try:
            head = _SubmittedHead.model_validate_json(value)
        except ValidationError as exc:
            self._skipped(self._reports_topic or "", partition, offset, exc)
            return
        self._index.apply_submitted(head)

    @staticmethod
    def _skipped(topic: str, partition: int, offset: int, exc: ValidationError) -> None:
        # Only the position and the error count: the value may hold the child's report.
        log.warning(
            "record at %s/%d offset %d skipped: %d problem(s)",
            topic,
            partition,
            offset,
            exc.error_count(),
        )
