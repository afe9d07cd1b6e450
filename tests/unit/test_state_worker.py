"""The broker-free parts of the state worker: grouping a poll batch by partition, folding the
state topic back into states (tombstones included), the per-record isolation of ``apply``, the
deadline round, and what a committed transaction leaves in the worker's own view.

Fencing, restore on takeover and the transaction itself are proven on the real broker
(tests/integration/test_escalation.py, test_review.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram
from pydantic import BaseModel, ConfigDict

from consumers.dead_letters import SourceRecord
from escalate.settings import DEFAULT_CONFIG_DIR
from schemas.audit import DeadLetter
from schemas.common import Severity
from schemas.incidents import Decision
from schemas.notifications import NotificationKind, NotificationRequest
from schemas.topics import INCIDENTS_ACTIONS, INCIDENTS_CLASSIFIED, INCIDENTS_UPDATES
from stream_processors.config_holder import ConfigHolder
from stream_processors.escalation.worker import Escalator, EscalatorConfig
from stream_processors.state_worker import (
    Output,
    StateWorker,
    Unusable,
    Watchdog,
    Work,
    WorkerOptions,
    by_partition,
    fold_state,
)
from tests.fakes import T0, FakeRecord, make_incident, make_update

# ---- a small worker: counts per key, forgets a key at zero --------------------------------


class Tally(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    count: int
    due: datetime | None = None


class Step(BaseModel):
    key: str
    count: int


class Add(BaseModel):
    key: str
    add: int
    due: datetime | None = None
    boom: bool = False
    unusable: bool = False


class Counting(StateWorker[Tally]):
    """Input value: {"key": ..., "add": n}; "boom" raises after touching the state."""

    state_model = Tally

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(
            WorkerOptions(
                stage="counter",
                group_id="test-counter",
                inputs=("in.a", "in.b"),
                state_topic="counter.state",
                dead_letter_topic="deadletter",
            ),
            restore_seconds=Histogram("test_restore_seconds", "t", registry=registry),
            registry=registry,
            clock=lambda: T0,
        )
        self.failing_due: set[str] = set()

    def state_key(self, state: Tally) -> str:
        return state.key

    def apply(self, p: int, record: SourceRecord, work: Work[Tally], now: datetime) -> list[Output]:
        assert record.value is not None
        data = Add.model_validate_json(record.value)
        current = work.get(data.key)
        count = (current.count if current else 0) + data.add
        work[data.key] = Tally(key=data.key, count=count, due=data.due) if count else None
        if data.boom:
            raise ZeroDivisionError("planted")
        if data.unusable:
            raise Unusable("no such school")
        return [("out", data.key.encode(), Step(key=data.key, count=count))]

    def due(self, states: Mapping[str, Tally], now: datetime) -> Iterable[Tally]:
        return [s for s in states.values() if s.due is not None and s.due <= now]

    def on_due(self, state: Tally, now: datetime) -> tuple[Tally | None, list[Output]]:
        if state.key in self.failing_due:
            raise RuntimeError("planted")
        if state.count == 1:
            return None, [("out", state.key.encode(), Step(key=state.key, count=0))]
        return state.model_copy(update={"count": state.count - 1, "due": None}), []


def record(value: dict[str, Any] | None, *, offset: int = 0, topic: str = "in.a") -> FakeRecord:
    key = (value or {}).get("key", "k")
    raw = None if value is None else json.dumps(value).encode()
    return FakeRecord(topic=topic, partition=0, offset=offset, key=key.encode(), value=raw)


@pytest.fixture
def worker() -> Counting:
    w = Counting(CollectorRegistry())
    w.states[0] = {}
    return w


@dataclass
class FakeProducer:
    """Records what a transaction sent; fails the commit when told to."""

    fail_commit: bool = False
    sent: list[tuple[str, bytes, bytes | None, int | None]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def begin_transaction(self) -> None:
        self.log.append("begin")

    def send(
        self, topic: str, *, key: bytes, value: bytes | None, partition: int | None = None
    ) -> None:
        self.sent.append((topic, key, value, partition))

    def commit_transaction(self) -> None:
        if self.fail_commit:
            raise RuntimeError("broker went away")
        self.log.append("commit")

    def abort_transaction(self) -> None:
        self.log.append("abort")


# ---- pure helpers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


def test_a_batch_is_regrouped_by_partition_number_across_input_topics() -> None:
    batch = {
        TP("in.a", 0): ["a0"],
        TP("in.b", 1): ["b1"],
        TP("in.b", 0): ["b0", "b0'"],
        TP("in.a", 2): [],
    }
    grouped = by_partition(batch)
    assert set(grouped) == {0, 1}  # an empty list is no work (and has no last offset)
    assert grouped[0] == [(TP("in.a", 0), ["a0"]), (TP("in.b", 0), ["b0", "b0'"])]
    assert grouped[1] == [(TP("in.b", 1), ["b1"])]


def test_folding_the_state_topic_keeps_the_latest_value_and_honours_tombstones() -> None:
    states: dict[str, Tally] = {}

    def fold(key: bytes | None, value: bytes | None) -> bool:
        return fold_state(states, key, value, Tally, lambda s: s.key)

    assert fold(b"a", Tally(key="a", count=1).model_dump_json().encode())
    assert fold(b"b", Tally(key="b", count=1).model_dump_json().encode())
    assert fold(b"a", Tally(key="a", count=5).model_dump_json().encode())
    assert fold(b"b", None)  # a tombstone: b was forgotten
    assert fold(b"zzz", None)  # a tombstone for a key never seen is harmless
    assert not fold(b"c", b'{"not": "a tally"}')  # unreadable: reported, skipped
    assert states == {"a": Tally(key="a", count=5)}


def test_work_sees_its_own_changes_over_the_committed_state() -> None:
    committed = {"a": Tally(key="a", count=1)}
    work = Work(committed)
    assert work.get("a") == Tally(key="a", count=1)
    work["a"] = None
    assert work.get("a") is None  # deleted in this transaction, though still committed
    work.keep()
    work["b"] = Tally(key="b", count=2)
    work.discard()
    assert work.get("b") is None and work.changed == {"a": None}
    assert committed == {"a": Tally(key="a", count=1)}  # untouched until the commit


# ---- records through apply -------------------------------------------------------------------


def test_one_bad_record_is_dead_lettered_and_the_others_still_count(worker: Counting) -> None:
    records = [
        record({"key": "a", "add": 2}, offset=0),
        record({"key": "a", "add": 100, "boom": True}, offset=1),  # raises after touching "a"
        record({"key": "a", "add": 3}, offset=2),
        record(None, offset=3),  # a tombstone on an input topic
        FakeRecord("in.b", 0, 4, b"b", b"{not json"),
        record({"key": "c", "add": 1, "unusable": True}, offset=5),
    ]
    work: Work[Tally] = Work(worker.states[0])
    out = worker._handle(0, records, work, T0)

    # The failed record's change to "a" was dropped: 2 + 3, not 105.
    assert work.changed == {"a": Tally(key="a", count=5)}
    assert [(t, m) for t, _, m in out if t == "out"] == [
        ("out", Step(key="a", count=2)),
        ("out", Step(key="a", count=5)),
    ]
    letters = [m for t, _, m in out if t == "deadletter"]
    assert all(isinstance(m, DeadLetter) for m in letters)
    reasons = [(m.offset, m.reason) for m in letters if isinstance(m, DeadLetter)]
    assert reasons[0][0] == 1 and reasons[0][1].startswith("failed: counter raised ZeroDivision")
    assert reasons[1] == (3, "unparseable: empty message (tombstone)")
    assert reasons[2][0] == 4 and reasons[2][1].startswith("unparseable: invalid")
    assert reasons[3] == (5, "unparseable: no such school")
    # Neither the exception's message nor the payload leak into the reason.
    assert not any("planted" in r for _, r in reasons)


def test_a_none_state_is_written_as_a_tombstone_and_forgotten(worker: Counting) -> None:
    worker.states[0] = {"a": Tally(key="a", count=2), "b": Tally(key="b", count=1)}
    producer = FakeProducer()
    worker.producers[0] = producer
    work: Work[Tally] = Work(worker.states[0])
    out = worker._handle(0, [record({"key": "a", "add": -2})], work, T0)
    worker._commit(0, work.changed, out, None)

    assert ("counter.state", b"a", None, 0) in producer.sent
    assert producer.log == ["begin", "commit"]
    assert worker.states[0] == {"b": Tally(key="b", count=1)}


def test_a_failed_commit_aborts_and_leaves_the_held_state_as_it_was(worker: Counting) -> None:
    worker.states[0] = {"a": Tally(key="a", count=2)}
    producer = FakeProducer(fail_commit=True)
    worker.producers[0] = producer
    work: Work[Tally] = Work(worker.states[0])
    out = worker._handle(0, [record({"key": "a", "add": 1})], work, T0)
    with pytest.raises(RuntimeError):
        worker._commit(0, work.changed, out, None)
    assert producer.log == ["begin", "abort"]
    assert worker.states[0] == {"a": Tally(key="a", count=2)}


def test_a_transaction_that_never_returns_ends_the_worker_and_a_quick_one_does_not() -> None:
    """kafka-python's commit waits without a timeout; the watchdog gives up for it."""
    stuck: list[str] = []
    released = threading.Event()
    watchdog = Watchdog(0.3, stuck.append)
    with watchdog.guard("quick"):
        pass
    time.sleep(0.6)
    assert stuck == []

    class Hanging(FakeProducer):
        def commit_transaction(self) -> None:
            released.wait(5)  # a coordinator that never answers, until the test lets go

    w = Counting(CollectorRegistry())
    w.states[0] = {}
    w.watchdog = Watchdog(0.3, stuck.append)
    w.producers[0] = Hanging()
    threading.Timer(2.0, released.set).start()
    w._commit(0, {}, [], None)
    # Seen while the commit still hung (in a worker, the process would have exited there).
    assert stuck == ["the transaction on partition 0"]


