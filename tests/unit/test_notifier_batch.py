"""The notifier's batch handling with a fake SMTP send: concurrency, in-order commits, halts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from consumers.kafka_io import Handled, Outgoing, RecordLike, Unavailable, _Partition
from consumers.notifier import worker as notifier_worker
from consumers.notifier.render import render_email as real_render
from consumers.notifier.retry import RetryPolicy
from consumers.notifier.sender import SendError, SmtpConfig
from consumers.notifier.worker import Notifier, NotifierConfig
from schemas.audit import DeadLetter
from schemas.common import Category, Severity
from schemas.ids import notification_id
from schemas.notifications import DeliveryResult, DeliveryStatus, NotificationRequest
from tests.fakes import FakeRecord
from tests.integration.test_notifier_smtp import make_request

DESK = "desk@so.example"


def request(n: int, **overrides: Any) -> NotificationRequest:
    incident = f"inc-{n}"
    email = overrides.pop("email", f"r{n}@bd.example")
    return make_request(
        incident_id=incident,
        notification_id=notification_id(incident, email, 0),
        email=email,
        severity=overrides.pop("severity", Severity.high),
        category=Category.cyberbullying,
        **overrides,
    )


def records(reqs: list[NotificationRequest]) -> list[RecordLike]:
    return [
        FakeRecord(
            "t.notifications.requested.v1",
            0,
            i,
            r.incident_id.encode(),
            r.model_dump_json().encode(),
        )
        for i, r in enumerate(reqs)
    ]


class FakeRelay:
    """Accepts mail after ``delay_s``; scripted failures per recipient, one per attempt."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.sent: list[str] = []  # recipients, in the order the relay accepted them
        self.failures: dict[str, list[SendError]] = {}
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, msg: EmailMessage, smtp: SmtpConfig) -> None:
        to = ", ".join(a.addr_spec for a in msg["To"].addresses)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            planned = self.failures.get(to)
            if planned:
                raise planned.pop(0)
            self.sent.append(to)
        finally:
            self.in_flight -= 1


def notifier(relay: FakeRelay, **config: Any) -> Notifier:
    retry = config.pop("retry", RetryPolicy(max_attempts=3, backoff_s=0.3))
    cfg = NotifierConfig(
        smtp=SmtpConfig(host="relay.invalid"),
        retry=retry,
        topic_prefix="t.",
        fallback_recipients=(DESK,),
        **config,
    )
    return Notifier(cfg, registry=CollectorRegistry(), send_fn=relay)


