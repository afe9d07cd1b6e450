"""The audit writer: copy audit events and accepted reports from Kafka into the audit trail.

Offsets are committed only after the database transaction holding the batch has committed, so
a crash replays the batch; ``store.record`` skips event ids it already has, making the replay
harmless. Accepted reports become ``received`` events here (without text or contact details) so
the trail starts the moment a report is accepted, whatever happens to it downstream. Dead
letters of every stage become ``dead_lettered`` events on the trail of their incident, when the
stage could tell which incident it was.

A database that cannot be reached pauses the writer (nothing is dead-lettered, nothing is lost);
a row the database refuses, or an event whose recording raises, is dead-lettered and the writer
goes on with the next one.

Threading model: ``AuditWriter.run(stop)`` blocks until ``stop`` (a ``threading.Event``) is set;
run it in its own thread.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from consumers.audit.store import migrate, record
from consumers.dead_letters import DeadLetters, Reason
from consumers.kafka_io import (
    ConsumerConfig,
    Handled,
    Outgoing,
    RecordLike,
    Unavailable,
    run_consumer,
    to_json,
    validation_reason,
)
from consumers.metrics_registry import PerRegistry
from schemas.audit import AuditEvent, AuditEventType, DeadLetter
from schemas.ids import event_id, incident_id_for_report
from schemas.reports import ReportSubmitted
from schemas.topics import AUDIT_EVENTS, DEAD_LETTER, REPORTS_SUBMITTED

log = logging.getLogger("escalate.audit")

STAGE = "audit"
RACE_RETRIES = 5
MAX_REASON_CHARS = 300


@dataclass(frozen=True)
class AuditConfig:
    topic_prefix: str = ""
    app_id: str = "escalate"
    max_poll_records: int = 200
    migrate_on_start: bool = True


class AuditMetrics:
    """Labels come from AuditEventType only."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "escalate_audit_events",
            "Audit events newly written to the audit trail, by event type.",
            ["event"],
            registry=registry,
        )
        self.duplicates = Counter(
            "escalate_audit_duplicates",
            "Audit events skipped because their event id was already stored (replays).",
            ["event"],
            registry=registry,
        )


metrics_for = PerRegistry(AuditMetrics)


def received_event(submitted: ReportSubmitted) -> AuditEvent:
    """The first fact about a report: when and how it arrived. No text, no contact details."""
    incident_id = incident_id_for_report(submitted.report_id)
    return AuditEvent(
        event_id=event_id(incident_id, AuditEventType.received.value, submitted.report_id),
        incident_id=incident_id,
        event=AuditEventType.received,
        at=submitted.received_at,
        report_ids=[submitted.report_id],
        tracking_codes=[submitted.tracking_code],
        detail={
            "channel": submitted.report.channel.value,
            "reporter_role": submitted.report.reporter_role.value,
            "school_code": submitted.report.school_code,
            "intake_client": submitted.intake_client,
        },
    )


def dead_lettered_event(letter: DeadLetter) -> AuditEvent | None:
    """A dead letter on its incident's trail: which stage set which message aside, and why.

    The payload stays in the dead-letter topic; validation reasons name fields, never values.
    """
    if letter.incident_id is None:
        return None
    return AuditEvent(
        event_id=event_id(
            letter.incident_id,
            AuditEventType.dead_lettered.value,
            letter.stage,
            letter.source_topic,
            str(letter.partition),
            str(letter.offset),
        ),
        incident_id=letter.incident_id,
        event=AuditEventType.dead_lettered,
        at=letter.at,
        detail={
            "stage": letter.stage,
            "source_topic": letter.source_topic,
            "partition": letter.partition,
            "offset": letter.offset,
            "reason": letter.reason[:MAX_REASON_CHARS],
        },
    )


class UnusableMessage(ValueError):
    """A message that can never become an audit event; it goes to the dead-letter topic."""


