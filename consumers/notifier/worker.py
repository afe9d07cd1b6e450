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
sends are async (aiosmtplib) and run on a private event loop owned by the notifier, over a pool
of reused connections (``SmtpPool``).

Throughput: the requests of one poll batch (one partition) are delivered up to
``NotifierConfig.concurrency`` at a time, each with its own retries and backoff. Offsets are
still committed in order: ``handle`` yields the longest run of finished requests at the head of
the batch, so a request that finished early waits, uncommitted, for those before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from pydantic import ValidationError

from consumers.dead_letters import DeadLetters, Reason, describe_failure
from consumers.kafka_io import (
    ConsumerConfig,
    Handled,
    Outgoing,
    RecordLike,
    Unavailable,
    poison_letter,
    run_consumer,
    to_json,
    validation_reason,
)
from consumers.metrics_registry import PerRegistry
from consumers.notifier.chat_alerts import TelegramAlerts
from consumers.notifier.delivery import (
    channel_outcome,
    delivery_outcome,
    fallback_audit,
)
from consumers.notifier.kinds import DeliveryKind, TelegramChats, Webhooks
from consumers.notifier.render import render_email, render_fallback_email
from consumers.notifier.retry import RetryPolicy, Stopped, deliver_with_retries_async
from consumers.notifier.sender import Mail, SendError, SmtpConfig, SmtpPool
from consumers.notifier.webhooks import WebhookSender
from schemas.common import Severity, Tier, utcnow
from schemas.links import LinkClaims, LinkPurpose, LinkSigner, action_url
from schemas.notifications import DeliveryStatus, NotificationKind, NotificationRequest
from schemas.topics import (
    AUDIT_EVENTS,
    DEAD_LETTER,
    NOTIFICATIONS_REQUESTED,
    NOTIFICATIONS_RESULTS,
    NOTIFICATIONS_URGENT,
)

log = logging.getLogger("escalate.notifier")

STAGE = "notifier"

SendFn = Callable[[Mail, SmtpConfig], Awaitable[None]]

