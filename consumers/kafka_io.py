"""The one Kafka client loop of the consumers: poll, hand records to a stage, publish what it
produced, commit, and make sure no single message can stop the loop.

A stage (notifier, audit writer, any later one) only says how to handle records. The loop owns
everything that must be the same for all of them:

- Outputs are acknowledged by the broker (acks=all) before the offsets they answer for are
  committed, so a crash repeats work but never loses it.
- A record whose handling raises is a *poison* message: it goes to the dead-letter topic with
  the stage and the reason, the offset moves past it, and the next record is handled. A stage
  that handles batches gets the failed batch back one record at a time, so only the culprit is
  set aside.
- ``Unavailable`` (the database or the SMTP relay cannot be reached) and broker errors are not
  the message's fault: nothing is dead-lettered, the uncommitted records are rewound and
  retried after a growing pause, and the component stays up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel

from consumers.dead_letters import DeadLetters, Reason, SourceRecord, describe_failure
from consumers.metrics_registry import PerRegistry
from schemas.validation import validation_reason

PUBLISH_TIMEOUT_S = 30.0
MAX_PAUSE_S = 30.0
#: see ``LagReporter.stalled``
STALL_S = 60.0
#: a poll asks for at most a second; one that has not returned in this long never will
POLL_LIMIT_S = 45.0
#: no round of a consumer loop for this long: stuck beyond every bounded step (restoring a
#: partition 60 s, a transactional call 30 s, a poll 45 s)
DEAD_AFTER_S = 240.0

log = logging.getLogger("escalate.consumer")

__all__ = [
    "PUBLISH_TIMEOUT_S",
    "ConsumerConfig",
    "Handled",
    "LagReporter",
    "Outgoing",
    "RecordLike",
    "Stage",
    "Unavailable",
    "run_consumer",
    "to_json",
    "validation_reason",
]


# The parts of a kafka-python ConsumerRecord the consumers use (tests pass their own).
RecordLike = SourceRecord


@dataclass(frozen=True)
class Outgoing:
    """One message to publish before the source offset may be committed."""

    topic: str
    key: bytes | None
    value: bytes


@dataclass(frozen=True)
class Handled:
    """Records a stage has finished, and what must be published before committing them."""

    records: Sequence[RecordLike]
    outgoing: list[Outgoing] = field(default_factory=list)


class Unavailable(Exception):
    """Something the stage depends on cannot be reached (database, SMTP relay).

    Not the message's fault: the records are retried later, never dead-lettered.
    """


class Stage(Protocol):
    """What the loop needs from a consumer stage."""

    #: the stage's name in dead letters and metrics
    name: str
    #: True when ``handle`` finishes records strictly one by one, in order: then the first
    #: unfinished record is the one that raised, and records before it are never handled again.
    one_by_one: bool
    dead_letters: DeadLetters

    def handle(self, records: Sequence[RecordLike], stop: threading.Event) -> Iterator[Handled]:
        """Handle ``records`` (one partition's, in offset order); yield what is finished.

        Returning before every record is handled (``stop`` set) leaves the rest uncommitted.
        """
        ...

    def on_poison(self, record: RecordLike, exc: Exception) -> list[Outgoing]:
        """Messages to publish besides the dead letter when ``record`` could not be handled."""
        ...

    def incident_of(self, record: RecordLike) -> str | None:
        """The incident a record is about, when its key tells (for the audit trail)."""
        ...


@dataclass(frozen=True)
class ConsumerConfig:
    """The Kafka side of one consumer stage."""

    bootstrap_servers: str
    group_id: str
    topics: tuple[str, ...]
    dead_letter_topic: str
    max_poll_records: int = 100
    max_poll_interval_ms: int = 300_000
    poll_timeout_ms: int = 500
    #: behind on its partitions yet given nothing for this long: the client is replaced
    stall_s: float = STALL_S


class LoopMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.pauses = Counter(
            "escalate_consumer_pauses",
            "Times a consumer stage paused because a dependency (broker, database, SMTP relay)"
            " was unavailable; the records were retried, not dropped.",
            ["stage", "cause"],
            registry=registry,
        )
        self.lag = Gauge(
            "escalate_consumer_lag_messages",
            "Messages on the partitions this process consumes that it has not read yet, by "
            "consumer group and topic (sum over the group's processes for the group's lag).",
            ["group", "topic"],
            registry=registry,
        )


class LagReporter:
    """Sets ``escalate_consumer_lag_messages`` for one consumer, every few seconds, and says
    when the consumer has stalled.

    The consumer measures itself: the high watermarks its fetches brought back less its
    positions, so the figure needs no admin access and no request (see ``_ends`` for why).
    A partition not fetched yet is unknown; a round that knows nothing keeps the last figure.
    ``end_offsets``/``background`` measure otherwise (tests, and a client of one's own).
    """

    def __init__(
        self,
        consumer: Any,
        group: str,
        topics: Sequence[str],
        registry: CollectorRegistry,
        every_s: float = 5.0,
        end_offsets: Callable[[list[Any]], dict[Any, int]] | None = None,
        background: bool = False,
    ) -> None:
        self.consumer = consumer
        self.group = group
        self.topics = tuple(topics)
        self.gauge = loop_metrics_for(registry).lag
        self.every_s = every_s
        self._next = 0.0
        started = time.monotonic()
        #: when the consumer last handled records, or was measured to be caught up
        self._progress_at = started
        self._end_offsets = end_offsets
        self._background = background
        self._lock = threading.Lock()
        self._latest: tuple[float, dict[Any, int]] | None = None
        self._measuring: threading.Thread | None = None

    def handled(self, count: int) -> None:
        """The loop has finished with ``count`` records from a poll."""
        if count:
            self._progress_at = time.monotonic()

    def stalled(self, after_s: float) -> bool:
        """Behind (or unmeasurable) for ``after_s`` with nothing received meanwhile.

        kafka-python 3.0 can stop refreshing its metadata after a broker dies: the consumer
        then polls on, gets nothing and never learns the partitions' new leaders (seen on a
        three-broker cluster with one broker killed). The loop answers a stall by replacing
        the client, which reads from the committed offsets again.
        """
        now = time.monotonic()
        return now - self._progress_at > after_s

    def _ends(self, tps: list[Any]) -> dict[Any, int]:
        if self._end_offsets is not None:
            return self._end_offsets(tps)
        # The high watermark the consumer's last fetch brought back: no request, so nothing
        # to wait for. Asking the consumer's client for end offsets, in the loop or from a
        # thread beside it, held its loop for minutes after a broker restart (kafka-python
        # 3.0 can lose the reply). The price: after a partition's leader dies, its high
        # watermark stays where it was until fetches work again, so a consumer stuck there can
        # look caught up; the poll guard and the liveness check cover that case.
        ends: dict[Any, int] = {}
        for tp in tps:
            high = self.consumer.highwater(tp)
            if high is not None:
                ends[tp] = high
        return ends

    def _measure(self, tps: list[Any]) -> None:
        try:
            ends = self._ends(tps)
        except Exception as exc:  # a figure for operators must never stop the consumer
            log.debug("lag not measured this round: %s", type(exc).__name__)
            return
        with self._lock:
            self._latest = (time.monotonic(), ends)

    def maybe_report(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every_s
        try:
            assigned = list(self.consumer.assignment())
        except Exception:
            return
        if assigned and (self._measuring is None or not self._measuring.is_alive()):
            if self._background:
                self._measuring = threading.Thread(
                    target=self._measure, args=(assigned,), name=f"{self.group}-lag", daemon=True
                )
                self._measuring.start()
            else:
                self._measure(assigned)
        with self._lock:
            latest = self._latest
        if latest is None or now - latest[0] > FRESH_FOR * max(self.every_s, 1.0):
            return  # nothing measured lately: unknown, neither behind nor caught up
        ends = latest[1]
        totals = dict.fromkeys(self.topics, 0)
        measured = 0
        try:
            for tp in assigned:
                if tp not in ends:
                    continue
                measured += 1
                behind = ends[tp] - self.consumer.position(tp)
                totals[tp.topic] = totals.get(tp.topic, 0) + max(0, behind)
        except Exception as exc:
            log.debug("lag not measured this round: %s", type(exc).__name__)
            return
        if assigned and measured == len(assigned) and not any(totals.values()):
            # Caught up: waiting is not stalling. A consumer with no partitions is not caught
            # up but waiting for the group to hand it some: a join that never completes (seen
            # with kafka-python 3.0 when metadata changed during a rebalance) must count as a
            # stall, and a deployment never runs more members than partitions (SCALING.md).
            self._progress_at = now
        if measured:
            for topic, total in totals.items():
                self.gauge.labels(group=self.group, topic=topic).set(total)

    def close(self) -> None:
        """Nothing to release today; the loops call it when they drop the client."""


class PollGuard:
    """Frees a ``poll`` that has not returned in ``limit_s``, so the loop can replace the client.

    kafka-python 3.0 runs its network I/O on a thread of its own and makes ``poll`` wait for
    it on an event with no deadline; when the reply it waits for is lost (seen after a broker
    was killed, and after one was restarted) ``poll`` never returns, whatever its timeout, and
    the loop cannot even notice that it stalled. A poll asks for at most a second; one that
    has taken ``limit_s`` is released by failing the client's pending waiters (an internal of
    kafka-python: the only way to wake that event), which makes ``poll`` raise. ``tripped``
    then tells the loop to replace the client.
    """

    def __init__(
        self,
        consumer: Any,
        what: str,
        limit_s: float = POLL_LIMIT_S,
        dead_after_s: float = DEAD_AFTER_S,
        on_dead: Callable[[str], None] | None = None,
    ) -> None:
        self._consumer = consumer
        self._what = what
        self._limit_s = limit_s
        #: the liveness check: the loop has not come back to ``poll`` for far longer than any
        #: of its bounded steps may take, so it is stuck where nothing in this process can
        #: free it; ``on_dead`` then ends the process (exit 75) for the orchestrator to start
        #: a fresh one, as a failed liveness probe would. A broker that is away does not
        #: trip it: the loop still goes round, getting errors or nothing.
        self._dead_after_s = dead_after_s
        self._on_dead = on_dead or exit_stuck
        self._round_at = time.monotonic()
        self._since: float | None = None
        self.tripped = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"{what}-poll-guard", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def polling(self) -> Iterator[None]:
        self._since = self._round_at = time.monotonic()
        try:
            yield
        finally:
            self._since = None

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self._limit_s / 4)):
            if time.monotonic() - self._round_at > self._dead_after_s:
                self._on_dead(f"{self._what}'s consumer loop")
                return
            since = self._since
            if since is None or self.tripped or time.monotonic() - since < self._limit_s:
                continue
            self.tripped = True
            log.error(
                "%s: poll has not returned for %.0f s; freeing it to replace the client",
                self._what,
                self._limit_s,
            )
            release_waiters(self._consumer)

    def close(self) -> None:
        self._stop.set()


#: exit status of a process whose loop is stuck where nothing in it can free it (EX_TEMPFAIL)
EXIT_STUCK = 75


def exit_stuck(what: str) -> None:
    log.critical(
        "%s has made no progress for too long; exiting so a fresh process takes over", what
    )
    logging.shutdown()
    os._exit(EXIT_STUCK)


def release_waiters(consumer: Any) -> bool:
    """Fail whatever the consumer's caller thread waits for; False if this client has no such
    internals (another kafka-python version: then only a stall check can help)."""
    from kafka.errors import KafkaTimeoutError

    fail = getattr(getattr(consumer, "_net", None), "_fail_pending_waiters", None)
    if fail is None:
        return False
    fail(KafkaTimeoutError("a poll did not return; the client is being replaced"))
    return True


#: how long the side client may take to answer for the end offsets
MEASURE_TIMEOUT_MS = 10_000
#: a measurement older than this many reporting intervals is not used
FRESH_FOR = 3


loop_metrics_for = PerRegistry(LoopMetrics)


def to_json(model: BaseModel) -> bytes:
    return model.model_dump_json().encode("utf-8")


def publish(producer: Any, outgoing: Sequence[Outgoing]) -> None:
    """Send and wait until the broker has acknowledged every message (acks=all)."""
    futures = [producer.send(o.topic, key=o.key, value=o.value) for o in outgoing]
    for future in futures:
        future.get(timeout=PUBLISH_TIMEOUT_S)


def poison_letter(stage: Stage, topic: str, record: RecordLike, exc: Exception) -> Outgoing:
    letter = stage.dead_letters.of(
        record,
        Reason.failed,
        f"{stage.name} raised {describe_failure(exc)}",
        stage.incident_of(record),
    )
    return Outgoing(topic, record.key, to_json(letter))


class _Partition:
    """Runs one partition's records through the stage, publishing and committing as it goes."""

    def __init__(
        self,
        stage: Stage,
        config: ConsumerConfig,
        commit: Callable[[RecordLike], None],
        send: Callable[[Sequence[Outgoing]], None],
    ) -> None:
        self.stage = stage
        self.config = config
        self.commit = commit
        self.send = send

    def run(self, records: Sequence[RecordLike], stop: threading.Event) -> bool:
        """True when every record was finished (handled or dead-lettered)."""
        done = 0
        try:
            for handled in self.stage.handle(records, stop):
                self.send(handled.outgoing)
                if handled.records:
                    last = handled.records[-1]
                    self.commit(last)
                    done = sum(1 for r in records if r.offset <= last.offset)
        except Unavailable:
            raise
        except Exception as exc:
            if _is_kafka_error(exc):
                raise
            rest = records[done:]
            if not rest:
                # Every record was finished and committed; nothing to set aside or lose.
                log.error(
                    "%s failed after its last record: %s", self.stage.name, describe_failure(exc)
                )
                return True
            if self.stage.one_by_one or len(rest) == 1:
                self._set_aside(rest[0], exc)
                return self.run(rest[1:], stop) if len(rest) > 1 else True
            # A batch failed as a whole: try each record alone to find the one at fault.
            return all(not stop.is_set() and self.run([record], stop) for record in rest)
        return done == len(records)

    def _set_aside(self, record: RecordLike, exc: Exception) -> None:
        out = [poison_letter(self.stage, self.config.dead_letter_topic, record, exc)]
        out += self.stage.on_poison(record, exc)
        self.send(out)
        self.commit(record)