# ---- deadlines -------------------------------------------------------------------------------


def test_deadlines_change_delete_or_leave_a_state_that_keeps_failing(worker: Counting) -> None:
    later = T0 + timedelta(hours=1)
    worker.states[0] = {
        "one": Tally(key="one", count=1, due=T0),
        "two": Tally(key="two", count=2, due=T0),
        "bad": Tally(key="bad", count=1, due=T0),
        "later": Tally(key="later", count=1, due=later),
    }
    worker.failing_due = {"bad"}
    work, out = worker._due_work(0, T0)
    assert work.changed == {"one": None, "two": Tally(key="two", count=1)}
    assert out == [("out", b"one", Step(key="one", count=0))]

    # "bad" is not tried again on every poll, until a record rewrites it.
    worker.failing_due = set()
    assert worker._due_work(0, T0)[0].changed.keys() == {"one", "two"}
    worker.producers[0] = FakeProducer()
    rewrite: Work[Tally] = Work(worker.states[0])
    rewrite["bad"] = Tally(key="bad", count=3, due=T0)
    rewrite.keep()
    worker._commit(0, rewrite.changed, [], None)
    assert "bad" in worker._due_work(0, T0)[0].changed


# ---- the escalator's hooks, without a broker ------------------------------------------------


def test_the_escalator_routes_each_input_topic_to_its_core_function() -> None:
    holder = ConfigHolder(DEFAULT_CONFIG_DIR / "policy.yaml", DEFAULT_CONFIG_DIR / "directory.yaml")
    escalator = Escalator(EscalatorConfig(), holder, registry=CollectorRegistry(), clock=lambda: T0)
    assert escalator.options.group_id == "escalate-escalator"
    assert escalator.options.inputs == (
        INCIDENTS_CLASSIFIED.name(),
        INCIDENTS_ACTIONS.name(),
        INCIDENTS_UPDATES.name(),
    )
    escalator.states[0] = {}
    decision = Decision(severity=Severity.high, category="cyberbullying", rules_version="v1")
    incident = make_incident(decision)
    update = make_update(decision, 1, at=T0 + timedelta(minutes=5))
    records = [
        FakeRecord(INCIDENTS_UPDATES.name(), 0, 0, b"inc-1", update.model_dump_json().encode()),
        FakeRecord(
            INCIDENTS_CLASSIFIED.name(), 0, 0, b"inc-1", incident.model_dump_json().encode()
        ),
        FakeRecord(INCIDENTS_ACTIONS.name(), 0, 0, b"inc-2", b'{"kind": "acknowledge"}'),
    ]
    work: Work[Any] = Work(escalator.states[0])
    out = escalator._handle(0, records, work, T0 + timedelta(minutes=10))

    state = work.changed["inc-1"]
    assert state is not None and state.incident is not None
    # The update that came first was kept and joined the incident when it arrived.
    assert state.report_count == 2 and not state.early_updates
    [letter] = [m for t, _, m in out if t == escalator.options.dead_letter_topic]
    assert isinstance(letter, DeadLetter) and letter.incident_id == "inc-2"
    assert letter.reason.startswith("unparseable: ")

    escalator.producers[0] = FakeProducer()
    escalator._commit(0, work.changed, out, None)
    step_work, step_out = escalator._due_work(0, T0 + timedelta(hours=1))
    assert step_work.changed["inc-1"] is not None
    kinds = {m.kind for _, _, m in step_out if isinstance(m, NotificationRequest)}
    assert NotificationKind.escalation in kinds


