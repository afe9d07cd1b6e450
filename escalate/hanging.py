"""Transactions left open on a consumer group's offsets partition that nobody will ever end.

A stage that commits its consumed offsets inside a transaction writes them to the group's
``__consumer_offsets`` partition as *pending*; the transaction's commit or abort marker makes
them final. Until then, a ``read_committed`` consumer of that group cannot learn where to
start: the broker answers its offset fetch with ``UNSTABLE_OFFSET_COMMIT``, and kafka-python
and aiokafka retry that forever.

After the only broker was stopped (SIGTERM) and started again, the fault suite saw such a
transaction stay open on the offsets partition while its transaction coordinator listed it as
complete, so no marker was coming (``describe_producers`` showed it open with
``coordinator_epoch`` -1: no marker ever written there for that producer). The stage waited
with ``UNSTABLE_OFFSET_COMMIT`` for as long as anyone watched, and a fresh process, which fences
the transactional id, waited too: fencing aborts only what the coordinator knows is open.

Kafka's remedy for a hanging transaction (KIP-664, ``kafka-transactions.sh find-hanging`` and
``abort``) is an administrative abort marker written straight to the partition. This module
does that for one group's offsets partition, and only for a transaction that is both open on
the partition for longer than any transaction may last and not active at its coordinator: a
live transaction is never touched. The pending offsets it held are dropped, so the group reads
on from its last committed offsets; stages repeat work after that exactly as after a crash.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("escalate.hanging")

OFFSETS_TOPIC = "__consumer_offsets"
#: transaction states in which the coordinator will still write the markers itself
ACTIVE_STATES = frozenset({"Ongoing", "PrepareCommit", "PrepareAbort", "PrepareEpochFence"})
#: kafka-python's and aiokafka's default transaction.timeout.ms: no transaction of our
#: producers stays legitimately open longer than this (the coordinator aborts it)
OPEN_LONGER_THAN_S = 60.0


@dataclass(frozen=True)
class OpenTransaction:
    """A producer's transaction open on one partition, as the partition's leader sees it."""

    partition: int
    producer_id: int
    producer_epoch: int
    coordinator_epoch: int
    last_write_ms: int


def java_string_hash(text: str) -> int:
    """Java's ``String.hashCode`` (over UTF-16 code units, 32-bit wrap-around)."""
    h = 0
    data = text.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + int.from_bytes(data[i : i + 2], "big")) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def offsets_partition(group: str, partitions: int) -> int:
    """The ``__consumer_offsets`` partition holding ``group``'s offsets, as the broker picks it:
    the absolute value of the group id's Java hash code (Kafka's ``Utils.abs``, which maps
    ``Integer.MIN_VALUE`` to 0) modulo the partition count."""
    h = java_string_hash(group)
    return (0 if h == -(1 << 31) else abs(h)) % partitions


def hanging(
    open_transactions: Iterable[OpenTransaction],
    active_producer_ids: set[int],
    now_ms: int,
    open_longer_than_s: float = OPEN_LONGER_THAN_S,
) -> list[OpenTransaction]:
    """The open transactions nobody will end: not active at their coordinator, and silent on
    the partition for longer than a transaction may last (so one that began a moment ago and
    whose coordinator state we read a moment before is never mistaken for one)."""
    return [
        txn
        for txn in open_transactions
        if txn.producer_id not in active_producer_ids
        and now_ms - txn.last_write_ms > open_longer_than_s * 1000
    ]


def open_on_offsets_partition(admin: Any, group: str) -> tuple[int, list[OpenTransaction]]:
    """The group's offsets partition and the transactions its leader holds open there."""
    from kafka import TopicPartition

    described = admin.describe_topics([OFFSETS_TOPIC])
    count = len(described[0]["partitions"])
    partition = offsets_partition(group, count)
    tp = TopicPartition(OFFSETS_TOPIC, partition)
    state = admin.describe_producers([tp])[tp]
    return partition, [
        OpenTransaction(
            partition=partition,
            producer_id=p.producer_id,
            producer_epoch=p.producer_epoch,
            coordinator_epoch=p.coordinator_epoch,
            last_write_ms=p.last_timestamp,
        )
        for p in state.active_producers
        if p.current_transaction_start_offset >= 0
    ]


def active_producer_ids(admin: Any, producer_ids: Sequence[int]) -> set[int]:
    """Of ``producer_ids``, those whose coordinator still has a transaction in flight."""
    if not producer_ids:
        return set()
    listings = admin.list_transactions(producer_id_filters=list(producer_ids))
    return {
        listing.producer_id
        for per_broker in listings.values()
        for listing in per_broker
        if listing.state.value in ACTIVE_STATES
    }


def abort(admin: Any, transactions: Iterable[OpenTransaction]) -> None:
    """Write an abort marker for each transaction straight to its partition."""
    from kafka import TopicPartition
    from kafka.admin import AbortTransactionSpec

    for txn in transactions:
        admin.abort_transaction(
            AbortTransactionSpec(
                TopicPartition(OFFSETS_TOPIC, txn.partition),
                txn.producer_id,
                txn.producer_epoch,
                txn.coordinator_epoch,
            )
        )


@dataclass(frozen=True)
class Finding:
    """One transaction open on an offsets partition that some of ``groups`` keep offsets on."""

    groups: tuple[str, ...]
    txn: OpenTransaction
    in_flight: bool  # its coordinator still runs it
    hanging: bool

    def describe(self, now_ms: int) -> str:
        state = "HANGING" if self.hanging else "in flight" if self.in_flight else "ending"
        return (
            f"{OFFSETS_TOPIC}-{self.txn.partition} (groups: {', '.join(self.groups)}): "
            f"producer {self.txn.producer_id} epoch {self.txn.producer_epoch}, last write "
            f"{(now_ms - self.txn.last_write_ms) / 1000:.0f} s ago, {state}"
        )


def survey(
    admin: Any, groups: Sequence[str], now_ms: int, open_longer_than_s: float = OPEN_LONGER_THAN_S
) -> list[Finding]:
    """Every transaction open on the offsets partitions of ``groups``, judged."""
    by_partition: dict[int, list[str]] = {}
    open_there: dict[int, list[OpenTransaction]] = {}
    for group in groups:
        partition, found = open_on_offsets_partition(admin, group)
        by_partition.setdefault(partition, []).append(group)
        open_there[partition] = found
    everything = [txn for found in open_there.values() for txn in found]
    active = active_producer_ids(admin, sorted({txn.producer_id for txn in everything}))
    stuck = set(hanging(everything, active, now_ms, open_longer_than_s))
    return [
        Finding(tuple(by_partition[txn.partition]), txn, txn.producer_id in active, txn in stuck)
        for txn in everything
    ]


def abort_hanging(
    bootstrap: str, group: str, open_longer_than_s: float = OPEN_LONGER_THAN_S
) -> list[OpenTransaction]:
    """Find the transactions hanging on ``group``'s offsets partition and abort them; returns
    what it aborted. Raises what the admin client raises (the caller decides what a failed
    round means)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id=f"{group}-hanging", request_timeout_ms=10_000
    )
    try:
        now_ms = int(time.time() * 1000)
        stuck = [f for f in survey(admin, [group], now_ms, open_longer_than_s) if f.hanging]
        for finding in stuck:
            log.warning(
                "%s; aborting it so the group's offsets can be read "
                "(its coordinator no longer tracks it)",
                finding.describe(now_ms),
            )
        abort(admin, [f.txn for f in stuck])
        return [f.txn for f in stuck]
    finally:
        with contextlib.suppress(Exception):
            admin.close()
