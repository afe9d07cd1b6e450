"""The processors' Kafka consumer: faust's, corrected so that no record is passed over.

faust commits, per partition, the offsets its agents acknowledged. In the fault suite (two
processors, one killed with ``kill -9``) records were accepted and never processed: one report
in main's CI, and in runs here 26 and 17 incidents in a row of one partition, each time around
a rebalance. Two corrections:

**The rewind** (``seek_to_committed``). When a rebalance begins faust drops the rest of the
batch it was handing to the agents, and counts on the seek to the committed offsets that
follows to fetch those records again. aiokafka's seek moves only partitions whose committed
offset is above 0; a partition nothing was committed for yet stays where the fetcher was, past
the dropped records, and faust (which has no committed offset to compare with) then commits
past them. Seen directly: a partition never committed for, taken over from the killed worker,
whose first record handed on was offset 32. Such partitions are now sought to their beginning,
which is what ``auto_offset_reset="earliest"`` promised for them.

**The guard** (``CommitGuard``), for whatever else drops a record. Two of faust's rules let a
commit pass offsets nobody acknowledged: ``Consumer._new_offset`` accepts a first acknowledged
offset one past the committed one (a transaction's commit marker sits there), and
``Consumer._add_gap`` marks offsets the fetcher jumped over as done (markers, compaction;
faust-streaming #606 and #221 report this family of bug). The guard holds the commit back at
the first offset not processed where it knows a record is:

- on any topic, an offset the consumer handed on: a marker is never handed on, so one that is
  not acknowledged is a record dropped (or still on its way to the agent);
- on a *gapless* topic, any offset from the first one handed on after the last seek: the
  reports topic is written only by the intake, with an idempotent producer and no
  transactions, so past that first record its offsets follow one another without a hole.
  Before it there may be none to read (records deleted by retention while the processors were
  away, another writer's aborted transaction): those offsets are let go, as faust's gap rule
  would, or the worker would start again and again on a hole no restart fills.

If the hole has not filled after ``patience_s`` the guard raises ``SkippedRecord``: the worker
ends with exit 75 (``escalate.components.run_worker``), the fresh worker fences and so aborts
the open transactions, and reads again from the committed offset. Seen in 3 of 15 runs: both
agents had crashed in the rebalance (aiokafka ``IllegalOperation``) while the worker lived on;
the guard ended it 10 s later. A restart costs seconds; a report nobody was told about costs a
child.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger("escalate.processors")

#: a hole older than this is a record skipped, not one still on its way to an acknowledgement
PATIENCE_S = 10.0


class SkippedRecord(RuntimeError):
    """A later offset was acknowledged while an earlier record never was."""


class CommitGuard:
    """Decides, per partition, whether a commit would pass over an unprocessed record.

    ``committed`` is faust's committed offset for the partition: the next offset to read.
    """

    def __init__(
        self,
        gapless_topics: Collection[str],
        patience_s: float = PATIENCE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gapless_topics = frozenset(gapless_topics)
        self.patience_s = patience_s
        self._clock = clock
        self._held_since: dict[tuple[str, int], float] = {}

    def holds(
        self,
        topic: str,
        partition: int,
        acked: Sequence[int],
        committed: int | None,
        fetched: Collection[int] = (),
        floor: int | None = None,
    ) -> bool:
        """True: do not commit this partition now. Raises ``SkippedRecord`` once the hole
        at ``committed`` has been open longer than the patience.

        ``fetched``: offsets of the partition the consumer handed on since it last committed;
        ``floor``: the first one it handed on after it last sought its position. faust keeps
        ``committed`` None both before a first commit and for a committed 0: either way the
        records start at the partition's beginning.
        """
        key = (topic, partition)
        if not acked or not self._hole(topic, committed, acked, fetched, floor):
            self._held_since.pop(key, None)
            return False
        start = committed if committed is not None else 0
        now = self._clock()
        if key not in self._held_since:
            self._held_since[key] = now
            log.warning(
                "%s[%d]: a record from offset %d on not processed yet, later ones were; "
                "holding the commit back there",
                topic,
                partition,
                start,
            )
        since = self._held_since[key]
        if now - since > self.patience_s:
            raise SkippedRecord(
                f"{topic}[{partition}]: a record from offset {start} on was passed over "
                f"without being processed ({now - since:.0f} s); start again from there"
            )
        return True

    def _hole(
        self,
        topic: str,
        committed: int | None,
        acked: Sequence[int],
        fetched: Collection[int],
        floor: int | None,
    ) -> bool:
        first = min(acked)
        start = committed if committed is not None else 0
        if first <= start:
            return False
        if any(start <= offset < first for offset in fetched):
            return True
        if topic not in self.gapless_topics:
            return False
        if committed is None:  # where the records begin: the first one fetched says
            return floor is not None and first > floor
        return first > max(committed, floor if floor is not None else committed)

    def not_records(
        self, topic: str, committed: int | None, acked: Sequence[int], floor: int | None
    ) -> range:
        """On a gapless topic, the offsets from ``committed`` up to the first record fetched
        after a seek: nothing there to process (see the module's note)."""
        if topic not in self.gapless_topics or committed is None or floor is None or not acked:
            return range(0)
        return range(committed, min(floor, min(acked)))

    def forget(self, topic: str, partition: int) -> None:
        """The partition went to another worker: whatever was held is theirs to read."""
        self._held_since.pop((topic, partition), None)


def guarded_consumer(guard: CommitGuard) -> type[faust_aiokafka.Consumer]:
    """faust's aiokafka consumer with the rewind, and ``guard`` on its commits and gaps."""

    class GuardedConsumer(faust_aiokafka.Consumer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            #: per partition, offsets handed on to the agents at or after the committed one
            self._fetched: defaultdict[Any, set[int]] = defaultdict(set)
            #: per partition, the first offset handed on since the position was last sought
            self._floor: dict[Any, int] = {}

        async def getmany(self, timeout: float) -> Any:
            async for tp, message in super().getmany(timeout):
                self._fetched[tp].add(message.offset)
                self._floor.setdefault(tp, message.offset)
                yield tp, message

        async def seek_to_committed(self) -> Any:
            """Also rewind the partitions nothing was committed for yet (see the module's
            note: the records faust dropped there were otherwise never read again)."""
            committed = await super().seek_to_committed()
            never = [tp for tp, offset in committed.items() if not offset]
            if never:
                await self._thread.seek_to_beginning(*never)
            return committed

        async def perform_seek(self) -> None:
            self._floor.clear()
            await super().perform_seek()

        async def seek(self, partition: Any, offset: int) -> None:
            self._floor.pop(partition, None)
            await super().seek(partition, offset)

        def _new_offset(self, tp: Any) -> int | None:
            committed = self._committed_offset[tp]
            fetched, acked, floor = self._fetched[tp], self._acked[tp], self._floor.get(tp)
            if committed is not None:
                fetched.difference_update([o for o in fetched if o < committed])
            if guard.holds(tp.topic, tp.partition, acked, committed, fetched, floor):
                return None
            # What faust's gap rule does for other topics, limited to where no record can be.
            acked.extend(guard.not_records(tp.topic, committed, acked, floor))
            new: int | None = super()._new_offset(tp)
            return new

        async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
            if tp.topic in guard.gapless_topics:
                # Past the first record fetched no legitimate gap exists in these topics: what
                # the fetcher jumped over was never processed, and must keep the commit back
                # instead of filling the hole (the stretch before it: ``not_records``).
                return
            await super()._add_gap(tp, offset_from, offset_to)

        async def on_partitions_revoked(self, revoked: Any) -> None:
            for tp in revoked:
                guard.forget(tp.topic, tp.partition)
                self._fetched.pop(tp, None)
                self._floor.pop(tp, None)
            await super().on_partitions_revoked(revoked)

    return GuardedConsumer