# ---- transactional calls with a deadline -----------------------------------------------------


@pytest.fixture
def bounded_producer() -> Iterable[Any]:
    """A real kafka-python producer that never reaches a broker (nothing listens on port 1)."""
    from consumers.transactions import TransactionalProducer

    producer = TransactionalProducer(
        bootstrap_servers="127.0.0.1:1",
        transactional_id="unit",
        max_block_ms=300,
        api_version=(3, 0),  # no version probe: the constructor does not need the broker
    )
    yield producer
    producer.close(timeout=0)


@pytest.mark.parametrize(
    ("call", "request_method", "args"),
    [
        ("commit_transaction", "begin_commit", ()),
        ("abort_transaction", "begin_abort", ()),
        ("send_offsets_to_transaction", "send_offsets_to_transaction", ({}, "group")),
    ],
)
def test_a_transactional_request_the_broker_never_answers_fails_as_a_timeout(
    bounded_producer: Any, call: str, request_method: str, args: tuple[Any, ...]
) -> None:
    """The request kafka-python lost with a dead coordinator: the call gives up after
    max_block_ms with a KafkaError, which the state worker handles like a broker failure."""
    from kafka.errors import KafkaError, KafkaTimeoutError
    from kafka.producer.transaction_manager import TransactionalRequestResult

    never = TransactionalRequestResult()
    setattr(bounded_producer._transaction_manager, request_method, lambda *a: never)
    started = time.monotonic()
    with pytest.raises(KafkaTimeoutError, match="not answered within 300 ms"):
        getattr(bounded_producer, call)(*args)
    assert 0.25 < time.monotonic() - started < 5
    assert issubclass(KafkaTimeoutError, KafkaError)


