"""The liveness check's measurement against the real broker: a consumer group's committed
offsets and its lag, as the check compares them round after round (escalate/liveness.py)."""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from escalate.liveness import Liveness, measure

pytestmark = pytest.mark.kafka


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def test_measure_reads_a_groups_committed_offsets_and_lag(
    kafka_bootstrap: str, isolation: str
) -> None:
    topic, group = f"{isolation}.liveness", f"{isolation}-liveness-group"
    create_topic(kafka_bootstrap, topic, partitions=2)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for n in range(10):
        producer.send(topic, value=b"x", partition=n % 2)
    producer.flush()
    producer.close()

    # No committed offset yet: nothing to judge by.
    assert measure(kafka_bootstrap, group, [topic]) is None

    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    try:
        consumer.commit(
            {
                TopicPartition(topic, 0): OffsetAndMetadata(2, "", -1),
                TopicPartition(topic, 1): OffsetAndMetadata(4, "", -1),
            }
        )
    finally:
        consumer.close()
    # 2 of 5 committed on partition 0, 4 of 5 on partition 1.
    assert measure(kafka_bootstrap, group, [topic]) == {
        f"{topic}[0]": (2, 3),
        f"{topic}[1]": (4, 1),
    }
    assert measure(kafka_bootstrap, group, ["some.other.topic"]) is None

    # Behind, and not moving: the check fires once stuck_s has passed (it only judges here;
    # ending the process is the caller's, on_stuck).
    live = Liveness(kafka_bootstrap, group, [topic], stuck_s=0.0, on_stuck=lambda why: None)
    assert not live.check_once()  # the first reading only sets the baseline
    assert live.check_once()


def test_a_group_caught_up_on_a_transactional_topic_is_not_behind(
    kafka_bootstrap: str, isolation: str
) -> None:
    """Transactions leave a commit marker after their records: the end offset is one past it.
    A group that read everything must still count as caught up, or an idle stage would look
    stuck and be ended every 90 s."""
    topic, group = f"{isolation}.liveness-txn", f"{isolation}-liveness-txn"
    create_topic(kafka_bootstrap, topic, partitions=1)
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"{isolation}-liveness-txn"
    )
    producer.init_transactions()
    for _ in range(3):
        producer.begin_transaction()
        producer.send(topic, value=b"x")
        producer.commit_transaction()
    producer.close()
    written_end = 6

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    try:
        read = [record.offset for record in consumer]
        assert read == [0, 2, 4]  # each record followed by its transaction's marker
        # What the stages commit: the last record's offset + 1, i.e. the last marker's.
        consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(read[-1] + 1, "", -1)})
    finally:
        consumer.close()
    assert measure(kafka_bootstrap, group, [topic]) == {f"{topic}[0]": (5, 0)}

    # One record left unread behind a marker is behind: committed at the second record.
    again = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group)
    try:
        again.commit({TopicPartition(topic, 0): OffsetAndMetadata(2, "", -1)})
    finally:
        again.close()
    assert measure(kafka_bootstrap, group, [topic]) == {f"{topic}[0]": (2, 4)}

    # After a broker outage: a whole aborted transaction past the last committed record. No
    # consumer is ever given it, so a group that read everything is still caught up...
    aborting = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"{isolation}-liveness-abort"
    )
    aborting.init_transactions()
    aborting.begin_transaction()
    for _ in range(3):
        aborting.send(topic, value=b"never")
    aborting.flush()
    aborting.abort_transaction()
    aborting.close()
    done = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group)
    try:
        done.commit({TopicPartition(topic, 0): OffsetAndMetadata(written_end - 1, "", -1)})
    finally:
        done.close()
    assert measure(kafka_bootstrap, group, [topic]) == {f"{topic}[0]": (written_end - 1, 0)}