@pytest.fixture(autouse=True)
def quick_yields(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(notifier_worker, "YIELD_EVERY_S", 0.05)
    yield


def offsets(handled: Handled) -> list[int]:
    return [r.offset for r in handled.records]


def results(out: list[Outgoing]) -> list[DeliveryResult]:
    return [
        DeliveryResult.model_validate_json(o.value)
        for o in out
        if o.topic == "t.notifications.results.v1"
    ]


def test_a_batch_is_delivered_concurrently_within_the_bound() -> None:
    relay = FakeRelay(delay_s=0.02)
    n = notifier(relay, concurrency=4)
    reqs = [request(i) for i in range(20)]
    handled = list(n.handle(records(reqs), threading.Event()))
    assert [o for h in handled for o in offsets(h)] == list(range(20))
    assert sorted(relay.sent) == sorted(r.recipient.email for r in reqs)
    assert relay.most_in_flight == 4
    delivered = [res for h in handled for res in results(h.outgoing)]
    assert [res.notification_id for res in delivered] == [r.notification_id for r in reqs]
    assert all(res.status is DeliveryStatus.delivered for res in delivered)
    n.close()


def test_only_the_finished_head_is_handed_over_for_commit() -> None:
    relay = FakeRelay()
    slow = request(1)
    relay.failures[slow.recipient.email] = [SendError("451 busy", transient=True, code=451)]
    n = notifier(relay, concurrency=3)
    batch = records([request(0), slow, request(2)])
    gen = n.handle(batch, threading.Event())
    first = next(gen)
    # Record 2 is already mailed, but record 1 is still backing off: only record 0 may go.
    assert offsets(first) == [0]
    assert "r2@bd.example" in relay.sent and "r1@bd.example" not in relay.sent
    second = next(gen)
    assert offsets(second) == [1, 2]
    assert [res.attempts for res in results(second.outgoing)] == [2, 1]
    assert list(gen) == []
    n.close()


def test_stop_during_backoff_leaves_that_request_and_the_rest_uncommitted() -> None:
    relay = FakeRelay()
    stuck = request(1)
    relay.failures[stuck.recipient.email] = [SendError("451 busy", transient=True, code=451)]
    n = notifier(relay, retry=RetryPolicy(max_attempts=3, backoff_s=30))
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    started = time.monotonic()
    try:
        handled = list(n.handle(records([request(0), stuck, request(2)]), stop))
    finally:
        timer.cancel()
    assert time.monotonic() - started < 5
    assert [offsets(h) for h in handled] == [[0]]
    n.close()


def test_an_unreachable_relay_yields_what_is_done_then_raises() -> None:
    relay = FakeRelay()
    down = request(1)
    relay.failures[down.recipient.email] = [
        SendError("relay unreachable", transient=True, unreachable=True)
    ] * 3
    n = notifier(relay, retry=RetryPolicy(max_attempts=3, backoff_s=0.01))
    handled: list[Handled] = []
    with pytest.raises(Unavailable):
        for h in n.handle(records([request(0), down, request(2)]), threading.Event()):
            handled.append(h)
    assert [offsets(h) for h in handled] == [[0]]
    n.close()


def test_a_poison_request_is_set_aside_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def render(req: NotificationRequest, sender: str, **kwargs: Any) -> EmailMessage:
        if req.incident_id == "inc-1":
            raise OverflowError("planted fault")
        return real_render(req, sender, **kwargs)

    monkeypatch.setattr(notifier_worker, "render_email", render)
    relay = FakeRelay()
    n = notifier(relay)
    reqs = [request(0), request(1, severity=Severity.critical), request(2)]
    handled = list(n.handle(records(reqs), threading.Event()))
    assert [o for h in handled for o in offsets(h)] == [0, 1, 2]
    out = [o for h in handled for o in h.outgoing]
    [letter] = [
        DeadLetter.model_validate_json(o.value) for o in out if o.topic == "t.deadletter.v1"
    ]
    assert letter.incident_id == "inc-1" and letter.offset == 1
    assert letter.reason.startswith("failed: notifier raised OverflowError in render")
    assert [res.incident_id for res in results(out)] == ["inc-0", "inc-2"]
    # Critical: the desk hears of it, as when the loop sets a poison message aside.
    assert sorted(relay.sent) == sorted(["r0@bd.example", "r2@bd.example", DESK])
    n.close()


def test_the_loop_commits_once_per_finished_head() -> None:
    relay = FakeRelay(delay_s=0.01)
    n = notifier(relay)
    committed: list[int] = []
    published: list[Outgoing] = []
    loop = _Partition(
        n, n.consumer_config("unused:0"), lambda r: committed.append(r.offset), published.extend
    )
    assert loop.run(records([request(i) for i in range(10)]), threading.Event())
    assert committed == [9]
    assert len(results(published)) == 10
    n.close()


def test_a_notification_repeated_in_one_batch_is_mailed_once() -> None:
    relay = FakeRelay(delay_s=0.01)
    n = notifier(relay)
    same = request(0)
    handled = list(n.handle(records([same, request(1), same]), threading.Event()))
    assert [o for h in handled for o in offsets(h)] == [0, 1, 2]
    assert relay.sent.count(same.recipient.email) == 1
    assert n.registry.get_sample_value("escalate_notifications_skipped_duplicates_total") == 1
    # Remembered once committed: a replay in a later batch is skipped too.
    list(n.handle(records([same]), threading.Event()))
    assert relay.sent.count(same.recipient.email) == 1
    n.close()


def test_the_poll_interval_leaves_room_for_a_batch() -> None:
    n = notifier(FakeRelay(), max_poll_records=50, concurrency=8)
    config = n.consumer_config("b:0")
    worst = n.config.retry.worst_case_s(4 * n.config.smtp.timeout_s)
    assert config.max_poll_records == 50
    assert config.max_poll_interval_ms >= 7 * worst * 1000