#: how often a batch in progress hands its finished head to the loop for publishing and commit
YIELD_EVERY_S = 1.0
#: how often a backoff wait looks at the stop event (a threading.Event cannot wake a coroutine)
STOP_POLL_S = 0.05


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
    #: a batch is delivered up to ``concurrency`` requests at a time, so it may be larger than
    #: when requests went one by one; max_poll_interval_ms is derived from both
    max_poll_records: int = 50
    #: requests of one batch in flight at once, and SMTP connections kept open to the relay
    concurrency: int = 8
    links: LinkConfig | None = None
    #: how many delivered notification ids to remember, so a request repeated by a replay or
    #: a duplicated escalation step is not mailed twice by this process
    remember_delivered: int = 50_000
    #: which lane this notifier serves: "normal" (notifications.requested) or "urgent"
    #: (notifications.urgent: critical, or danger ticked), each its own consumer group, so a
    #: backlog of lesser mail never delays an urgent one
    lane: Literal["normal", "urgent"] = "normal"
    #: the webhook signing secrets by the names the directory gives them (``secret_env``)
    webhook_secrets: Mapping[str, str] = field(default_factory=dict)
    #: the bot that alerts duty chats (``telegram_chat_ids`` in the directory); empty: none
    telegram_token: str = ""
    telegram_api_base: str = "https://api.telegram.org"


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
        self.report_to_mail = Histogram(
            "escalate_report_to_notification_seconds",
            "From the report's acceptance to the relay's acceptance of a first notice about it,"
            " by severity (reminders and escalations wait for deadlines and are left out).",
            ["severity"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900),
            registry=registry,
        )
        self.duplicates = Counter(
            "escalate_notifications_skipped_duplicates",
            "Requests not mailed because the same notification id was delivered already.",
            registry=registry,
        )
        self.beside_mail = Counter(
            "escalate_channel_deliveries",
            "Deliveries beside the mail (webhook, telegram) finished, by channel, recipient "
            "tier and final status.",
            ["channel", "tier", "status"],
            registry=registry,
        )
        for channel in ("webhook", "telegram"):
            for tier in Tier:
                for status in DeliveryStatus:
                    self.beside_mail.labels(channel=channel, tier=tier.value, status=status.value)


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
    """Consumes one lane (NOTIFICATIONS_REQUESTED or NOTIFICATIONS_URGENT) and delivers each
    request by e-mail.

    ``send_fn`` replaces the pooled SMTP send in tests. ``console`` receives the one-line
    summaries when ``print_deliveries`` is on.
    """

    name = STAGE
    # Requests finish out of order and a request that raises is set aside inside ``handle``;
    # should ``handle`` itself fail, the loop must retry the rest one by one to find the culprit
    # instead of blaming the first unfinished record.
    one_by_one = False

    def __init__(
        self,
        config: NotifierConfig,
        *,
        registry: CollectorRegistry = REGISTRY,
        print_deliveries: bool = False,
        console: Callable[[str], None] = _print_line,
        send_fn: SendFn | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.print_deliveries = print_deliveries
        self.console = console
        self.send_fn = send_fn
        self.metrics = metrics_for(registry)
        self.dead_letters = DeadLetters(STAGE, registry)
        prefix = config.topic_prefix
        urgent = config.lane == "urgent"
        self.source_topic = (NOTIFICATIONS_URGENT if urgent else NOTIFICATIONS_REQUESTED).name(
            prefix
        )
        self.results_topic = NOTIFICATIONS_RESULTS.name(prefix)
        self.audit_topic = AUDIT_EVENTS.name(prefix)
        self.dead_letter_topic = DEAD_LETTER.name(prefix)
        # The normal lane keeps the group id it always had: its committed offsets still count.
        self.group_id = f"{config.app_id}-notifier" + ("-urgent" if urgent else "")
        self._runner: asyncio.Runner | None = None
        # Both belong to the runner's event loop and are made with it (see _loop).
        self._pool = SmtpPool(config.concurrency)
        self._desk_lock = asyncio.Lock()
        self._inflight: list[asyncio.Task[_Done | None]] = []
        self._signer = LinkSigner(config.links.secret_key) if config.links else None
        # Beside the mail, in this order: the organisations' systems, then the duty chats.
        self._kinds: tuple[DeliveryKind, ...] = (
            Webhooks(WebhookSender(config.webhook_secrets)),
            TelegramChats(TelegramAlerts(config.telegram_token, config.telegram_api_base)),
        )
        self._delivered: OrderedDict[str, None] = OrderedDict()
        self._desk_told: OrderedDict[str, None] = OrderedDict()  # incidents the desk heard of

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

    def _loop(self) -> asyncio.Runner:
        """The notifier's own event loop, made on first use; the pool and locks live in it."""
        if self._runner is None:
            self._runner = asyncio.Runner()
            self._pool = SmtpPool(self.config.concurrency)
            self._desk_lock = asyncio.Lock()
        return self._runner

    def _send(self, msg: Mail) -> Awaitable[None]:
        send_fn = self.send_fn or self._pool.send
        return send_fn(msg, self.config.smtp)

    def deliver(
        self, record: RecordLike, stop: threading.Event | None = None
    ) -> list[Outgoing] | None:
        """Deliver one request and return what must be published before committing its offset.

        Returns None when ``stop`` was set during a retry backoff: the request is left
        uncommitted so the next run picks it up again. Raises Unavailable when the relay
        could not be reached in any attempt.
        """
        halted = (stop or threading.Event()).is_set
        done = self._loop().run(self._deliver(record, halted))
        return None if done is None else done.out

    async def _deliver(
        self,
        record: RecordLike,
        halted: Callable[[], bool],
        *,
        delivered_earlier: Callable[[str], Awaitable[bool]] | None = None,
        slots: asyncio.Semaphore | None = None,
    ) -> _Done | None:
        """One request, start to finish; None when ``halted`` stopped it before it was done.

        ``delivered_earlier`` says whether an earlier record of the same batch delivered the
        same notification; ``slots`` bounds how many requests send at once.
        """
        if record.value is None:
            return _Done(await self._unusable(record, "empty message (tombstone)"))
        try:
            req = NotificationRequest.model_validate_json(record.value)
        except ValidationError as exc:
            return _Done(await self._unusable(record, validation_reason(exc)))

        if req.notification_id in self._delivered or (
            delivered_earlier is not None and await delivered_earlier(req.notification_id)
        ):
            # Delivered already (a replay, or a step taken twice by a fenced escalator): the
            # recipient has this mail; the trail has its record.
            self.metrics.duplicates.inc()
            log.info("skipped already delivered notification %s", req.notification_id)
            return _Done([])
        async with slots or contextlib.nullcontext():
            if halted():
                return None
            msg = render_email(req, self.config.smtp.sender, action_url=self._link(req))
            tier = req.recipient.tier.value

            async def attempt() -> None:
                # Timed per attempt: the backoff between attempts is not time spent sending.
                with self.metrics.send_seconds.labels(tier=tier).time():
                    await self._send(msg)

            def observe(attempt: int, error: SendError | None) -> None:
                self.metrics.attempts.labels(
                    tier=tier, outcome=error.kind if error else "delivered"
                ).inc()
                if error is not None:
                    log.warning(
                        "attempt %d/%d to notify incident=%s tier=%s recipient=%s step=%d"
                        " failed (%s): %s",
                        attempt,
                        self.config.retry.attempts,
                        req.incident_id,
                        tier,
                        req.recipient.email,
                        req.step,
                        error.kind,
                        error.reason,
                    )

            async def wait(seconds: float) -> bool:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + seconds
                while not halted():
                    left = deadline - loop.time()
                    if left <= 0:
                        return False
                    await asyncio.sleep(min(STOP_POLL_S, left))
                return True

            try:
                attempts = await deliver_with_retries_async(
                    attempt, self.config.retry, wait=wait, observe=observe
                )
            except Stopped:
                return None
        if attempts.error is not None and attempts.error.unreachable:
            raise Unavailable(f"SMTP relay unreachable: {attempts.error.reason}")
        out = await self._outcome_messages(record, req, attempts.count, attempts.error)
        if req.recipient.webhooks or req.recipient.telegram_chat_ids:
            # After the mail, never instead of it: a mail retried later (relay away) would
            # otherwise send these again, and one slow system must not hold the mail.
            async with slots or contextlib.nullcontext():
                try:
                    out += await self._beside_mail(record, req, wait)
                except Stopped:
                    return None
        return _Done(out, req.notification_id if attempts.error is None else None)

    async def _beside_mail(
        self,
        record: RecordLike,
        req: NotificationRequest,
        wait: Callable[[float], Awaitable[bool]],
    ) -> list[Outgoing]:
        """The organisation's systems (webhooks) and duty chats (Telegram), each told once,
        with the mail's retry policy and its result, audit and dead-letter path."""
        deliveries = [
            d for kind in self._kinds for d in kind.deliveries(req, lambda: self._link(req))
        ]
        out: list[Outgoing] = []
        key = req.incident_id.encode("utf-8")
        for delivery in deliveries:
            channel, shown = delivery.channel, delivery.shown
            attempts = await deliver_with_retries_async(
                delivery.attempt, self.config.retry, wait=wait
            )
            outcome = channel_outcome(
                req,
                channel,
                delivery.target,
                delivery.message_id,
                attempts.count,
                attempts.error,
                utcnow(),
            )
            out += [
                Outgoing(self.results_topic, key, to_json(outcome.result)),
                Outgoing(self.audit_topic, key, to_json(outcome.audit)),
            ]
            self.metrics.beside_mail.labels(
                channel=channel, tier=req.recipient.tier.value, status=outcome.result.status.value
            ).inc()
            if attempts.error is None:
                continue
            log.error(
                "gave up on the %s of incident=%s tier=%s (%s) step=%d after %d attempt(s): %s",
                channel,
                req.incident_id,
                req.recipient.tier.value,
                shown,
                req.step,
                attempts.count,
                attempts.error.reason,
            )
            reason = f"{channel} to {shown} failed: {attempts.error.reason}"
            out.append(self._letter(record, Reason.undeliverable, reason, req.incident_id))
        return out

    async def _unusable(self, record: RecordLike, reason: str) -> list[Outgoing]:
        incident = self.incident_of(record)
        _, severity = _lenient_facts(record.value)
        out = [self._letter(record, Reason.unparseable, reason, incident)]
        if severity is Severity.critical and incident:
            out += await self._fallback(incident, severity)
        return out

    def _letter(
        self, record: RecordLike, reason: Reason, detail: str, incident_id: str | None
    ) -> Outgoing:
        letter = self.dead_letters.of(record, reason, detail, incident_id)
        return Outgoing(self.dead_letter_topic, record.key, to_json(letter))

    async def _outcome_messages(
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
            if req.kind is NotificationKind.first_notice and req.step == 0:
                waited = (outcome.result.at - req.received_at).total_seconds()
                self.metrics.report_to_mail.labels(severity=req.severity.value).observe(
                    max(0.0, waited)
                )
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
            out += await self._fallback(req.incident_id, Severity.critical)
        return out

    async def _fallback(self, incident_id: str, severity: Severity) -> list[Outgoing]:
        """Tell the intake desk, in a mail that cannot fail to render, that a person is missing."""
        # Requests of one batch fail side by side; the lock makes the second one see the first
        # one's mail, as it did when requests went one at a time.
        async with self._desk_lock:
            return await self._tell_desk(incident_id, severity)

    async def _tell_desk(self, incident_id: str, severity: Severity) -> list[Outgoing]:
        recipients = list(self.config.fallback_recipients)
        if incident_id in self._desk_told:
            # Several recipients of one incident may fail together; the desk needs one mail.
            return []
        if not recipients:
            self.metrics.fallback.labels(outcome="no_recipient").inc()
            log.error("no fallback recipient configured for incident=%s", incident_id)
            return []
        msg = render_fallback_email(incident_id, severity, self.config.smtp.sender, recipients)

        async def pause(seconds: float) -> bool:
            # Not cut short by stop: the desk's mail is the last resort for a lost notice.
            await asyncio.sleep(seconds)
            return False

        attempts = await deliver_with_retries_async(
            lambda: self._send(msg),
            RetryPolicy(max_attempts=3, backoff_s=self.config.retry.backoff_s),
            wait=pause,
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
        """Deliver the batch ``concurrency`` at a time; yield its finished head as it grows.

        The loop publishes each yielded outcome and commits the last offset before this resumes,
        so a notification id is remembered as delivered only once its offset is committed.
        Stop, or a relay that cannot be reached, halts the batch: requests not yet sent are not
        started, backoffs end, what is in flight finishes, the finished head is yielded, and
        then (relay unreachable) Unavailable is raised so the loop pauses and rewinds the rest.
        """
        if stop.is_set() or not records:
            return
        runner = self._loop()
        # A batch abandoned by the loop (a broker error while publishing) may have left work.
        self._settle(runner, self._inflight)
        batch = _Batch(stop)
        slots = asyncio.Semaphore(max(1, self.config.concurrency))
        loop = runner.get_loop()
        # All tasks exist before any runs, so a task may look up an earlier one by index.
        batch.tasks = [
            loop.create_task(self._one(batch, i, record, slots)) for i, record in enumerate(records)
        ]
        self._inflight = batch.tasks
        done = 0
        try:
            while done < len(records):
                unfinished = [t for t in batch.tasks[done:] if not t.done()]
                if unfinished:
                    runner.run(_wait(unfinished, YIELD_EVERY_S))
                end, out, delivered = done, [], []
                while end < len(records) and batch.tasks[end].done():
                    result = _result(batch.tasks[end])
                    if result is None:  # halted before it was done
                        break
                    out += result.out
                    if result.delivered is not None:
                        delivered.append(result.delivered)
                    end += 1
                if end > done:
                    yield Handled(records[done:end], out)
                    # Resumed only after the loop published the outcomes and committed.
                    for notification in delivered:
                        self._remember(notification)
                    done = end
                if done < len(records) and batch.tasks[done].done():
                    break  # the head was halted: nothing after it may be committed
            self._settle(runner, batch.tasks, cancel=False)
            if batch.unavailable is not None:
                raise batch.unavailable
        finally:
            self._settle(runner, batch.tasks)

    async def _one(
        self, batch: _Batch, index: int, record: RecordLike, slots: asyncio.Semaphore
    ) -> _Done | None:
        """One request of a batch; a request whose handling raises is set aside right here, so
        the others of the batch go on."""
        try:
            return await self._deliver(
                record,
                batch.halted,
                delivered_earlier=lambda notification: batch.delivered_before(notification, index),
                slots=slots,
            )
        except Unavailable as exc:
            if batch.unavailable is None:
                batch.unavailable = exc
            raise
        except Exception as exc:
            log.error(
                "set aside notification request %s[%d]@%d: %s raised %s",
                record.topic,
                record.partition,
                record.offset,
                STAGE,
                describe_failure(exc),
            )
            out = [poison_letter(self, self.dead_letter_topic, record, exc)]
            return _Done(out + await self._on_poison(record, exc))

    def _settle(
        self,
        runner: asyncio.Runner,
        tasks: Sequence[asyncio.Task[_Done | None]],
        cancel: bool = True,
    ) -> None:
        """Let unfinished ``tasks`` end (cancelled, unless ``cancel`` is False: then they are
        halted and end by themselves), and mark every failure as seen."""
        unfinished = [t for t in tasks if not t.done()]
        if unfinished:
            if cancel:
                for task in unfinished:
                    task.cancel()
            if not runner.get_loop().is_running():
                runner.run(asyncio.wait(unfinished))
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()

    def incident_of(self, record: RecordLike) -> str | None:
        """The request's own incident id if it can be read, else its key (the incident id)."""
        incident, _ = _lenient_facts(record.value)
        if incident:
            return incident
        return record.key.decode("utf-8", "replace") if record.key else None

    def on_poison(self, record: RecordLike, exc: Exception) -> list[Outgoing]:
        return self._loop().run(self._on_poison(record, exc))

    async def _on_poison(self, record: RecordLike, exc: Exception) -> list[Outgoing]:
        incident = self.incident_of(record)
        _, severity = _lenient_facts(record.value)
        if severity is Severity.critical and incident:
            return await self._fallback(incident, severity)
        return []

    def consumer_config(self, bootstrap_servers: str) -> ConsumerConfig:
        # A request may spend several SMTP timeouts plus backoff, holding one of `concurrency`
        # slots; the batch goes through in ceil(records / concurrency) such rounds at worst.
        rounds = math.ceil(self.config.max_poll_records / max(1, self.config.concurrency))
        worst = rounds * self.config.retry.worst_case_s(4 * self.config.smtp.timeout_s)
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
            self.close()

    def close(self) -> None:
        """Close the pooled connections and the event loop (a later use makes new ones)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            try:
                self._settle(runner, self._inflight)
                runner.run(self._pool.close())
            finally:
                runner.close()


@dataclass
class _Done:
    """A finished request: what to publish, and the notification delivered (to remember it
    once the offset is committed)."""

    out: list[Outgoing]
    delivered: str | None = None


class _Batch:
    """What the requests of one batch share: the halt signal and each other's results."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.unavailable: Unavailable | None = None
        self.tasks: list[asyncio.Task[_Done | None]] = []
        self._first: dict[str, int] = {}

    def halted(self) -> bool:
        return self.stop.is_set() or self.unavailable is not None

    async def delivered_before(self, notification: str, index: int) -> bool:
        """Whether an earlier record of this batch carried ``notification`` and delivered it.

        The later copy waits for the earlier one instead of mailing at the same time; as it
        comes later in offset order, its commit implies the earlier one's.
        """
        first = self._first.setdefault(notification, index)
        if first == index:
            return False
        earlier = self.tasks[first]
        await asyncio.wait([earlier])
        if earlier.cancelled() or earlier.exception() is not None:
            return False
        result = earlier.result()
        return result is not None and result.delivered == notification


def _result(task: asyncio.Task[_Done | None]) -> _Done | None:
    """A finished task's outcome; None when it was halted (stop, relay unreachable)."""
    if task.cancelled() or isinstance(task.exception(), Unavailable):
        return None
    return task.result()  # re-raises an unexpected failure: the loop then goes one by one


async def _wait(tasks: Sequence[asyncio.Task[_Done | None]], timeout: float) -> None:
    await asyncio.wait(tasks, timeout=timeout)
