"""Critical first, on the real broker: a critical request published behind a backlog of lesser
mail is delivered long before that backlog is through (issue 11, the urgent lane)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from escalate.topics_admin import ensure_topics
from schemas.common import Severity
from schemas.notifications import NotificationRequest
from schemas.topics import requests_topic_for
from tests.conftest import free_port
from tests.integration.test_notifier_smtp import make_request
from tests.services.pipeline import Components, Sink, wait_for

pytestmark = pytest.mark.kafka

BACKLOG = 120
PER_MAIL_S = 0.1  # a relay that takes a tenth of a second per message: 12 s of backlog


class SlowSink(Sink):
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(PER_MAIL_S)
        return await super().handle_DATA(server, session, envelope)


def test_a_critical_request_overtakes_a_backlog_of_lesser_mail(
    kafka_bootstrap: str, isolation: str, tmp_path: Path
) -> None:
    from aiosmtpd.controller import Controller

    prefix = f"{isolation}."
    ensure_topics(kafka_bootstrap, prefix)
    backlog: list[NotificationRequest] = [
        make_request(
            incident_id=f"inc-medium-{n}",
            notification_id=f"n-medium-{n}",
            severity=Severity.medium,
            email=f"school-{n}@bd.example",
        )
        for n in range(BACKLOG)
    ]
    critical = make_request(incident_id="inc-critical", notification_id="n-critical")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    # All in one partition, the critical one last: in a single queue it would be mailed last.
    for request in [*backlog, critical]:
        producer.send(
            requests_topic_for(request).name(prefix),
            key=request.incident_id.encode(),
            value=request.model_dump_json().encode(),
            partition=0,
        )
    producer.flush()
    producer.close()

    sink = SlowSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    components = Components(
        {
            "ESCALATE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "ESCALATE_TOPIC_PREFIX": prefix,
            "ESCALATE_APP_ID": isolation,
            "ESCALATE_SMTP_HOST": "127.0.0.1",
            "ESCALATE_SMTP_PORT": str(port),
            "ESCALATE_METRICS_PORT": "0",
            "ESCALATE_SECRET_KEY": "test-secret",
            "ESCALATE_VAR_DIR": str(tmp_path / "var"),
        },
        tmp_path,
    )
    components.start("notifier")
    try:
        wait_for(lambda: sink.about("inc-critical"), timeout_s=60, what="the critical mail")
        with sink.lock:
            before = sum(1 for m in sink.mails if m.incident.startswith("inc-medium-"))
        # One lane would have mailed all of the backlog first (12 s at this relay's pace).
        assert before < BACKLOG // 2, f"{before} lesser mails went before the critical one"
        wait_for(
            lambda: len(sink.mails) == BACKLOG + 1,
            timeout_s=120,
            what="the backlog, delivered all the same",
        )
    finally:
        components.stop_all()
        controller.stop()
