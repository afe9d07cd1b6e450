"""The notifier: read notification requests from Kafka, e-mail each recipient, record the outcome.

Delivery is at-least-once. For each request the outcome (a DeliveryResult, an AuditEvent and,
on failure, a DeadLetter) is written and acknowledged by the broker before the request's offset
is committed. A crash in between means the request is handled again; the Message-ID and every
event id are deterministic, so mail clients and the audit writer recognise the repeat.

A request that cannot be delivered (refused for good, or one whose handling raised) is
dead-lettered and, when its incident is critical, the city office's intake desk gets a plain
mail with only the incident id and severity: a dead letter must still reach a person. A relay
that cannot be reached at all is not the request's fault: the notifier pauses and tries again.

Threading model: ``Notifier.run(stop)`` is a blocking loop meant for its own thread; it returns
soon after ``stop`` (a ``threading.Event``) is set, also cutting short any retry backoff. SMTP
sends are async (aiosmtplib) and run on a private event loop owned by the notifier.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from pydantic import ValidationError

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
from consumers.notifier.delivery import delivery_outcome, fallback_audit
from consumers.notifier.render import render_email, render_fallback_email
from consumers.notifier.retry import RetryPolicy, Stopped, deliver_with_retries
from consumers.notifier.sender import SendError, SmtpConfig, send
from schemas.common import Severity, Tier, utcnow
from schemas.links import LinkClaims, LinkPurpose, LinkSigner, action_url
from schemas.notifications import DeliveryStatus, NotificationKind, NotificationRequest
from schemas.topics import AUDIT_EVENTS, DEAD_LETTER, NOTIFICATIONS_REQUESTED, NOTIFICATIONS_RESULTS

log = logging.getLogger("escalate.notifier")

STAGE = "notifier"

SendFn = Callable[[EmailMessage, SmtpConfig], Awaitable[None]]


@dataclass(frozen=True)
class LinkConfig:
    """How to sign the personal action link each mail carries (schemas/links.py)."""

    secret_key: str
    public_url: str


@dataclass(frozen=True)
class NotifierConfig:
    """Everything the notifier needs, and nothing else (the composition root fills it in)."""

    smtp: SmtpConfig
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    topic_prefix: str = ""
    app_id: str = "escalate"
    #: who hears of a dead-lettered notification about a critical incident (the city office's
    #: intake desk in the directory)
    fallback_recipients: tuple[str, ...] = ()
    max_poll_records: int = 10
    links: LinkConfig | None = None
    #: how many delivered notification ids to remember, so a request repeated by a replay or
    #: a duplicated escalation step is not mailed twice by this process
    remember_delivered: int = 50_000


class NotifierMetrics:
    """Counters with labels from fixed vocabularies only (tier, status, outcome): never ids."""

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
        self.fallback = Counter(
            "escalate_fallback_mails",
            "Plain mails to the city intake desk about dead-lettered critical notifications,"
            " by outcome (delivered, failed, no_recipient).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("delivered", "failed", "no_recipient"):
            self.fallback.labels(outcome=outcome)
        self.duplicates = Counter(
            "escalate_notifications_skipped_duplicates",
            "Requests not mailed because the same notification id was delivered already.",
            registry=registry,
        )


metrics_for = PerRegistry(NotifierMetrics)


def _print_line(line: str) -> None:
    # Flushed: under `escalate up` stdout may be a pipe, and the line matters now, not later.
    print(line, flush=True)


def _lenient_facts(value: bytes | None) -> tuple[str | None, Severity | None]:
    """Incident id and severity from a request that failed to parse or to be handled.

    A message broken elsewhere may still say it is critical, and then the desk must hear of it.
    """
    try:
        data = json.loads(value or b"")
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    incident = data.get("incident_id")
    severity = data.get("severity")
    critical = severity == Severity.critical.value or data.get("immediate_danger") is True
    return (
        incident if isinstance(incident, str) else None,
        Severity.critical if critical else None,
    )


class Notifier:
    """Consumes NOTIFICATIONS_REQUESTED and delivers each request by e-mail.

    ``send_fn`` replaces the SMTP send in tests. ``console`` receives the one-line summaries when
    ``print_deliveries`` is on.
    """

    name = STAGE
    one_by_one = True

    def __init__(
        self,
        config: NotifierConfig,
        *,
        registry: CollectorRegistry = REGISTRY,
        print_deliveries: bool = False,
        console: Callable[[str], None] = _print_line,
        send_fn: SendFn = send,
    ) -> None:
        self.config = config
        self.registry = registry
        self.print_deliveries = print_deliveries
        self.console = console
        self.send_fn = send_fn
        self.metrics = metrics_for(registry)
        self.dead_letters = DeadLetters(STAGE, registry)
        prefix = config.topic_prefix
        self.source_topic = NOTIFICATIONS_REQUESTED.name(prefix)
        self.results_topic = NOTIFICATIONS_RESULTS.name(prefix)
        self.audit_topic = AUDIT_EVENTS.name(prefix)
        self.dead_letter_topic = DEAD_LETTER.name(prefix)
        self.group_id = f"{config.app_id}-notifier"
        self._runner: asyncio.Runner | None = None
        self._signer = LinkSigner(config.links.secret_key) if config.links else None
        self._delivered: OrderedDict[str, None] = OrderedDict()
        self._desk_told: OrderedDict[str, None] = OrderedDict()  # incidents the desk heard of
        self._last_delivered: str | None = None

    def _link(self, req: NotificationRequest) -> str | None:
        if self._signer is None or self.config.links is None:
            return None
        token = self._signer.sign(
            LinkClaims(
                incident_id=req.incident_id,
                recipient=req.recipient.email,
                tier=req.recipient.tier,
                purpose=LinkPurpose.review
                if req.kind is NotificationKind.review
                else LinkPurpose.act,
            )
        )
        return action_url(self.config.links.public_url, token)

    def _remember(self, notification_id: str) -> None:
        self._delivered[notification_id] = None
        while len(self._delivered) > self.config.remember_delivered:
            self._delivered.popitem(last=False)

    # ---- one request ----

    def deliver(
        self, record: RecordLike, stop: threading.Event | None = None
    ) -> list[Outgoing] | None:
        """Deliver one request and return what must be published before committing its offset.

        Returns None when ``stop`` was set during a retry backoff: the request is left
        uncommitted so the next run picks it up again. Raises Unavailable when the relay
        could not be reached in any attempt.
        """
        if record.value is None:
            return self._unusable(record, "empty message (tombstone)")
        try:
            req = NotificationRequest.model_validate_json(record.value)
        except ValidationError as exc:
            return self._unusable(record, validation_reason(exc))

        if req.notification_id in self._delivered:
            # Delivered and committed already (a replay, or a step taken twice by a fenced
            # escalator): the recipient has this mail; the trail has its record.
            self.metrics.duplicates.inc()
            log.info("skipped already delivered notification %s", req.notification_id)
            return []
        msg = render_email(req, self.config.smtp.sender, action_url=self._link(req))
        tier = req.recipient.tier.value

        def observe(attempt: int, error: SendError | None) -> None:
            self.metrics.attempts.labels(
                tier=tier, outcome=error.kind if error else "delivered"
            ).inc()
            if error is not None:
                log.warning(
                    "attempt %d/%d to notify incident=%s tier=%s recipient=%s step=%d failed"
                    " (%s): %s",
                    attempt,
                    self.config.retry.attempts,
                    req.incident_id,
                    tier,
                    req.recipient.email,
                    req.step,
                    error.kind,
                    error.reason,
                )

        try:
            with self.metrics.send_seconds.labels(tier=tier).time():
                attempts = deliver_with_retries(
                    lambda: self._run_async(self.send_fn(msg, self.config.smtp)),
                    self.config.retry,
                    wait=(stop or threading.Event()).wait,
                    observe=observe,
                )
        except Stopped:
            return None
        if attempts.error is not None and attempts.error.unreachable:
            raise Unavailable(f"SMTP relay unreachable: {attempts.error.reason}")
        return self._outcome_messages(record, req, attempts.count, attempts.error)

    def _unusable(self, record: RecordLike, reason: str) -> list[Outgoing]:
        incident = self.incident_of(record)
        _, severity = _lenient_facts(record.value)
        out = [self._letter(record, Reason.unparseable, reason, incident)]
        if severity is Severity.critical and incident:
            out += self._fallback(incident, severity)
        return out

    def _letter(
        self, record: RecordLike, reason: Reason, detail: str, incident_id: str | None
    ) -> Outgoing:
        letter = self.dead_letters.of(record, reason, detail, incident_id)
        return Outgoing(self.dead_letter_topic, record.key, to_json(letter))

    def _run_async(self, coro: Awaitable[None]) -> None:
        if self._runner is None:
            self._runner = asyncio.Runner()
        self._runner.run(_as_coroutine(coro))

    def _outcome_messages(
        self, record: RecordLike, req: NotificationRequest, attempts: int, error: SendError | None
    ) -> list[Outgoing]:
        outcome = delivery_outcome(req, attempts, error, utcnow())
        key = req.incident_id.encode("utf-8")
        out = [
            Outgoing(self.results_topic, key, to_json(outcome.result)),
            Outgoing(self.audit_topic, key, to_json(outcome.audit)),
        ]
        self.metrics.notifications.labels(
            tier=req.recipient.tier.value,
            severity=req.severity.value,
            status=outcome.result.status.value,
        ).inc()
        if error is None:
            self._last_delivered = req.notification_id
            log.info(
                "notified incident=%s tier=%s recipient=%s step=%d attempts=%d message_id=%s",
                req.incident_id,
                req.recipient.tier.value,
                req.recipient.email,
                req.step,
                attempts,
                outcome.result.message_id,
            )
            self._say(req, "notified")
            return out
        out.append(
            self._letter(
                record,
                Reason.undeliverable,
                f"notification failed: {error.reason}",
                req.incident_id,
            )
        )
        log.error(
            "gave up notifying incident=%s tier=%s recipient=%s step=%d after %d attempt(s) (%s)",
            req.incident_id,
            req.recipient.tier.value,
            req.recipient.email,
            req.step,
            attempts,
            error.kind,
        )
        self._say(req, f"FAILED ({error.kind}) to notify")
        if req.severity is Severity.critical or req.immediate_danger:
            out += self._fallback(req.incident_id, Severity.critical)
        return out

    def _fallback(self, incident_id: str, severity: Severity) -> list[Outgoing]:
        """Tell the intake desk, in a mail that cannot fail to render, that a person is missing."""
        recipients = list(self.config.fallback_recipients)
        if incident_id in self._desk_told:
            # Several recipients of one incident may fail together; the desk needs one mail.
            return []
        if not recipients:
            self.metrics.fallback.labels(outcome="no_recipient").inc()
            log.error("no fallback recipient configured for incident=%s", incident_id)
            return []
        msg = render_fallback_email(incident_id, severity, self.config.smtp.sender, recipients)
        attempts = deliver_with_retries(
            lambda: self._run_async(self.send_fn(msg, self.config.smtp)),
            RetryPolicy(max_attempts=3, backoff_s=self.config.retry.backoff_s),
            wait=threading.Event().wait,
        )
        delivered = attempts.error is None
        if delivered:
            self._desk_told[incident_id] = None
            while len(self._desk_told) > self.config.remember_delivered:
                self._desk_told.popitem(last=False)
        self.metrics.fallback.labels(outcome="delivered" if delivered else "failed").inc()
        if delivered:
            log.warning("intake desk told of undelivered notification, incident=%s", incident_id)
        else:
            log.error("could not tell the intake desk either, incident=%s", incident_id)
        audit = fallback_audit(incident_id, severity, recipients, delivered, utcnow())
        return [Outgoing(self.audit_topic, incident_id.encode("utf-8"), to_json(audit))]

    def _say(self, req: NotificationRequest, verb: str) -> None:
        if self.print_deliveries:
            self.console(
                f"{verb} {req.recipient.tier.value} {req.recipient.email} about"
                f" {req.incident_id} ({req.severity.value})"
            )

    # ---- the stage, as the consumer loop sees it ----

    def handle(self, records: Sequence[RecordLike], stop: threading.Event) -> Iterator[Handled]:
        for record in records:
            if stop.is_set():
                return
            self._last_delivered = None
            out = self.deliver(record, stop)
            if out is None:
                return
            delivered = self._last_delivered
            yield Handled([record], out)
            # Resumed only after the loop published the outcome and committed the offset.
            if delivered is not None:
                self._remember(delivered)

    def incident_of(self, record: RecordLike) -> str | None:
        """The request's own incident id if it can be read, else its key (the incident id)."""
        incident, _ = _lenient_facts(record.value)
        if incident:
            return incident
        return record.key.decode("utf-8", "replace") if record.key else None

    def on_poison(self, record: RecordLike, exc: Exception) -> list[Outgoing]:
        incident = self.incident_of(record)
        _, severity = _lenient_facts(record.value)
        if severity is Severity.critical and incident:
            return self._fallback(incident, severity)
        return []

    def consumer_config(self, bootstrap_servers: str) -> ConsumerConfig:
        # A request may spend several SMTP timeouts plus backoff; leave room for a batch.
        worst = self.config.max_poll_records * self.config.retry.worst_case_s(
            4 * self.config.smtp.timeout_s
        )
        return ConsumerConfig(
            bootstrap_servers=bootstrap_servers,
            group_id=self.group_id,
            topics=(self.source_topic,),
            dead_letter_topic=self.dead_letter_topic,
            max_poll_records=self.config.max_poll_records,
            max_poll_interval_ms=max(300_000, int(worst * 1000) + 60_000),
        )

    def run(self, bootstrap_servers: str, stop: threading.Event) -> None:
        """Consume until ``stop`` is set. Blocking: run it in a thread of its own."""
        try:
            run_consumer(self.consumer_config(bootstrap_servers), self, stop, self.registry)
        finally:
            if self._runner is not None:
                self._runner.close()
                self._runner = None


async def _as_coroutine(awaitable: Awaitable[None]) -> None:
    await awaitable
