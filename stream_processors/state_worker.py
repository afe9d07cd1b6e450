"""A Kafka service that keeps per-key state and survives kill -9: the machinery, not the rules.

Why not faust: with faust tables and timers under exactly-once, table updates were lost, a
restore stopped short and recovery crashed on rebalance with two workers (measured here; see
``KAFKA-NOTES.md``). The design that held up under 10 × kill -9 with one and two workers is a
plain kafka-python service that keeps its state on a compacted topic and commits state, outputs
and consumed offsets in one transaction. This module is that design once; a subclass (the
escalator, the grouper) says what the state is and what one record or one deadline does to it.

- The input topics and the state topic share key and partition count, so partition *p* of each
  belongs together, and whoever owns input partition *p* owns the state of partition *p*. The
  range assignor hands a worker the same partition numbers of every input.
- Each owned partition *p* has its own transactional producer, ``{group_id}-{p}``. A worker that
  takes *p* over initialises that id, which fences the previous owner (a zombie can no longer
  commit anything for *p*) and aborts whatever it left open. Only then does it read *p*'s state
  back from the state topic, read_committed and to the end, and only then does it handle
  records of *p*: state read any earlier could miss the zombie's last commit.
- One poll batch of one partition is one transaction: outputs, new states (a ``None`` state is
  written as a tombstone, so compaction forgets the key), dead letters and the consumed
  offsets. Deadlines are checked between polls, and what falls due in a partition is a
  transaction of its own. Killed anywhere, nothing of an uncommitted step is visible to a
  read_committed reader, and whoever owns *p* next takes the step again from the committed
  state: a subclass that derives its ids from the state and the input repeats it exactly.
- A record that does not fit its contract, or whose handling raises, goes to the dead-letter
  topic inside that same transaction, and the partition moves on past it: one message must
  never stop the pipeline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from pydantic import BaseModel, ValidationError

from consumers.dead_letters import DeadLetters, Reason, SourceRecord, describe_failure
from consumers.kafka_io import STALL_S, LagReporter, PollGuard, await_metadata
from schemas.common import utcnow
from schemas.validation import validation_reason

S = TypeVar("S", bound=BaseModel)

#: one message to send in a transaction: topic, key, value
Output = tuple[str, bytes, BaseModel]


class HasPartition(Protocol):
    @property
    def partition(self) -> int: ...


TP = TypeVar("TP", bound=HasPartition)
R = TypeVar("R")


@dataclass(frozen=True)
class WorkerOptions:
    """Names and limits of one state worker."""

    #: "escalator", "grouper": the dead letters' stage, the logger (``escalate.{stage}``)
    stage: str
    #: the consumer group; also the prefix of every transactional id (``{group_id}-{p}``), so
    #: it must never change for a deployed worker: a new id would not fence the old owner
    group_id: str
    #: topics consumed, all with the state topic's key and partition count
    inputs: tuple[str, ...]
    state_topic: str
    dead_letter_topic: str
    poll_timeout_ms: int = 250
    max_poll_records: int = 200
    #: a stable name for this worker (e.g. the pod's name): with it the worker is a static
    #: group member, and one restarted after a crash takes its partitions straight back
    #: instead of waiting for the group to notice the old one is gone
    instance_id: str | None = None
    restore_timeout_s: float = 60.0
    #: longest one transactional call may wait for the broker before it fails as a broker
    #: error (``consumers.transactions``); the worker then drops and retakes its partitions
    transaction_call_timeout_s: float = 30.0
    #: longest a whole transaction may take before the process gives up (see ``Watchdog``):
    #: the backstop for a hang the per-call limit does not cover
    transaction_timeout_s: float = 120.0
    #: behind on its inputs yet given nothing for this long: the clients are replaced
    stall_s: float = STALL_S


#: exit status of a worker whose transaction hung (EX_TEMPFAIL: try again)
EXIT_STUCK = 75


def _exit_stuck(log: logging.Logger, what: str) -> None:
    log.critical("%s has not returned; exiting so a fresh process takes over", what)
    logging.shutdown()
    os._exit(EXIT_STUCK)


class Watchdog:
    """Ends the process when a guarded call outlives its limit.

    Each transactional call has its own limit (``consumers.transactions``); this is the
    backstop for whatever still hangs past it: a whole transaction that has not finished in
    ``transaction_timeout_s`` means the worker sits on its partitions doing nothing (seen when
    a test's cluster was torn down under a running escalator). Exiting hands the partitions to the
    group; the next process's ``init_transactions`` fences this one's transactional ids and
    aborts what it left open. ``escalate up`` stops the pipeline when a component exits, and
    an orchestrator restarts it.
    """

    def __init__(self, limit_s: float, on_stuck: Callable[[str], None]) -> None:
        self._limit_s = limit_s
        self._on_stuck = on_stuck
        self._lock = threading.Lock()
        self._guarding: tuple[str, float] | None = None
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        with self._lock:
            self._guarding = (what, time.monotonic())
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._guarding = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self._limit_s / 4))
            with self._lock:
                guarding = self._guarding
            if guarding is not None and time.monotonic() - guarding[1] > self._limit_s:
                self._on_stuck(guarding[0])
                return


class Unusable(Exception):
    """Raised by ``apply`` for a record that fits its schema but cannot be used; the message
    becomes the dead letter's detail (reason ``unparseable``), so it must not quote the value."""


class Work(Generic[S]):
    """The states one transaction changes, seen over its partition's committed states.

    ``work.get(key)`` is the state as this transaction has it so far; ``work[key] = state``
    changes it, ``work[key] = None`` deletes it (a tombstone). What a record changed is kept
    only if handling the record finishes: a hook that raises halfway leaves nothing behind.
    """

    def __init__(self, committed: Mapping[str, S]) -> None:
        self._committed = committed
        self.changed: dict[str, S | None] = {}
        self._record: dict[str, S | None] = {}

    def get(self, key: str) -> S | None:
        if key in self._record:
            return self._record[key]
        if key in self.changed:
            return self.changed[key]
        return self._committed.get(key)

    def __setitem__(self, key: str, state: S | None) -> None:
        self._record[key] = state

    def keep(self) -> None:
        """The current record is done: its changes join the transaction."""
        self.changed.update(self._record)
        self._record.clear()

    def discard(self) -> None:
        """The current record failed: forget what it changed."""
        self._record.clear()


def by_partition(batch: Mapping[TP, Sequence[R]]) -> dict[int, list[tuple[TP, Sequence[R]]]]:
    """A poll batch regrouped by partition number: the records of every input topic that
    share a partition number share a state partition, and so one transaction."""
    grouped: dict[int, list[tuple[TP, Sequence[R]]]] = {}
    for tp, records in batch.items():
        if records:
            grouped.setdefault(tp.partition, []).append((tp, records))
    return grouped


def fold_state(
    states: dict[str, S],
    key: bytes | None,
    value: bytes | None,
    model: type[S],
    key_of: Callable[[S], str],
) -> bool:
    """Apply one record of the state topic to ``states``; False when it could not be read.

    A tombstone (no value) deletes its key, as compaction eventually will.
    """
    if value is None:
        if key is not None:
            states.pop(key.decode("utf-8", "replace"), None)
        return True
    try:
        state = model.model_validate_json(value)
    except ValidationError:
        return False
    states[key_of(state)] = state
    return True


class StateWorker(Generic[S]):
    """Owns partitions, reads their state back, and commits what the subclass's hooks decide.

    Subclasses set ``state_model`` and implement ``state_key``, ``apply``, and, if their states
    have deadlines, ``due`` and ``on_due``. Hooks run on the polling thread, one at a time.
    """

    #: the state topic's value model, for reading the state back
    state_model: type[S]

    def __init__(
        self,
        options: WorkerOptions,
        *,
        restore_seconds: Histogram,
        registry: CollectorRegistry = REGISTRY,
        clock: Callable[[], datetime] = utcnow,
        on_stuck: Callable[[str], None] | None = None,
    ) -> None:
        self.options = options
        self.clock = clock
        self.registry = registry
        # The subclass's own metric, so each worker keeps its dashboard name.
        self.restore_seconds = restore_seconds
        self.dead_letters = DeadLetters(options.stage, registry)
        self.log = logging.getLogger(f"escalate.{options.stage}")
        self.watchdog = Watchdog(
            options.transaction_timeout_s, on_stuck or (lambda what: _exit_stuck(self.log, what))
        )
        # Per owned partition: its transactional producer and its committed states.
        self.producers: dict[int, Any] = {}
        self.states: dict[int, dict[str, S]] = {}
        # Keys whose on_due raised: left out of ticks until a record rewrites them, so one
        # broken state does not fail (and log) on every poll.
        self._stuck: dict[int, set[str]] = {}
        self._bootstrap = ""
        self._consumer: Any = None
        self._pending: set[int] = set()  # assigned, not yet taken over

    # ---- hooks ----

    def state_key(self, state: S) -> str:
        """The state topic key of ``state``."""
        raise NotImplementedError

    def apply(self, p: int, record: SourceRecord, work: Work[S], now: datetime) -> list[Output]:
        """Handle one input record of partition ``p``: change ``work``, return what to send.

        Raise ``ValidationError`` or ``Unusable`` for a record that does not fit; any other
        exception dead-letters the record as ``failed``. Either way the record's changes to
        ``work`` are dropped and the partition goes on.
        """
        raise NotImplementedError

    def due(self, states: Mapping[str, S], now: datetime) -> Iterable[S]:
        """The states of one partition whose deadline has come (none by default)."""
        return ()

    def on_due(self, state: S, now: datetime) -> tuple[S | None, list[Output]]:
        """A deadline of ``state`` has come: its new state (``None`` deletes it) and outputs.

        Should not raise: a state whose step fails is left alone (and logged) until a record
        changes it, which is rarely what a deadline wants.
        """
        return state, []

    def held_changed(self) -> None:
        """Called after partitions were taken or dropped and after each round of deadlines."""

    def incident_of(self, record: SourceRecord) -> str | None:
        """The incident a dead-lettered record is about, when known (for the audit trail)."""
        return None

    # ---- ownership of partitions ----

    def _take(self, partitions: set[int]) -> None:
        from consumers.transactions import TransactionalProducer

        for p in sorted(partitions - set(self.producers)):
            started = time.monotonic()
            producer = TransactionalProducer(
                bootstrap_servers=self._bootstrap,
                max_block_ms=int(self.options.transaction_call_timeout_s * 1000),
                client_id=f"{self.options.group_id}-{p}",
                transactional_id=f"{self.options.group_id}-{p}",
                acks="all",
                enable_idempotence=True,
            )
            # Fencing and reading back are bounded (max_block_ms, restore_timeout_s), but a
            # kafka-python 3.0 client can lose a reply and wait for it past any timeout; the
            # watchdog ends the process then, rather than leave it holding p doing nothing.
            with self.watchdog.guard(f"taking partition {p}"):
                producer.init_transactions()  # fences p's previous owner, aborts its leftovers
                self.producers[p] = producer
                self.states[p] = self._restore(p)
            self._stuck[p] = set()
            took = time.monotonic() - started
            self.restore_seconds.observe(took)
            self.log.info(
                "%s took partition %d: %d state(s) restored in %.1f s",
                self.options.stage,
                p,
                len(self.states[p]),
                took,
            )
        self.held_changed()

    def _drop(self, partitions: set[int]) -> None:
        for p in partitions:
            producer = self.producers.pop(p, None)
            self.states.pop(p, None)
            self._stuck.pop(p, None)
            if producer is not None:
                try:
                    producer.close(timeout=1)
                except Exception as exc:  # dropping a partition must never stop the worker
                    self.log.warning(
                        "partition %d's producer did not close cleanly: %s",
                        p,
                        describe_failure(exc),
                    )
        self.held_changed()

    def _restore(self, p: int) -> dict[str, S]:
        """Partition p's state as last committed (read_committed, to the end)."""
        from kafka import KafkaConsumer, TopicPartition

        tp = TopicPartition(self.options.state_topic, p)
        reader = KafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",
            client_id=f"{self.options.group_id}-restore-{p}",
        )
        states: dict[str, S] = {}
        try:
            reader.assign([tp])
            reader.seek_to_beginning(tp)
            end = reader.end_offsets([tp])[tp]
            deadline = time.monotonic() + self.options.restore_timeout_s
            while reader.position(tp) < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"state of partition {p} not read back in time")
                for record in reader.poll(timeout_ms=500).get(tp, []):
                    if not fold_state(
                        states, record.key, record.value, self.state_model, self.state_key
                    ):
                        self.log.error(
                            "unreadable state record %s[%d]@%d", tp.topic, p, record.offset
                        )
        finally:
            reader.close()
        return states

    # ---- transactions ----

    def _commit(
        self,
        p: int,
        changed: Mapping[str, S | None],
        out: Sequence[Output],
        offsets: dict[Any, Any] | None,
    ) -> None:
        """One transaction on partition p's producer: outputs, states, consumed offsets."""
        producer = self.producers[p]
        with self.watchdog.guard(f"the transaction on partition {p}"):
            self._transact(producer, p, changed, out, offsets)
        # Only what the broker committed becomes the state later transactions build on.
        held = self.states[p]
        for state_key, state in changed.items():
            if state is None:
                held.pop(state_key, None)
            else:
                held[state_key] = state
        self._stuck.get(p, set()).difference_update(changed)

    def _transact(
        self,
        producer: Any,
        p: int,
        changed: Mapping[str, S | None],
        out: Sequence[Output],
        offsets: dict[Any, Any] | None,
    ) -> None:
        producer.begin_transaction()
        try:
            for topic, key, model in out:
                producer.send(topic, key=key, value=model.model_dump_json().encode("utf-8"))
            for state_key, state in changed.items():
                producer.send(
                    self.options.state_topic,
                    key=state_key.encode("utf-8"),
                    value=None if state is None else state.model_dump_json().encode("utf-8"),
                    partition=p,
                )
            if offsets:
                producer.send_offsets_to_transaction(offsets, self._consumer.group_metadata())
            producer.commit_transaction()
        except BaseException:
            try:
                producer.abort_transaction()
            except Exception:  # already fenced or broken: the next owner aborts for us
                self.log.warning("abort of partition %d's transaction failed", p)
            raise

    def _handle(
        self, p: int, records: Iterable[SourceRecord], work: Work[S], now: datetime
    ) -> list[Output]:
        """Every record through ``apply``; a record that fails becomes a dead letter instead."""
        out: list[Output] = []
        for record in records:
            try:
                if record.value is None:
                    raise Unusable("empty message (tombstone)")
                produced = self.apply(p, record, work, now)
            except ValidationError as exc:
                work.discard()
                out.append(self._dead_letter(record, Reason.unparseable, validation_reason(exc)))
            except Unusable as exc:
                work.discard()
                out.append(self._dead_letter(record, Reason.unparseable, str(exc)))
            except Exception as exc:  # one message must never stop the pipeline
                work.discard()
                detail = f"{self.options.stage} raised {describe_failure(exc)}"
                out.append(self._dead_letter(record, Reason.failed, detail))
            else:
                work.keep()
                out += produced
        return out

    def _process(self, batch: Mapping[Any, Sequence[Any]]) -> None:
        from kafka import OffsetAndMetadata

        for p, parts in by_partition(batch).items():
            if p not in self.producers:
                self._put_back(p, parts)
                continue
            now = self.clock()
            work: Work[S] = Work(self.states[p])
            out: list[Output] = []
            offsets = {}
            for tp, records in parts:
                out += self._handle(p, records, work, now)
                offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
            self._commit(p, work.changed, out, offsets)

    def _put_back(self, p: int, parts: Sequence[tuple[Any, Sequence[Any]]]) -> None:
        """Records of a partition this worker does not hold. Revoked meanwhile: the new owner
        reads them again. Still assigned (a take that failed after a broker error left it
        unheld): seek back to them and take the partition again on the next round. Skipping
        them moved the position past records nobody had handled, and with the position at the
        end the consumer looked caught up, so no stall was ever noticed (the broker-kill test
        saw a grouper sit like that with 15 records unread)."""
        consumer = self._consumer
        assigned = consumer.assignment() if consumer is not None else set()
        for tp, records in parts:
            if tp in assigned and records:
                consumer.seek(tp, records[0].offset)
                self._pending.add(p)

    def _dead_letter(self, record: SourceRecord, reason: Reason, detail: str) -> Output:
        letter = self.dead_letters.of(record, reason, detail, self.incident_of(record))
        return (self.options.dead_letter_topic, record.key or b"", letter)

    def _due_work(self, p: int, now: datetime) -> tuple[Work[S], list[Output]]:
        """What the deadlines that came in partition p change and send."""
        states = self.states[p]
        stuck = self._stuck.setdefault(p, set())
        work: Work[S] = Work(states)
        out: list[Output] = []
        for state in self.due(states, now):
            key = self.state_key(state)
            if key in stuck:
                continue
            try:
                new, produced = self.on_due(state, now)
            except Exception as exc:
                work.discard()
                stuck.add(key)
                self.log.error(
                    "%s: the step due for %s failed: %s",
                    self.options.stage,
                    key,
                    describe_failure(exc),
                )
                continue
            work[key] = new
            work.keep()
            out += produced
        return work, out

    def _tick(self) -> None:
        """Take every step that has come due, one transaction per partition."""
        now = self.clock()
        for p in list(self.states):
            if p not in self.producers:
                continue
            work, out = self._due_work(p, now)
            if work.changed or out:
                self._commit(p, work.changed, out, None)
        self.held_changed()

    # ---- the loop ----

    def run(self, bootstrap_servers: str, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; a client that stalls is replaced (see LagReporter)."""
        while not self._run_client(bootstrap_servers, stop):
            self.log.warning(
                "%s: behind but given nothing for %.0f s; replacing the Kafka clients",
                self.options.stage,
                self.options.stall_s,
            )

    def _run_client(self, bootstrap_servers: str, stop: threading.Event) -> bool:
        """One consumer's life: True once ``stop`` is set, False when it stalled."""
        from kafka import KafkaConsumer
        from kafka.consumer.subscription_state import ConsumerRebalanceListener
        from kafka.coordinator.assignors.range import RangePartitionAssignor
        from kafka.errors import KafkaError

        self._bootstrap = bootstrap_servers
        self._pending = set()  # a replaced client starts from a fresh assignment
        worker = self
        options = self.options

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            def on_partitions_revoked(self, revoked: Any) -> None:
                lost = {tp.partition for tp in revoked}
                worker._pending -= lost
                worker._drop(lost)

            def on_partitions_assigned(self, assigned: Any) -> None:
                # Taken over in the loop, not here: fencing and reading the state back can take
                # seconds, and a listener blocks the client's event loop, heartbeats included.
                worker._pending |= {tp.partition for tp in assigned}

        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=options.group_id,
            client_id=options.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=options.max_poll_records,
            # The same partition numbers of every input to one worker: they share a state.
            partition_assignment_strategy=[RangePartitionAssignor],
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
            group_instance_id=(
                f"{options.group_id}-{options.instance_id}" if options.instance_id else None
            ),
        )
        self._consumer = consumer
        lag = LagReporter(consumer, options.group_id, options.inputs, self.registry)
        guard = PollGuard(consumer, options.stage)
        try:
            await_metadata(consumer, options.inputs)
            consumer.subscribe(list(options.inputs), listener=Listener())
            self.log.info("%s consuming as group %s", options.stage, options.group_id)
            while not stop.is_set():
                try:
                    with guard.polling():
                        batch = consumer.poll(timeout_ms=options.poll_timeout_ms)
                        lag.maybe_report()
                    if guard.tripped:
                        return False
                    if self._pending:
                        taking, self._pending = self._pending, set()
                        self._take(taking)
                    if batch:
                        self._process(batch)
                        lag.handled(sum(len(records) for records in batch.values()))
                    elif lag.stalled(options.stall_s):
                        return False
                    self._tick()
                except KafkaError as exc:
                    if guard.tripped:
                        return False  # a poll that never returned: replace the client
                    # Fenced, rebalanced or the broker is away: forget what we held, read it
                    # back from the committed state when the group gives it to us again.
                    self.log.error(
                        "%s: %s; re-reading committed state", options.stage, type(exc).__name__
                    )
                    held = set(self.producers)
                    self._drop(held)
                    stop.wait(1.0)
                    self._resume(consumer, held)
            return True
        finally:
            guard.close()
            lag.close()
            self._drop(set(self.producers))
            consumer.close(autocommit=False)

    def _resume(self, consumer: Any, partitions: set[int]) -> None:
        """After a failed transaction: take the partitions back, rewind to the committed offsets.

        Taking first matters: the failed transaction may still be open at its coordinator with
        offsets pending, and until it ends every read_committed offset fetch of the group is
        answered "unstable" and retried. Taking a partition fences its transactional id, which
        aborts that transaction at once, instead of after its timeout (60 s)."""
        assigned = consumer.assignment()
        self._take(
            {tp.partition for tp in assigned} & partitions or {tp.partition for tp in assigned}
        )
        for tp in assigned:
            committed = consumer.committed(tp)
            if committed is not None:
                consumer.seek(tp, committed)
            else:
                consumer.seek_to_beginning(tp)
