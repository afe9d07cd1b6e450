"""The processors never commit past a record that was not processed, and read again what a
rebalance dropped."""

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
from stream_processors.offsets import CommitGuard, SkippedRecord


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_commit_from_the_committed_offset_goes_ahead() -> None:
    guard = CommitGuard({"reports"}, patience_s=10, clock=Clock())
    assert not guard.holds("reports", 0, [5, 6, 7], committed=5)
    assert not guard.holds("reports", 0, [4, 5, 6], committed=5)  # read again after a seek
    assert not guard.holds("reports", 0, [], committed=5)
    assert not guard.holds("reports", 0, [0, 1], committed=None, fetched={0, 1}, floor=0)


def test_a_hole_at_the_committed_offset_holds_the_commit_then_ends_the_worker() -> None:
    clock = Clock()
    guard = CommitGuard({"reports"}, patience_s=10, clock=clock)
    assert guard.holds("reports", 3, [6, 7], committed=5)
    clock.now += 10
    assert guard.holds("reports", 3, [6, 7, 8], committed=5)
    clock.now += 0.5
    with pytest.raises(SkippedRecord, match=r"reports\[3\]: a record from offset 5 on"):
        guard.holds("reports", 3, [6, 7, 8], committed=5)


def test_a_hole_that_fills_in_time_starts_the_patience_afresh() -> None:
    clock = Clock()
    guard = CommitGuard({"reports"}, patience_s=10, clock=clock)
    assert guard.holds("reports", 0, [6], committed=5)
    clock.now += 8
    assert not guard.holds("reports", 0, [5, 6], committed=5)  # the late one arrived
    assert guard.holds("reports", 0, [9], committed=8)
    clock.now += 8
    assert guard.holds("reports", 0, [9], committed=8)  # 8 s into this hole, not 16


def test_before_the_first_record_fetched_after_a_seek_there_is_nothing_to_hold_for() -> None:
    """Records deleted by retention, or another writer's aborted transaction: the fetcher's
    first record after the seek is past the committed offset, and no restart would change it."""
    guard = CommitGuard({"reports"}, patience_s=0, clock=Clock())
    assert not guard.holds("reports", 0, [9, 10], committed=5, fetched={9, 10}, floor=9)
    assert guard.not_records("reports", 5, [9, 10], floor=9) == range(5, 9)
    # Past that first record, a hole is a record skipped.
    assert guard.holds("reports", 1, [11], committed=5, fetched={9, 11}, floor=9)
    assert guard.not_records("reports", 9, [11], floor=9) == range(0)
    # A stale record handed on before the ones at the committed offset: those were fetched.
    assert guard.holds("reports", 2, [8], committed=5, fetched={5, 6, 7, 8}, floor=8)
    assert guard.not_records("incidents", 5, [9], floor=9) == range(0)


def test_before_a_first_commit_a_record_fetched_and_dropped_still_holds_the_commit() -> None:
    """faust keeps no committed offset before the first commit (nor for a committed 0): the
    partition's records were seen dropped there too, all 26 before offset 46 of one partition
    once, the commit going straight past them."""
    guard = CommitGuard({"reports"}, patience_s=10, clock=Clock())
    assert guard.holds("incidents", 4, [46, 47], committed=None, fetched={0, 1, 4, 46, 47})
    assert not guard.holds("incidents", 5, [3, 4], committed=None, fetched={3, 4})  # markers
    assert guard.holds("reports", 0, [5], committed=None, fetched={3, 5}, floor=3)
    assert not guard.holds("reports", 1, [7], committed=None, fetched={7}, floor=7)


def test_a_revoked_partition_is_forgotten() -> None:
    clock = Clock()
    guard = CommitGuard({"reports"}, patience_s=10, clock=clock)
    assert guard.holds("reports", 0, [6], committed=5)
    guard.forget("reports", 0)
    clock.now += 11
    assert guard.holds("reports", 0, [6], committed=5)  # a fresh hole, not an old one


def test_on_other_topics_only_a_fetched_offset_is_a_record() -> None:
    clock = Clock()
    guard = CommitGuard({"reports"}, patience_s=10, clock=clock)
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


def test_the_processors_consumer_lets_go_of_offsets_where_no_report_is(consumer: object) -> None:
    reports = TP(REPORTS_SUBMITTED.name("t."), 1)
    consumer._committed_offset[reports] = 5  # type: ignore[attr-defined]
    consumer._floor[reports] = 9  # type: ignore[attr-defined]
    consumer._acked[reports] = [9, 10]  # type: ignore[attr-defined]
    assert consumer._new_offset(reports) == 11  # type: ignore[attr-defined]


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


class RecordingThread:
    """Stands in for faust's consumer thread: the committed offsets it reports, the seeks made."""

    def __init__(self, committed: dict[TP, int | None]) -> None:
        self.committed = committed
        self.to_beginning: list[TP] = []

    async def seek_to_committed(self) -> dict[TP, int | None]:
        return self.committed

    async def seek_to_beginning(self, *partitions: TP) -> None:
        self.to_beginning.extend(partitions)


def test_the_seek_after_a_rebalance_rewinds_partitions_nothing_was_committed_for(
    consumer: object,
) -> None:
    """aiokafka's seek to the committed offsets leaves partitions without one where the
    fetcher was, past the records faust dropped when the rebalance began."""
    never, zero, some = (TP(INCIDENTS_CLASSIFIED.name("t."), p) for p in (3, 4, 5))
    thread = RecordingThread({never: None, zero: 0, some: 32})
    consumer._thread = thread  # type: ignore[attr-defined]
    committed = asyncio.run(consumer.seek_to_committed())  # type: ignore[attr-defined]
    assert committed == {never: None, zero: 0, some: 32}
    assert sorted(thread.to_beginning) == [never, zero]
