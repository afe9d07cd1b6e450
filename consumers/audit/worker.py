"""The audit writer: copy audit events and accepted reports from Kafka into the audit trail.

Offsets are committed only after the database transaction holding the batch has committed, so
a crash replays the batch; ``store.record`` skips event ids it already has, making the replay
harmless. Accepted reports become ``received`` events here (without text or contact details) so
the trail starts the moment a report is accepted, whatever happens to it downstream.

Threading model: ``AuditWriter.run(stop)`` blocks until ``stop`` (a ``threading.Event``) is set;
run it in its own thread.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter as Tally
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from consumers.audit.store import make_engine, migrate, record
from consumers.kafka_io import (
    Outgoing,
    RecordLike,
    dead_letter_for,
    publish,
    rewind,
    validation_reason,
)
from consumers.metrics_registry import PerRegistry
from escalate.settings import Settings
from schemas.audit import AuditEvent, AuditEventType
from schemas.ids import event_id, incident_id_for_report
from schemas.reports import ReportSubmitted
from schemas.topics import AUDIT_EVENTS, DEAD_LETTER, REPORTS_SUBMITTED

log = logging.getLogger("escalate.audit")

STAGE = "audit"
RACE_RETRIES = 5
FAILURE_BACKOFF_S = 2.0


class AuditMetrics:
    """Labels come from AuditEventType and a fixed list of reasons only."""

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
        self.dead_letters = Counter(
            "escalate_audit_dead_letters",
            "Messages the audit writer sent to the dead-letter topic, by reason.",
            ["reason"],
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


class UnusableMessage(ValueError):
    """A message that can never become an audit event; it goes to the dead-letter topic."""


class AuditWriter:
    """Consumes AUDIT_EVENTS and REPORTS_SUBMITTED into the audit database.

    ``engine`` defaults to one built from ``settings.database_url``; ``migrate_on_start`` runs
    the Alembic migrations before consuming. ``bootstrap_servers`` overrides the settings.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        bootstrap_servers: str | None = None,
        engine: Engine | None = None,
        registry: CollectorRegistry = REGISTRY,
        migrate_on_start: bool = True,
        poll_timeout_ms: int = 500,
        max_poll_records: int = 200,
    ) -> None:
        self.settings = settings
        self.bootstrap_servers = bootstrap_servers or settings.kafka_bootstrap_servers
        self.engine = engine if engine is not None else make_engine(settings.database_url)
        self.migrate_on_start = migrate_on_start
        self.poll_timeout_ms = poll_timeout_ms
        self.max_poll_records = max_poll_records
        self.metrics = metrics_for(registry)
        prefix = settings.topic_prefix
        self.audit_topic = AUDIT_EVENTS.name(prefix)
        self.reports_topic = REPORTS_SUBMITTED.name(prefix)
        self.dead_letter_topic = DEAD_LETTER.name(prefix)
        self.group_id = f"{settings.app_id}-audit"

    # ---- the core: a batch of records in, rows written, dead letters out ----

    def to_event(self, record: RecordLike) -> AuditEvent:
        """Parse one record by its topic; UnusableMessage says why it cannot be recorded."""
        if record.value is None:
            raise UnusableMessage("empty message (tombstone)")
        try:
            if record.topic == self.audit_topic:
                return AuditEvent.model_validate_json(record.value)
            if record.topic == self.reports_topic:
                return received_event(ReportSubmitted.model_validate_json(record.value))
        except ValidationError as exc:
            raise UnusableMessage(validation_reason(exc)) from exc
        raise UnusableMessage(f"unexpected topic {record.topic}")

    def handle_batch(self, records: Iterable[RecordLike]) -> list[Outgoing]:
        """Write the batch in one transaction; return dead letters still to be published.

        Raises OperationalError (database unreachable) so the caller retries the whole batch.
        """
        dead: list[Outgoing] = []
        items: list[tuple[RecordLike, AuditEvent]] = []
        for rec in records:
            try:
                items.append((rec, self.to_event(rec)))
            except UnusableMessage as exc:
                dead.append(self._dead_letter(rec, "unparseable", str(exc)))
        if not items:
            return dead
        try:
            self._write([event for _, event in items])
        except OperationalError:
            raise
        except (DBAPIError, SQLAlchemyError):
            # Something in the batch is unacceptable to the database: find it, write the rest.
            for rec, event in items:
                try:
                    self._write([event])
                except OperationalError:
                    raise
                except (DBAPIError, SQLAlchemyError) as exc:
                    reason = f"database rejected the event: {type(exc).__name__}"
                    dead.append(self._dead_letter(rec, "rejected", reason))
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

    def _dead_letter(self, record: RecordLike, label: str, reason: str) -> Outgoing:
        self.metrics.dead_letters.labels(reason=label).inc()
        log.warning(
            "dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason
        )
        return dead_letter_for(record, self.dead_letter_topic, STAGE, reason)

    # ---- the Kafka loop ----

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set. Blocking: run it in a thread of its own."""
        if not self.bootstrap_servers:
            raise ValueError("AuditWriter needs Kafka bootstrap servers")
        from kafka import KafkaConsumer, KafkaProducer

        if self.migrate_on_start:
            migrate(self.engine)
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.group_id,
            client_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=self.max_poll_records,
        )
        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.group_id,
            acks="all",
            enable_idempotence=True,
        )
        try:
            consumer.subscribe([self.audit_topic, self.reports_topic])
            log.info(
                "audit writer consuming %s, %s as group %s",
                self.audit_topic,
                self.reports_topic,
                self.group_id,
            )
            while not stop.is_set():
                batch = consumer.poll(timeout_ms=self.poll_timeout_ms)
                if batch:
                    self._process_batch(consumer, producer, batch, stop)
        finally:
            consumer.close(autocommit=False)
            producer.close(timeout=10)

    def _process_batch(
        self, consumer: Any, producer: Any, batch: dict[Any, list[Any]], stop: threading.Event
    ) -> None:
        from kafka import OffsetAndMetadata
        from kafka.errors import CommitFailedError, KafkaError

        pending = {tp: records[0].offset for tp, records in batch.items() if records}
        try:
            dead = self.handle_batch(r for records in batch.values() for r in records)
            publish(producer, dead)
            consumer.commit(
                {
                    tp: OffsetAndMetadata(records[-1].offset + 1, "", -1)
                    for tp, records in batch.items()
                    if records
                }
            )
            pending.clear()
        except CommitFailedError as exc:
            log.warning("commit failed, the group rebalanced; will re-read: %s", exc)
        except (KafkaError, SQLAlchemyError) as exc:
            # Never str(exc) for database errors: SQLAlchemy puts the bound parameters in it.
            log.error("audit batch not stored, will retry: %s", type(exc).__name__)
            stop.wait(FAILURE_BACKOFF_S)
        finally:
            rewind(consumer, pending)
