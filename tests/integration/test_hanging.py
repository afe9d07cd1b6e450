"""Transactions open on a group's offsets partition, against the real broker: where the broker
keeps a group's offsets, that an open transactional offset commit blocks the group's
read_committed offset fetches, that a live one is never taken for hanging, and that the
administrative abort (escalate/hanging.py) frees the group."""

from __future__ import annotations

import os
import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaTimeoutError
from kafka.structs import ConsumerGroupMetadata, OffsetAndMetadata

from escalate.components import consumer_groups
from escalate.hanging import (
    OFFSETS_TOPIC,
    abort,
    abort_hanging,
    active_producer_ids,
    hanging,
    offsets_partition,
    open_on_offsets_partition,
)
from tests.conftest import escalate, free_port

pytestmark = pytest.mark.kafka


def fetch_committed(bootstrap: str, group: str, tp: TopicPartition) -> dict[TopicPartition, int]:
    """The group's committed offset of ``tp`` as a read_committed consumer asks for it (the
    broker must answer with stable offsets only); KafkaTimeoutError while it answers
    UNSTABLE_OFFSET_COMMIT."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    try:
        found = consumer._coordinator.fetch_committed_offsets([tp], timeout_ms=3000)
        return {t: meta.offset for t, meta in found.items()}
    finally:
        consumer.close()


def begin_with_offset(producer: KafkaProducer, tp: TopicPartition, group: str, offset: int) -> None:
    """Begin a transaction that writes one record to ``tp`` and commits ``group``'s offset
    there, everything sent to the broker and the transaction left open."""
    producer.begin_transaction()
    producer.send(tp.topic, b"x", partition=tp.partition)
    producer.send_offsets_to_transaction(
        {tp: OffsetAndMetadata(offset, "", -1)}, ConsumerGroupMetadata(group, -1, "", None)
    )
    producer.flush()


def offsets_partitions(admin: KafkaAdminClient) -> int:
    return len(admin.describe_topics([OFFSETS_TOPIC])[0]["partitions"])


def test_an_open_offset_commit_blocks_the_group_until_aborted(
    kafka_bootstrap: str, isolation: str
) -> None:
    topic, group = f"{isolation}.hanging", f"{isolation}-hanging-group"
    tp = TopicPartition(topic, 0)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"{isolation}-hanging"
    )
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        producer.init_transactions()
        # One committed transaction: 1 record, the group's offset 1.
        begin_with_offset(producer, tp, group, 1)
        producer.commit_transaction()
        assert fetch_committed(kafka_bootstrap, group, tp) == {tp: 1}
        pid = producer._transaction_manager.producer_id_and_epoch.producer_id
        # Nothing of ours open: nothing of ours touched. (Only ours: other groups share the
        # partition, and a leftover of another test there would be fair game.)
        assert pid not in {txn.producer_id for txn in abort_hanging(kafka_bootstrap, group)}

        # The broker keeps each group's offsets on the partition this module computes: one
        # transaction commits offsets for five more groups, and the leader of each group's
        # computed partition knows the producer (five right by chance: 1 in 10^5 here).
        others = [f"{group}-{n}" for n in range(5)]
        producer.begin_transaction()
        for other in others:
            producer.send_offsets_to_transaction(
                {tp: OffsetAndMetadata(1, "", -1)}, ConsumerGroupMetadata(other, -1, "", None)
            )
        producer.commit_transaction()
        for other in others:
            partition = offsets_partition(other, offsets_partitions(admin))
            known = admin.describe_producers([TopicPartition(OFFSETS_TOPIC, partition)])
            assert pid in {p.producer_id for s in known.values() for p in s.active_producers}

        # A second one left open, its offsets pending.
        begin_with_offset(producer, tp, group, 3)
        with pytest.raises(KafkaTimeoutError):
            fetch_committed(kafka_bootstrap, group, tp)  # UNSTABLE_OFFSET_COMMIT, retried

        # The broker holds it open on the partition this module computes for the group (which
        # other groups share: other tests' transactions may be open there too)...
        _, open_there = open_on_offsets_partition(admin, group)
        found = [txn for txn in open_there if txn.producer_id == pid]
        assert len(found) == 1
        # ...and its coordinator still runs it: live, so never hanging, however old it looks.
        assert active_producer_ids(admin, [pid]) == {pid}
        far_future = int(time.time() * 1000) + 3_600_000
        assert hanging(found, {pid}, far_future) == []
        aborted = abort_hanging(kafka_bootstrap, group, open_longer_than_s=0)
        assert pid not in {txn.producer_id for txn in aborted}

        # The administrative abort marker ends it on the partition: the group reads its last
        # committed offset again.
        abort(admin, found)
        assert fetch_committed(kafka_bootstrap, group, tp) == {tp: 1}
        _, after = open_on_offsets_partition(admin, group)
        assert pid not in {txn.producer_id for txn in after}
    finally:
        producer.close(timeout=1)
        admin.close()


def test_the_cli_lists_what_is_open_and_never_calls_a_live_transaction_hanging(
    kafka_bootstrap: str, isolation: str
) -> None:
    """`escalate hanging`: an open transaction of the grouper's group is listed as in flight,
    and --abort leaves it alone."""
    topic = f"{isolation}.hanging-cli"
    group = consumer_groups(isolation)[1]  # the grouper's
    tp = TopicPartition(topic, 0)
    env = {
        **os.environ,
        "ESCALATE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ESCALATE_APP_ID": isolation,
    }
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"{isolation}-hanging-cli"
    )
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        producer.init_transactions()
        begin_with_offset(producer, tp, group, 1)
        pid = producer._transaction_manager.producer_id_and_epoch.producer_id

        for args in (("hanging",), ("hanging", "--abort", "--open-longer-than", "0")):
            shown = escalate(env, *args)
            ours = [line for line in shown.stdout.splitlines() if f"producer {pid} " in line]
            assert len(ours) == 1, shown.stdout + shown.stderr
            assert ours[0].endswith("in flight") and group in ours[0], ours[0]
            # Exit 1 only while something (another test's leftover) hangs there unaborted.
            hangs = "HANGING" in shown.stdout and "--abort" not in args
            assert shown.returncode == (1 if hangs else 0), shown.stdout + shown.stderr
        producer.commit_transaction()  # still ours to commit: nothing aborted it
        assert fetch_committed(kafka_bootstrap, group, tp) == {tp: 1}
    finally:
        producer.close(timeout=1)
        admin.close()


def test_the_cli_says_when_kafka_cannot_be_reached() -> None:
    env = {**os.environ, "ESCALATE_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    shown = escalate(env, "hanging")
    assert shown.returncode == 2, shown.stdout + shown.stderr
    [said] = shown.stderr.strip().splitlines()  # one line, no client noise, no traceback
    assert said.startswith("cannot reach Kafka at 127.0.0.1:"), said
