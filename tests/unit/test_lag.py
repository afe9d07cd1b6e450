"""``LagReporter``: each consumer measures its own backlog (``escalate_consumer_lag_messages``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from consumers.kafka_io import LagReporter


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


class FakeConsumer:
    """The calls the reporter makes, over a fixed assignment; no request to a broker."""

    def __init__(self, ends: dict[TP, int], positions: dict[TP, int]) -> None:
        self.ends = ends
        self.positions = positions
        self.broken = False

    def assignment(self) -> set[TP]:
        return set(self.positions)

    def highwater(self, tp: TP) -> int | None:
        """What the last fetch said; None before any (or while fetches fail)."""
        if self.broken:
            return None
        return self.ends[tp]

    def position(self, tp: TP) -> int:
        return self.positions[tp]


def lag(registry: CollectorRegistry, topic: str) -> float | None:
    return registry.get_sample_value(
        "escalate_consumer_lag_messages", {"group": "g", "topic": topic}
    )


def test_lag_is_summed_per_topic_and_zero_for_topics_not_assigned() -> None:
    registry = CollectorRegistry()
    a0, a1, b0 = TP("a", 0), TP("a", 1), TP("b", 0)
    consumer = FakeConsumer({a0: 10, a1: 7, b0: 3}, {a0: 4, a1: 7, b0: 3})
    reporter = LagReporter(consumer, "g", ["a", "b", "c"], registry, every_s=0)
    reporter.maybe_report()
    assert (lag(registry, "a"), lag(registry, "b"), lag(registry, "c")) == (6, 0, 0)


def test_a_broker_that_cannot_answer_skips_a_round_and_keeps_the_last_figure() -> None:
    registry = CollectorRegistry()
    a0 = TP("a", 0)
    consumer = FakeConsumer({a0: 10}, {a0: 2})
    reporter = LagReporter(consumer, "g", ["a"], registry, every_s=0)
    reporter.maybe_report()
    consumer.broken = True
    reporter.maybe_report()
    assert lag(registry, "a") == 8


def test_it_measures_at_most_once_per_interval() -> None:
    registry = CollectorRegistry()
    a0 = TP("a", 0)
    consumer = FakeConsumer({a0: 10}, {a0: 2})
    reporter = LagReporter(consumer, "g", ["a"], registry, every_s=3600)
    reporter.maybe_report()
    consumer.positions[a0] = 10
    reporter.maybe_report()
    assert lag(registry, "a") == 8


def test_a_consumer_behind_that_gets_nothing_is_stalled_and_one_caught_up_is_not() -> None:
    """The client that stopped learning new leaders: behind, polling, receiving nothing."""
    a0 = TP("a", 0)
    consumer = FakeConsumer({a0: 10}, {a0: 2})
    reporter = LagReporter(consumer, "g", ["a"], CollectorRegistry(), every_s=0)
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
    reporter = LagReporter(consumer, "g", ["a"], CollectorRegistry(), every_s=0)
    time.sleep(0.3)
    reporter.maybe_report()
    assert reporter.stalled(after_s=0.2)


def test_a_consumer_left_without_partitions_for_long_is_stalled() -> None:
    """A rebalance that never completes leaves the client with nothing assigned: that is not
    'caught up' (it would never be replaced), it is a stall."""
    consumer = FakeConsumer({}, {})
    reporter = LagReporter(consumer, "g", ["a"], CollectorRegistry(), every_s=0)
    reporter.maybe_report()
    assert not reporter.stalled(after_s=0.2)
    time.sleep(0.3)
    reporter.maybe_report()
    assert reporter.stalled(after_s=0.2)
