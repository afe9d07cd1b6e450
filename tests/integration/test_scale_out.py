"""Scaling out on Kafka: two notifier processes in one consumer group share the work, and every
request is mailed once (issue 11)."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

from escalate.topics_admin import TopicLayout, ensure_topics
from schemas.common import Severity
from schemas.topics import DEAD_LETTER, NOTIFICATIONS_REQUESTED
from tests.conftest import free_port
from tests.integration.test_notifier_smtp import make_request
from tests.services.pipeline import Components, start_sink, wait_for

pytestmark = pytest.mark.kafka

REQUESTS = 240


def partitions(bootstrap: str, topic: str) -> int:
    """The topic's partition count, once the broker's metadata knows the new topic."""

    def count() -> int:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-admin")
        try:
            [described] = admin.describe_topics([topic])
            return len(described["partitions"])
        finally:
            admin.close()

    return wait_for(count, timeout_s=30, what=f"metadata of {topic}")


def group_members(bootstrap: str, group: str) -> int:
    """Members of a consumer group once it is stable (0 while it rebalances)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-admin")
    try:
        found = admin.describe_groups([group])[group]
    except KafkaError:  # the group's coordinator is still being chosen
        return 0
    finally:
        admin.close()
    stable = str(found.get("group_state") or found.get("state")) == "Stable"
    return len(found.get("members") or []) if stable else 0


def test_topics_take_the_configured_partition_count(kafka_bootstrap: str, isolation: str) -> None:
    prefix = f"{isolation}."
    ensure_topics(kafka_bootstrap, prefix, TopicLayout(partitions=6))
    assert partitions(kafka_bootstrap, NOTIFICATIONS_REQUESTED.name(prefix)) == 6
    assert partitions(kafka_bootstrap, DEAD_LETTER.name(prefix)) == 1
    # Existing topics are left alone (a changed count would move keys away from their state).
    assert ensure_topics(kafka_bootstrap, prefix, TopicLayout(partitions=9)) == []
    assert partitions(kafka_bootstrap, NOTIFICATIONS_REQUESTED.name(prefix)) == 6


def test_two_notifiers_share_the_partitions_and_mail_each_request_once(
    kafka_bootstrap: str, isolation: str, tmp_path: Path
) -> None:
    prefix = f"{isolation}."
    ensure_topics(kafka_bootstrap, prefix, TopicLayout(partitions=6))
    sink, controller = start_sink(free_port())
    env = {
        "ESCALATE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ESCALATE_TOPIC_PREFIX": prefix,
        "ESCALATE_APP_ID": isolation,
        "ESCALATE_SMTP_HOST": "127.0.0.1",
        "ESCALATE_SMTP_PORT": str(controller.port),
        "ESCALATE_METRICS_PORT": "0",
        "ESCALATE_SECRET_KEY": "test-secret",
        "ESCALATE_VAR_DIR": str(tmp_path / "var"),
    }
    workers = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        workers.append(Components(env, tmp_path / name))
    try:
        for worker in workers:
            worker.start("notifier")
        # Publish once the group holds both, so the partitions are split between them.
        wait_for(
            lambda: group_members(kafka_bootstrap, f"{isolation}-notifier") == 2,
            timeout_s=60,
            what="both notifiers in the group",
        )
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        for n in range(REQUESTS):
            request = make_request(
                incident_id=f"inc-{n}",
                notification_id=f"n-{n}",
                severity=Severity.medium,
                email=f"school-{n}@bd.example",
            )
            producer.send(
                NOTIFICATIONS_REQUESTED.name(prefix),
                key=request.incident_id.encode(),
                value=request.model_dump_json().encode(),
            )
        producer.flush()
        producer.close()
        wait_for(lambda: len(sink.mails) >= REQUESTS, timeout_s=180, what="every request mailed")
        per_incident = collections.Counter(m.incident for m in sink.mails)
        assert len(per_incident) == REQUESTS and set(per_incident.values()) == {1}
        # Both processes took part: each printed deliveries of its own partitions.
        shares = [w.log("notifier").count("notified ") for w in workers]
        assert sum(shares) == REQUESTS and min(shares) > 0, shares
    finally:
        for worker in workers:
            worker.stop_all()
        controller.stop()
