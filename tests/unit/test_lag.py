"""``LagReporter``: each consumer measures its own backlog (``escalate_consumer_lag_messages``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from consumers.kafka_io import LagReporter


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


class FakeConsumer:
    """The calls the reporter makes, over a fixed assignment."""

    def __init__(self, ends: dict[TP, int], positions: dict[TP, int]) -> None:
        self.ends = ends
        self.positions = positions
        self.broken = False

    def assignment(self) -> set[TP]:
        return set(self.positions)

    def end_offsets(self, tps: list[TP]) -> dict[TP, int]:
        """What the reporter's own client would answer."""
        if self.broken:
            raise TimeoutError("broker away")
        return {tp: self.ends[tp] for tp in tps}

    def position(self, tp: TP) -> int:
        return self.positions[tp]


def reporter_for(
    consumer: FakeConsumer, topics: list[str], registry: CollectorRegistry, every_s: float
) -> LagReporter:
    """Measuring in the loop's own thread, so that a test sees each round at once."""
    return LagReporter(
        consumer,
        "g",
        topics,
        registry,
        every_s=every_s,
        end_offsets=consumer.end_offsets,
        background=False,
    )


def lag(registry: CollectorRegistry, topic: str) -> float | None:
    return registry.get_sample_value(
        "escalate_consumer_lag_messages", {"group": "g", "topic": topic}
    )


def test_lag_is_summed_per_topic_and_zero_for_topics_not_assigned() -> None:
    registry = CollectorRegistry()
    a0, a1, b0 = TP("a", 0), TP("a", 1), TP("b", 0)
    consumer = FakeConsumer({a0: 10, a1: 7, b0: 3}, {a0: 4, a1: 7, b0: 3})
    reporter = reporter_for(consumer, ["a", "b", "c"], registry, 0)
    reporter.maybe_report()
    assert (lag(registry, "a"), lag(registry, "b"), lag(registry, "c")) == (6, 0, 0)


def test_a_broker_that_cannot_answer_skips_a_round_and_keeps_the_last_figure() -> None:
    registry = CollectorRegistry()
    a0 = TP("a", 0)
    consumer = FakeConsumer({a0: 10}, {a0: 2})
    reporter = reporter_for(consumer, ["a"], registry, 0)
    reporter.maybe_report()
    consumer.broken = True
    reporter.maybe_report()
    assert lag(registry, "a") == 8


def test_it_measures_at_most_once_per_interval() -> None:
    registry = CollectorRegistry()
    a0 = TP("a", 0)
    consumer = FakeConsumer({a0: 10}, {a0: 2})
    reporter = reporter_for(consumer, ["a"], registry, 3600)
    reporter.maybe_report()
    consumer.positions[a0] = 10
    reporter.maybe_report()
    assert lag(registry, "a") == 8


def test_a_consumer_behind_that_gets_nothing_is_stalled_and_one_caught_up_is_not() -> None:
    """The client that stopped learning new leaders: behind, polling, receiving nothing."""
    a0 = TP("a", 0)
    consumer = FakeConsumer({a0: 10}, {a0: 2})
    reporter = reporter_for(consumer, ["a"], CollectorRegistry(), 0)
    reporter.maybe_report()
    assert not reporter.stalled(after_s=0.2)  # fresh
    time.sleep(0.3)
    assert reporter.stalled(after_s=0.2)
    reporter.handled(5)  # records handled: progress
    assert not reporter.stalled(after_s=0.2)
    time.sleep(0.3)
    reporter.handled(0)  # an empty poll is not progress
    assert reporter.stalled(after_s=0.2)
    consumer.positions[a0] = 10  # caught up: waiting for new records is not a stall
    reporter.maybe_report()
    time.sleep(0.3)
    reporter.maybe_report()
    assert not reporter.stalled(after_s=0.2)


def test_a_consumer_whose_lag_cannot_be_measured_for_long_is_stalled() -> None:
    a0 = TP("a", 0)
    consumer = FakeConsumer({a0: 10}, {a0: 10})
    consumer.broken = True
    reporter = reporter_for(consumer, ["a"], CollectorRegistry(), 0)
    time.sleep(0.3)
    reporter.maybe_report()
    assert reporter.stalled(after_s=0.2)


def test_a_consumer_left_without_partitions_for_long_is_stalled() -> None:
    """A rebalance that never completes leaves the client with nothing assigned: that is not
    'caught up' (it would never be replaced), it is a stall."""
    consumer = FakeConsumer({}, {})
    reporter = reporter_for(consumer, ["a"], CollectorRegistry(), 0)
    reporter.maybe_report()
    assert not reporter.stalled(after_s=0.2)
    time.sleep(0.3)
    reporter.maybe_report()
    assert reporter.stalled(after_s=0.2)


def test_a_measurement_that_never_comes_back_neither_blocks_the_loop_nor_hides_a_stall() -> None:
    """kafka-python can lose the reply to an end-offsets request and wait for ever: the loop
    must go on polling, and the consumer must end up replaced, not look caught up."""
    import threading

    a0 = TP("a", 0)
    consumer = FakeConsumer({a0: 10}, {a0: 10})
    never = threading.Event()

    def hangs(tps: list[TP]) -> dict[TP, int]:
        never.wait(30)
        return {}

    reporter = LagReporter(
        consumer, "g", ["a"], CollectorRegistry(), every_s=0, end_offsets=hangs, background=True
    )
    try:
        started = time.monotonic()
        for _ in range(5):
            reporter.maybe_report()
        assert time.monotonic() - started < 1.0  # the loop was never held up
        time.sleep(0.3)
        reporter.maybe_report()
        assert reporter.stalled(after_s=0.2)
    finally:
        never.set()


def test_a_poll_that_never_returns_is_freed_and_the_guard_says_so() -> None:
    """kafka-python 3.0's poll waits on an event with no deadline; the guard fails the pending
    waiters (what the client itself does when its I/O loop stops), and poll raises."""
    import threading

    from kafka.errors import KafkaTimeoutError

    from consumers.kafka_io import PollGuard

    class Net:
        def __init__(self) -> None:
            self.released = threading.Event()
            self.error: Exception | None = None

        def _fail_pending_waiters(self, exc: Exception) -> None:
            self.error = exc
            self.released.set()

    class Stuck:
        def __init__(self) -> None:
            self._net = Net()

        def poll(self) -> None:
            self._net.released.wait(10)
            assert self._net.error is not None
            raise self._net.error

    consumer = Stuck()
    guard = PollGuard(consumer, "test", limit_s=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(KafkaTimeoutError), guard.polling():
            consumer.poll()
        assert guard.tripped
        assert time.monotonic() - started < 5
    finally:
        guard.close()

    quick = PollGuard(Stuck(), "test", limit_s=0.3)
    try:
        with quick.polling():
            time.sleep(0.05)  # a poll that returns in time
        time.sleep(0.5)
        assert not quick.tripped
    finally:
        quick.close()
