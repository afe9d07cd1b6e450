"""The processors never commit past a report that was not processed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry

from escalate.settings import Settings
from schemas.topics import INCIDENTS_CLASSIFIED, REPORTS_SUBMITTED
from stream_processors.app import ProcessorConfig, create_app
from stream_processors.config_holder import ConfigHolder
from stream_processors.contiguous_offsets import ContiguityGuard, SkippedRecord


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_commit_from_the_committed_offset_goes_ahead() -> None:
    guard = ContiguityGuard({"reports"}, patience_s=10, clock=Clock())
    assert not guard.holds("reports", 0, [5, 6, 7], committed=5)
    assert not guard.holds("reports", 0, [4, 5, 6], committed=5)  # read again after a seek
    assert not guard.holds("reports", 0, [], committed=5)
    assert not guard.holds("reports", 0, [0, 1], committed=None)


def test_a_hole_at_the_committed_offset_holds_the_commit_then_ends_the_worker() -> None:
    clock = Clock()
    guard = ContiguityGuard({"reports"}, patience_s=10, clock=clock)
    assert guard.holds("reports", 3, [6, 7], committed=5)
    clock.now += 10
    assert guard.holds("reports", 3, [6, 7, 8], committed=5)
    clock.now += 0.5
    with pytest.raises(SkippedRecord, match=r"reports\[3\]: a record from offset 5 on"):
        guard.holds("reports", 3, [6, 7, 8], committed=5)


def test_a_hole_that_fills_in_time_starts_the_patience_afresh() -> None:
    clock = Clock()
    guard = ContiguityGuard({"reports"}, patience_s=10, clock=clock)
    assert guard.holds("reports", 0, [6], committed=5)
    clock.now += 8
    assert not guard.holds("reports", 0, [5, 6], committed=5)  # the late one arrived
    assert guard.holds("reports", 0, [9], committed=8)
    clock.now += 8
    assert guard.holds("reports", 0, [9], committed=8)  # 8 s into this hole, not 16


def test_a_revoked_partition_is_forgotten() -> None:
    clock = Clock()
    guard = ContiguityGuard({"reports"}, patience_s=10, clock=clock)
    assert guard.holds("reports", 0, [6], committed=5)
    guard.forget("reports", 0)
    clock.now += 11
    assert guard.holds("reports", 0, [6], committed=5)  # a fresh hole, not an old one


def test_on_other_topics_only_a_fetched_offset_is_a_record() -> None:
    clock = Clock()
    guard = ContiguityGuard({"reports"}, patience_s=10, clock=clock)
    # Offset 5 never fetched: a transaction's commit marker, which faust steps over.
    assert not guard.holds("incidents", 0, [6, 7], committed=5, fetched={6, 7})
    # Offset 6 fetched and not acknowledged, 7 acknowledged: a record dropped on its way.
    assert guard.holds("incidents", 0, [7], committed=5, fetched={6, 7})
    clock.now += 11
    with pytest.raises(SkippedRecord, match=r"incidents\[0\]"):
        guard.holds("incidents", 0, [7, 8], committed=5, fetched={6, 7, 8})


@pytest.fixture
def consumer() -> Iterator[object]:
    settings = Settings(kafka_bootstrap_servers=None)
    holder = ConfigHolder(settings.policy_file, settings.directory_file)
    config = ProcessorConfig(app_id="guard", topic_prefix="t.", skipped_record_patience_s=0)
    app = create_app(config, "127.0.0.1:9", holder, CollectorRegistry())
    yield app.consumer


def test_the_processors_consumer_does_not_commit_past_a_skipped_report(consumer: object) -> None:
    reports = TP(REPORTS_SUBMITTED.name("t."), 2)
    consumer._committed_offset[reports] = 5  # type: ignore[attr-defined]
    consumer._acked[reports] = [6, 7]  # type: ignore[attr-defined]
    assert consumer._new_offset(reports) is None  # type: ignore[attr-defined]
    with pytest.raises(SkippedRecord):  # no patience here: the next round gives up
        consumer._new_offset(reports)  # type: ignore[attr-defined]
    consumer._acked[reports] = [5, 6, 7]  # type: ignore[attr-defined]
    assert consumer._new_offset(reports) == 8  # type: ignore[attr-defined]


def test_the_processors_consumer_does_not_commit_past_a_dropped_incident(
    consumer: object,
) -> None:
    incidents = TP(INCIDENTS_CLASSIFIED.name("t."), 4)
    consumer._committed_offset[incidents] = 10  # type: ignore[attr-defined]
    consumer._fetched[incidents].update({3, 11, 12, 13})  # type: ignore[attr-defined]
    consumer._acked[incidents] = [12, 13]  # type: ignore[attr-defined]
    assert consumer._new_offset(incidents) is None  # type: ignore[attr-defined]
    assert consumer._fetched[incidents] == {11, 12, 13}  # type: ignore[attr-defined]
    consumer._acked[incidents] = [11, 12, 13]  # type: ignore[attr-defined]
    assert consumer._new_offset(incidents) == 14  # type: ignore[attr-defined]


def test_the_processors_consumer_keeps_gaps_only_where_transactions_write(
    consumer: object,
) -> None:
    reports = TP(REPORTS_SUBMITTED.name("t."), 0)
    incidents = TP(INCIDENTS_CLASSIFIED.name("t."), 0)
    for tp in (reports, incidents):
        consumer._committed_offset[tp] = 10  # type: ignore[attr-defined]
        asyncio.run(consumer._add_gap(tp, 11, 12))  # type: ignore[attr-defined]
    assert not consumer._gap[reports]  # type: ignore[attr-defined]
    assert consumer._gap[incidents]  # type: ignore[attr-defined]
    # On a transactional topic faust steps over the commit marker at the committed offset.
    marker = TP(INCIDENTS_CLASSIFIED.name("t."), 1)
    consumer._committed_offset[marker] = 10  # type: ignore[attr-defined]
    consumer._acked[marker] = [11, 12, 13]  # type: ignore[attr-defined]
    assert consumer._new_offset(marker) == 14  # type: ignore[attr-defined]