def test_a_transactional_request_that_is_answered_returns_or_raises_its_own_error(
    bounded_producer: Any,
) -> None:
    from kafka.errors import ProducerFencedError
    from kafka.producer.transaction_manager import TransactionalRequestResult

    answered, fenced = TransactionalRequestResult(), TransactionalRequestResult()
    answered.done()
    fenced.done(ProducerFencedError("another owner"))
    manager = bounded_producer._transaction_manager
    manager.begin_commit = lambda: answered
    bounded_producer.commit_transaction()
    manager.begin_commit = lambda: fenced
    with pytest.raises(ProducerFencedError):
        bounded_producer.commit_transaction()


def test_dropping_a_partition_whose_producer_cannot_close_goes_on(worker: Counting) -> None:
    """kafka-python's close lets a flush timeout escape; that once crashed the whole worker."""

    class Unflushable(FakeProducer):
        def close(self, timeout: float | None = None) -> None:
            from kafka.errors import KafkaTimeoutError

            raise KafkaTimeoutError("Timeout waiting for future")

    worker.producers[0] = Unflushable()
    worker._drop({0})
    assert 0 not in worker.producers and 0 not in worker.states


def test_the_transactional_producer_closes_even_when_its_flush_gives_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kafka import KafkaProducer
    from kafka.errors import KafkaTimeoutError

    from consumers.transactions import TransactionalProducer

    class Sender:
        alive = True

        def is_alive(self) -> bool:
            return self.alive

        def force_close(self) -> None:
            self.alive = False

    class Probe(TransactionalProducer):
        """No broker: only the state ``close`` looks at."""

        def __init__(self) -> None:
            self._sender = Sender()
            self._closed = False

        def __del__(self) -> None:
            pass

    def flush_gives_up(
        self: object, timeout: float | None = None, null_logger: bool = False
    ) -> None:
        raise KafkaTimeoutError("Timeout waiting for future")

    monkeypatch.setattr(KafkaProducer, "close", flush_gives_up)
    producer = Probe()
    producer.close(timeout=1)
    assert producer._sender.alive is False and producer._closed is True


