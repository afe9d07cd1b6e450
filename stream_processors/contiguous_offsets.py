"""Never commit a record's offset unless the record itself was processed.

faust commits, per partition, the offsets its agents acknowledged. Two of its rules let that
commit pass over a record no agent ever saw:

- ``Consumer._new_offset`` accepts a commit whose first acknowledged offset is one past the
  committed one (``min(acked) - committed > 1`` is its test), so that a transaction's commit
  marker, which no consumer is given, does not hold a partition back;
- ``Consumer._add_gap`` marks offsets the fetcher jumped over as done, for compacted topics and
  the same markers.

That happened once in the fault suite (two processors, one killed with ``kill -9``): during the
rebalance one report was dropped between fetch and agent and the next commit went over it, so
the report was "accepted" and never classified (faust-streaming issues #606 and #221 describe
the same family).

This guard holds the commit back at the first offset not processed, when it knows a record is
there:

- on a *gapless* topic, any offset: the reports topic is written only by the intake, with an
  idempotent producer and no transactions, so its offsets follow one another without a hole;
- on any topic, an offset the consumer fetched: a marker is never fetched, so a fetched offset
  that is not acknowledged is a record dropped (or still on its way to the agent).

If the hole has not filled itself after ``patience_s`` it raises ``SkippedRecord``: the worker
then ends with exit 75 (``escalate.components.run_worker``), its open transactions are aborted
when the fresh worker fences them, and the record is read again from the committed offset, with
everything after it. A restart costs seconds; a report nobody was told about costs a child.
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


class ContiguityGuard:
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
    ) -> bool:
        """True: do not commit this partition now. Raises ``SkippedRecord`` once the hole
        at ``committed`` has been open longer than the patience.

        ``fetched``: offsets of the partition the consumer handed on since it last committed.
        """
        key = (topic, partition)
        if committed is None or not acked or not self._hole(topic, committed, acked, fetched):
            self._held_since.pop(key, None)
            return False
        now = self._clock()
        if key not in self._held_since:
            self._held_since[key] = now
            log.warning(
                "%s[%d]: a record from offset %d on not processed yet, later ones were; "
                "holding the commit back there",
                topic,
                partition,
                committed,
            )
        since = self._held_since[key]
        if now - since > self.patience_s:
            raise SkippedRecord(
                f"{topic}[{partition}]: a record from offset {committed} on was passed over "
                f"without being processed ({now - since:.0f} s); start again from there"
            )
        return True

    def _hole(
        self, topic: str, committed: int, acked: Sequence[int], fetched: Collection[int]
    ) -> bool:
        first = min(acked)
        if first <= committed:
            return False
        if topic in self.gapless_topics:
            return True
        return any(committed <= offset < first for offset in fetched)

    def forget(self, topic: str, partition: int) -> None:
        """The partition went to another worker: whatever was held is theirs to read."""
        self._held_since.pop((topic, partition), None)


def guarded_consumer(guard: ContiguityGuard) -> type[faust_aiokafka.Consumer]:
    """faust's aiokafka consumer with ``guard`` on its commits and gaps."""

    class GuardedConsumer(faust_aiokafka.Consumer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            #: per partition, offsets handed on to the agents at or after the committed one
            self._fetched: defaultdict[Any, set[int]] = defaultdict(set)

        async def getmany(self, timeout: float) -> Any:
            async for tp, message in super().getmany(timeout):
                self._fetched[tp].add(message.offset)
                yield tp, message

        def _new_offset(self, tp: Any) -> int | None:
            committed = self._committed_offset[tp]
            fetched = self._fetched[tp]
            if committed is not None:
                fetched.difference_update([o for o in fetched if o < committed])
            if guard.holds(tp.topic, tp.partition, self._acked[tp], committed, fetched):
                return None
            new: int | None = super()._new_offset(tp)
            return new

        async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
            if tp.topic in guard.gapless_topics:
                # No legitimate gap exists in these topics: what the fetcher jumped over was
                # never processed, and must keep the commit back instead of filling the hole.
                return
            await super()._add_gap(tp, offset_from, offset_to)

        async def on_partitions_revoked(self, revoked: Any) -> None:
            for tp in revoked:
                guard.forget(tp.topic, tp.partition)
                self._fetched.pop(tp, None)
            await super().on_partitions_revoked(revoked)

    return GuardedConsumer
