"""The notifier: read notification requests from Kafka, e-mail each recipient, record the outcome.

Delivery is at-least-once. For each request the outcome (a DeliveryResult, an AuditEvent and,
on failure, a DeadLetter) is written and acknowledged by the broker before the request's offset
is committed. A crash in between means the request is handled again; the Message-ID and every
event id are deterministic, so mail clients and the audit writer recognise the repeat.

Threading model: ``Notifier.run(stop)`` is a blocking loop meant for its own thread; it returns
soon after ``stop`` (a ``threading.Event``) is set, also cutting short any retry backoff. SMTP
sends are async (aiosmtplib) and run on a private event loop owned by the notifier.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from pydantic import ValidationError

from consumers.kafka_io import (
    Outgoing,
    RecordLike,
    dead_letter_for,
    publish,
    rewind,
    to_json,
    validation_reason,
)
from consumers.metrics_registry import PerRegistry
from consumers.notifier.render import message_id_for, render_email
from consumers.notifier.sender import SendError, classify, send
from escalate.settings import Settings
from schemas.audit import AuditEvent, AuditEventType
from schemas.common import Severity, Tier, utcnow
from schemas.ids import event_id
from schemas.notifications import DeliveryResult, DeliveryStatus, NotificationRequest
from schemas.topics import AUDIT_EVENTS, DEAD_LETTER, NOTIFICATIONS_REQUESTED, NOTIFICATIONS_RESULTS

log = logging.getLogger("escalate.notifier")

STAGE = "notifier"
MAX_BACKOFF_S = 300.0

SendFn = Callable[[EmailMessage, Settings], Awaitable[None]]


class NotifierMetrics:
    """Counters with labels from fixed vocabularies only (tier, status, reason): never ids."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.notifications = Counter(
            "escalate_notifications",
            "Notification requests finished, by recipient tier, severity and final status.",
            ["tier", "severity", "status"],
            registry=registry,
        )
        # Known combinations start at zero so increase() sees the very first failure.
        for tier in Tier:
            for severity in Severity:
                for status in DeliveryStatus:
                    self.notifications.labels(
                        tier=tier.value, severity=severity.value, status=status.value
                    )
        self.attempts = Counter(
            "escalate_notification_attempts",
            "SMTP delivery attempts, by tier and outcome (delivered, transient, permanent).",
            ["tier", "outcome"],
            registry=registry,
        )
        self.send_seconds = Histogram(
            "escalate_notification_send_seconds",
            "Time spent in one SMTP delivery attempt.",
            ["tier"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "escalate_notifier_dead_letters",
            "Messages the notifier sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )


metrics_for = PerRegistry(NotifierMetrics)


def _print_line(line: str) -> None:
    # Flushed: under `escalate up` stdout may be a pipe, and the line matters now, not later.
    print(line, flush=True)


class Notifier:
    """Consumes NOTIFICATIONS_REQUESTED and delivers each request by e-mail.

    ``bootstrap_servers`` overrides ``settings.kafka_bootstrap_servers`` (the composition root
    passes the local broker's address when it started one). ``send_fn`` replaces the SMTP send
    in tests. ``console`` receives the one-line summaries when ``print_deliveries`` is on.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        bootstrap_servers: str | None = None,
        registry: CollectorRegistry = REGISTRY,
        print_deliveries: bool = False,
        console: Callable[[str], None] = _print_line,
        send_fn: SendFn = send,
        poll_timeout_ms: int = 500,
        max_poll_records: int = 10,
    ) -> None:
        self.settings = settings
        self.bootstrap_servers = bootstrap_servers or settings.kafka_bootstrap_servers
        self.print_deliveries = print_deliveries
        self.console = console
        self.send_fn = send_fn
        self.poll_timeout_ms = poll_timeout_ms
        self.max_poll_records = max_poll_records
        self.metrics = metrics_for(registry)
        prefix = settings.topic_prefix
        self.source_topic = NOTIFICATIONS_REQUESTED.name(prefix)
        self.results_topic = NOTIFICATIONS_RESULTS.name(prefix)
        self.audit_topic = AUDIT_EVENTS.name(prefix)
        self.dead_letter_topic = DEAD_LETTER.name(prefix)
        self.group_id = f"{settings.app_id}-notifier"
        self._runner: asyncio.Runner | None = None

    # ---- the core: one record in, the messages to publish out ----

    def handle(
        self, record: RecordLike, stop: threading.Event | None = None
    ) -> list[Outgoing] | None:
        """Deliver one request and return what must be published before committing its offset.

        Returns None when ``stop`` was set during a retry backoff: the request is left
        uncommitted so the next run picks it up again.
        """
        if record.value is None:
            return [self._dead_letter(record, "unparseable", "empty message (tombstone)")]
        try:
            req = NotificationRequest.model_validate_json(record.value)
        except ValidationError as exc:
            return [self._dead_letter(record, "unparseable", validation_reason(exc))]

        outcome = self._deliver(req, stop)
        if outcome is None:
            return None
        attempts, error = outcome
        return self._outcome_messages(record, req, attempts, error)

    def _dead_letter(self, record: RecordLike, label: str, reason: str) -> Outgoing:
        self.metrics.dead_letters.labels(reason=label).inc()
        log.warning(
            "dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason
        )
        return dead_letter_for(record, self.dead_letter_topic, STAGE, reason)

    def _deliver(
        self, req: NotificationRequest, stop: threading.Event | None
    ) -> tuple[int, SendError | None] | None:
        """Try up to notify_max_attempts times with exponential backoff.

        Returns (attempts, None) on success, (attempts, error) on giving up, None if stopped.
        """
        tier = req.recipient.tier.value
        max_attempts = max(1, self.settings.notify_max_attempts)
        msg = render_email(req, self.settings.smtp_sender)
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                self._run_async(self.send_fn(msg, self.settings))
            except Exception as exc:
                error = classify(exc)
                self.metrics.send_seconds.labels(tier=tier).observe(time.monotonic() - started)
                self.metrics.attempts.labels(tier=tier, outcome=error.kind).inc()
                log.warning(
                    "attempt %d/%d to notify incident=%s tier=%s recipient=%s step=%d failed"
                    " (%s): %s",
                    attempt,
                    max_attempts,
                    req.incident_id,
                    tier,
                    req.recipient.email,
                    req.step,
                    error.kind,
                    error.reason,
                )
                if not error.transient or attempt >= max_attempts:
                    return attempt, error
                delay = min(MAX_BACKOFF_S, self.settings.notify_backoff_s * 2.0 ** (attempt - 1))
                if stop is not None:
                    if stop.wait(delay):
                        return None
                else:
                    time.sleep(delay)
                continue
            self.metrics.send_seconds.labels(tier=tier).observe(time.monotonic() - started)
            self.metrics.attempts.labels(tier=tier, outcome="delivered").inc()
            return attempt, None

    def _run_async(self, coro: Awaitable[None]) -> None:
        if self._runner is None:
            self._runner = asyncio.Runner()
        self._runner.run(_as_coroutine(coro))

    def _outcome_messages(
        self, record: RecordLike, req: NotificationRequest, attempts: int, error: SendError | None
    ) -> list[Outgoing]:
        now = utcnow()
        message_id = message_id_for(req)
        status = DeliveryStatus.delivered if error is None else DeliveryStatus.failed
        result = DeliveryResult(
            notification_id=req.notification_id,
            incident_id=req.incident_id,
            tier=req.recipient.tier,
            recipient_email=req.recipient.email,
            step=req.step,
            status=status,
            attempts=attempts,
            at=now,
            message_id=message_id,
            error=None if error is None else error.reason,
        )
        event_type = AuditEventType.notified if error is None else AuditEventType.notify_failed
        # Only routing facts: never the description or the reporter's contact details.
        detail: dict[str, Any] = {
            "tier": req.recipient.tier.value,
            "recipient": req.recipient.email,
            "message_id": message_id,
            "step": req.step,
            "attempts": attempts,
            "notification_id": req.notification_id,
            "severity": req.severity.value,
        }
        if error is not None:
            detail["error"] = error.reason
            detail["error_kind"] = error.kind
        audit = AuditEvent(
            event_id=event_id(req.incident_id, event_type.value, req.notification_id),
            incident_id=req.incident_id,
            event=event_type,
            at=now,
            report_ids=req.report_ids,
            tracking_codes=req.tracking_codes,
            detail=detail,
        )
        key = req.incident_id.encode("utf-8")
        out = [
            Outgoing(self.results_topic, key, to_json(result)),
            Outgoing(self.audit_topic, key, to_json(audit)),
        ]
        self.metrics.notifications.labels(
            tier=req.recipient.tier.value, severity=req.severity.value, status=status.value
        ).inc()
        if error is None:
            log.info(
                "notified incident=%s tier=%s recipient=%s step=%d attempts=%d message_id=%s",
                req.incident_id,
                req.recipient.tier.value,
                req.recipient.email,
                req.step,
                attempts,
                message_id,
            )
            self._say(req, "notified")
        else:
            out.append(
                self._dead_letter(record, "notify_failed", f"notification failed: {error.reason}")
            )
            log.error(
                "gave up notifying incident=%s tier=%s recipient=%s step=%d after %d attempt(s)"
                " (%s)",
                req.incident_id,
                req.recipient.tier.value,
                req.recipient.email,
                req.step,
                attempts,
                error.kind,
            )
            self._say(req, f"FAILED ({error.kind}) to notify")
        return out

    def _say(self, req: NotificationRequest, verb: str) -> None:
        if self.print_deliveries:
            self.console(
                f"{verb} {req.recipient.tier.value} {req.recipient.email} about"
                f" {req.incident_id} ({req.severity.value})"
            )

    # ---- the Kafka loop ----

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set. Blocking: run it in a thread of its own."""
        if not self.bootstrap_servers:
            raise ValueError("Notifier needs Kafka bootstrap servers")
        from kafka import KafkaConsumer, KafkaProducer

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.group_id,
            client_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=self.max_poll_records,
            # A request may spend several SMTP timeouts plus backoff; leave room for a batch.
            max_poll_interval_ms=max(300_000, int(self._worst_case_s() * 1000) + 60_000),
        )
        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.group_id,
            acks="all",
            enable_idempotence=True,
        )
        try:
            consumer.subscribe([self.source_topic])
            log.info("notifier consuming %s as group %s", self.source_topic, self.group_id)
            while not stop.is_set():
                batch = consumer.poll(timeout_ms=self.poll_timeout_ms)
                if batch:
                    self._process_batch(consumer, producer, batch, stop)
        finally:
            consumer.close(autocommit=False)
            producer.close(timeout=10)
            if self._runner is not None:
                self._runner.close()
                self._runner = None

    def _worst_case_s(self) -> float:
        attempts = max(1, self.settings.notify_max_attempts)
        backoff = sum(
            min(MAX_BACKOFF_S, self.settings.notify_backoff_s * 2.0**i) for i in range(attempts - 1)
        )
        # aiosmtplib applies the timeout per step; budget a few steps per attempt.
        return self.max_poll_records * (attempts * 4 * self.settings.smtp_timeout_s + backoff)

    def _process_batch(
        self, consumer: Any, producer: Any, batch: dict[Any, list[Any]], stop: threading.Event
    ) -> None:
        from kafka import OffsetAndMetadata
        from kafka.errors import CommitFailedError, KafkaError

        # Offset of the first record not yet committed, per partition: where to rewind on abort.
        pending = {tp: records[0].offset for tp, records in batch.items() if records}
        try:
            for tp, records in batch.items():
                for record in records:
                    if stop.is_set():
                        return
                    outgoing = self.handle(record, stop)
                    if outgoing is None:
                        return
                    publish(producer, outgoing)
                    consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "", -1)})
                    pending[tp] = record.offset + 1
                pending.pop(tp, None)
        except CommitFailedError as exc:
            log.warning("commit failed, the group rebalanced; will re-read: %s", exc)
        except KafkaError as exc:
            log.error("publishing or committing failed; will retry: %s", exc)
            stop.wait(min(MAX_BACKOFF_S, max(1.0, self.settings.notify_backoff_s)))
        finally:
            rewind(consumer, pending)


async def _as_coroutine(awaitable: Awaitable[None]) -> None:
    await awaitable
