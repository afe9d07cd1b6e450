"""Smoke test of the real services the integration suite depends on.

If these fail, every other integration test would fail for reasons unrelated to the code under
test, so this pins down the basics: the local Kafka broker stores and returns a record written
with ``acks=all``, and the throwaway PostgreSQL accepts a SQLAlchemy connection.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

# Plain `pytest` (unlike `python -m pytest`) puts the repository root on sys.path only as a side
# effect of loading tests/conftest.py as part of the `tests` package; do not depend on that.
_REPO_ROOT = str(Path(__file__).resolve().parents[2])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from tests.services.kafka import broker_for_tests  # noqa: E402
from tests.services.postgres import postgres_for_tests  # noqa: E402


@pytest.fixture(scope="module")
def bootstrap() -> str:
    """The test broker; the session teardown (or process exit) stops it."""
    return broker_for_tests()


@pytest.fixture()
def topic(bootstrap: str) -> Iterator[str]:
    """A uniquely named topic, so reruns against a reused broker never see old records."""
    name = f"smoke-{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="smoke-admin")
    try:
        admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
        yield name
        admin.delete_topics([name])
    finally:
        admin.close()


@pytest.mark.kafka
def test_kafka_round_trip(bootstrap: str, topic: str) -> None:
    """One record produced with acks=all comes back unchanged to a fresh consumer group."""
    payload = uuid.uuid4().hex.encode()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        metadata = producer.send(topic, key=b"k", value=payload).get(timeout=30)
        assert metadata.topic == topic
        assert metadata.offset == 0
    finally:
        producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"smoke-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=30_000,
    )
    try:
        received = next(iter(consumer))
    finally:
        consumer.close()
    assert (received.key, received.value) == (b"k", payload)


@pytest.mark.postgres
def test_postgres_select_one() -> None:
    """The private PostgreSQL cluster accepts a connection and answers a query."""
    engine = sa.create_engine(postgres_for_tests())
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select 1")).scalar_one() == 1
            assert conn.execute(sa.text("select current_database()")).scalar_one()
    finally:
        engine.dispose()