def _is_kafka_error(exc: BaseException) -> bool:
    from kafka.errors import KafkaError

    return isinstance(exc, KafkaError)


def run_consumer(
    config: ConsumerConfig,
    stage: Stage,
    stop: threading.Event,
    registry: CollectorRegistry,
) -> None:
    """Consume until ``stop`` is set. Blocking: run it in a thread of its own.

    A client that stalls (``LagReporter.stalled``) is closed and replaced by a new one, which
    joins the group again and goes on from the committed offsets.
    """
    metrics = loop_metrics_for(registry)
    while not _consume(config, stage, stop, registry):
        metrics.pauses.labels(stage=stage.name, cause="stalled_client").inc()
        log.warning(
            "%s: behind on %s but given nothing for %.0f s; replacing the Kafka client",
            stage.name,
            ", ".join(config.topics),
            config.stall_s,
        )


def _consume(
    config: ConsumerConfig,
    stage: Stage,
    stop: threading.Event,
    registry: CollectorRegistry,
) -> bool:
    """One client's life: True once ``stop`` is set, False when the client stalled."""
    from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata
    from kafka.errors import CommitFailedError, KafkaError

    metrics = loop_metrics_for(registry)
    consumer = KafkaConsumer(
        bootstrap_servers=config.bootstrap_servers,
        group_id=config.group_id,
        client_id=config.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=config.max_poll_records,
        max_poll_interval_ms=config.max_poll_interval_ms,
    )
    producer = KafkaProducer(
        bootstrap_servers=config.bootstrap_servers,
        client_id=config.group_id,
        acks="all",
        enable_idempotence=True,
    )
    pause_s = 1.0
    # Where each partition of the current batch stands: the first offset not yet committed.
    pending: dict[Any, int] = {}

    def commit(record: RecordLike) -> None:
        tp = _tp(record)
        consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "", -1)})
        pending[tp] = record.offset + 1

    runner = _Partition(stage, config, commit, lambda out: publish(producer, out))
    lag = LagReporter(consumer, config.group_id, config.topics, registry)
    guard = PollGuard(consumer, stage.name)
    try:
        await_metadata(consumer, config.topics)
        consumer.subscribe(list(config.topics))
        log.info(
            "%s consuming %s as group %s", stage.name, ", ".join(config.topics), config.group_id
        )
        while not stop.is_set():
            try:
                with guard.polling():
                    batch = consumer.poll(timeout_ms=config.poll_timeout_ms)
            except KafkaError:
                if guard.tripped:
                    return False  # replace the client
                raise
            with guard.polling():
                lag.maybe_report()
            if guard.tripped:
                return False
            if not batch:
                if lag.stalled(config.stall_s):
                    return False
                continue
            pending.clear()
            pending.update({tp: records[0].offset for tp, records in batch.items() if records})
            try:
                for tp, records in batch.items():
                    if stop.is_set() or not runner.run(records, stop):
                        break
                    pending.pop(tp, None)
                pause_s = 1.0
            except CommitFailedError as exc:
                log.warning(
                    "%s: commit failed, the group rebalanced; re-reading: %s", stage.name, exc
                )
            except (Unavailable, KafkaError) as exc:
                cause = "dependency" if isinstance(exc, Unavailable) else "broker"
                metrics.pauses.labels(stage=stage.name, cause=cause).inc()
                log.error("%s paused %.0f s, will retry (%s): %s", stage.name, pause_s, cause, exc)
                stop.wait(pause_s)
                pause_s = min(MAX_PAUSE_S, pause_s * 2)
            finally:
                _rewind(consumer, pending)
                lag.handled(sum(len(records) for records in batch.values()))
        return True
    finally:
        guard.close()
        lag.close()
        consumer.close(autocommit=False)
        producer.close(timeout=10)