def test_records_of_a_partition_assigned_but_not_held_are_put_back_and_taken_again(
    worker: Counting,
) -> None:
    """After a broker error the worker drops its producers; if taking a partition back fails,
    the consumer still has it. Its records must not be passed over: the position would move
    past them and the consumer would look caught up with them unhandled."""
    held, unheld, revoked = TP("in.a", 0), TP("in.a", 1), TP("in.a", 2)

    class Consumer:
        def __init__(self) -> None:
            self.seeks: list[tuple[TP, int]] = []

        def assignment(self) -> set[TP]:
            return {held, unheld}

        def seek(self, tp: TP, offset: int) -> None:
            self.seeks.append((tp, offset))

    consumer = Consumer()
    worker._consumer = consumer
    worker.producers[0] = FakeProducer()
    batch = {
        unheld: [
            record({"key": "b", "add": 1}, offset=3),
            record({"key": "b", "add": 1}, offset=4),
        ],
        revoked: [record({"key": "c", "add": 1}, offset=9)],
    }
    worker._process(batch)  # type: ignore[arg-type]
    assert consumer.seeks == [(unheld, 3)]  # the revoked partition's new owner reads its own
    assert worker._pending == {1}
    assert worker.producers[0].sent == []  # nothing handled for a partition not held


def test_resume_fences_before_it_reads_the_committed_offsets(worker: Counting) -> None:
    """The failed transaction may hold offsets pending: the group's offset fetches wait until
    it ends, and fencing (taking the partition) is what ends it without waiting its timeout."""
    from kafka import TopicPartition

    calls: list[tuple[str, Any]] = []

    class Consumer:
        def assignment(self) -> set[TopicPartition]:
            return {TopicPartition("in.a", 0), TopicPartition("in.b", 0)}

        def committed(self, tp: TopicPartition) -> int | None:
            calls.append(("committed", tp.topic))
            return 5 if tp.topic == "in.a" else None

        def seek(self, tp: TopicPartition, offset: int) -> None:
            calls.append(("seek", (tp.topic, offset)))

        def seek_to_beginning(self, tp: TopicPartition) -> None:
            calls.append(("seek_to_beginning", tp.topic))

    worker._take = lambda partitions: calls.append(("take", partitions))  # type: ignore[method-assign]
    worker._resume(Consumer(), {0})
    assert calls[0] == ("take", {0})
    assert sorted(calls[1:]) == [
        ("committed", "in.a"),
        ("committed", "in.b"),
        ("seek", ("in.a", 5)),
        ("seek_to_beginning", "in.b"),
    ]