class AuditWriter:
    """Consumes AUDIT_EVENTS, REPORTS_SUBMITTED and DEAD_LETTER into the audit database."""

    name = STAGE
    one_by_one = False

    def __init__(
        self,
        config: AuditConfig,
        engine: Engine,
        *,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.config = config
        self.engine = engine
        self.registry = registry
        self.metrics = metrics_for(registry)
        self.dead_letters = DeadLetters(STAGE, registry)
        prefix = config.topic_prefix
        self.audit_topic = AUDIT_EVENTS.name(prefix)
        self.reports_topic = REPORTS_SUBMITTED.name(prefix)
        self.dead_letter_topic = DEAD_LETTER.name(prefix)
        self.group_id = f"{config.app_id}-audit"

    # ---- the core: a batch of records in, rows written, dead letters out ----

    def to_event(self, record: RecordLike) -> AuditEvent | None:
        """Parse one record by its topic; None when there is nothing to record.

        UnusableMessage says why a record can never be recorded.
        """
        if record.value is None:
            raise UnusableMessage("empty message (tombstone)")
        try:
            if record.topic == self.audit_topic:
                return AuditEvent.model_validate_json(record.value)
            if record.topic == self.reports_topic:
                return received_event(ReportSubmitted.model_validate_json(record.value))
            if record.topic == self.dead_letter_topic:
                letter = DeadLetter.model_validate_json(record.value)
                if letter.source_topic == self.dead_letter_topic:
                    # A dead letter about a dead letter: recording it could fail the same way
                    # again, round and round. It stays in the topic, counted, for a person.
                    return None
                return dead_lettered_event(letter)
        except ValidationError as exc:
            raise UnusableMessage(validation_reason(exc)) from exc
        raise UnusableMessage(f"unexpected topic {record.topic}")

    def handle_batch(self, records: Iterable[RecordLike]) -> list[Outgoing]:
        """Write the batch in one transaction; return dead letters still to be published.

        Raises Unavailable when the database cannot be reached, so the batch is retried.
        """
        dead: list[Outgoing] = []
        items: list[tuple[RecordLike, AuditEvent]] = []
        for rec in records:
            try:
                event = self.to_event(rec)
            except UnusableMessage as exc:
                dead.append(self._letter(rec, Reason.unparseable, str(exc)))
                continue
            if event is not None:
                items.append((rec, event))
        if not items:
            return dead
        try:
            self._write([event for _, event in items])
        except (DBAPIError, SQLAlchemyError):
            # Something in the batch is unacceptable to the database: find it, write the rest.
            for rec, event in items:
                try:
                    self._write([event])
                except (DBAPIError, SQLAlchemyError) as exc:
                    reason = f"database rejected the event: {type(exc).__name__}"
                    dead.append(self._letter(rec, Reason.rejected, reason))
        return dead

    def _write(self, events: list[AuditEvent]) -> None:
        """One transaction; retried when another writer extended the same chain first."""
        for attempt in range(1, RACE_RETRIES + 1):
            written: Tally[str] = Tally()
            skipped: Tally[str] = Tally()
            try:
                with Session(self.engine) as session, session.begin():
                    for event in events:
                        (written if record(session, event) else skipped)[event.event.value] += 1
            except OperationalError as exc:
                # Never str(exc) for database errors: SQLAlchemy puts the bound parameters in it.
                raise Unavailable(f"audit database unavailable: {type(exc).__name__}") from exc
            except IntegrityError:
                if attempt == RACE_RETRIES:
                    raise
                log.info("audit chain race, retrying the transaction (attempt %d)", attempt)
                continue
            for name, count in written.items():
                self.metrics.events.labels(event=name).inc(count)
            for name, count in skipped.items():
                self.metrics.duplicates.labels(event=name).inc(count)
            return

    def _letter(self, record: RecordLike, reason: Reason, detail: str) -> Outgoing:
        letter = self.dead_letters.of(record, reason, detail, self.incident_of(record))
        return Outgoing(self.dead_letter_topic, record.key, to_json(letter))

    # ---- the stage, as the consumer loop sees it ----

    def handle(self, records: Sequence[RecordLike], stop: threading.Event) -> Iterator[Handled]:
        yield Handled(records, self.handle_batch(records))

    def incident_of(self, record: RecordLike) -> str | None:
        if record.key is None or record.topic == self.dead_letter_topic:
            return None
        key = record.key.decode("utf-8", "replace")
        return incident_id_for_report(key) if record.topic == self.reports_topic else key

    def on_poison(self, record: RecordLike, exc: Exception) -> list[Outgoing]:
        return []

    def run(self, bootstrap_servers: str, stop: threading.Event) -> None:
        """Consume until ``stop`` is set. Blocking: run it in a thread of its own."""
        if self.config.migrate_on_start:
            migrate(self.engine)
        config = ConsumerConfig(
            bootstrap_servers=bootstrap_servers,
            group_id=self.group_id,
            topics=(self.audit_topic, self.reports_topic, self.dead_letter_topic),
            dead_letter_topic=self.dead_letter_topic,
            max_poll_records=self.config.max_poll_records,
        )
        run_consumer(config, self, stop, self.registry)