def await_metadata(consumer: Any, topics: Sequence[str], timeout_s: float = 15.0) -> None:
    """Learn the topics' partitions before joining the group.

    A leader that assigns before its client has the topics' metadata hands out nothing, and the
    metadata arriving a moment later forces a second rebalance; with kafka-python 3.0 that
    second join was seen to hang for minutes on a busy three-broker cluster.
    """
    deadline = time.monotonic() + timeout_s
    for topic in topics:
        topic_partitions(consumer, topic, timeout_s=max(0.0, deadline - time.monotonic()))


def topic_partitions(consumer: Any, topic: str, timeout_s: float = 15.0) -> list[Any]:
    """All partitions of ``topic``, [] if it does not exist.

    A client that has just connected knows no topic yet: ``partitions_for_topic`` answers None
    until metadata arrives, so ask for it (``topics()`` fetches it) until the deadline.
    """
    from kafka import TopicPartition

    deadline = time.monotonic() + timeout_s
    while True:
        numbers = consumer.partitions_for_topic(topic)
        if numbers:
            return [TopicPartition(topic, n) for n in sorted(numbers)]
        if topic in consumer.topics() or time.monotonic() > deadline:
            numbers = consumer.partitions_for_topic(topic) or []
            return [TopicPartition(topic, n) for n in sorted(numbers)]
        time.sleep(0.2)


def _tp(record: RecordLike) -> Any:
    from kafka import TopicPartition

    return TopicPartition(record.topic, record.partition)


def _rewind(consumer: Any, pending: dict[Any, int]) -> None:
    """Seek back over records that were fetched but not committed, so they are read again."""
    if not pending:
        return
    assigned = consumer.assignment()
    for tp, offset in pending.items():
        if tp in assigned:
            consumer.seek(tp, offset)
