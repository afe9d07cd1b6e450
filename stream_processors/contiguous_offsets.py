"""Never commit a report's offset unless the report itself was processed.

faust commits, per partition, the offsets its agents acknowledged. Two of its rules let that
commit pass over a record no agent ever saw:

- ``Consumer._new_offset`` accepts a commit whose first acknowledged offset is one past the
  committed one (``min(acked) - committed > 1`` is its test), so that a transaction's commit
  marker, which no consumer is given, does not hold a partition back;
- ``Consumer._add_gap`` marks offsets the fetcher jumped over as done, for compacted topics and
  the same markers.

Both are right for topics written in transactions and wrong for the reports topic, which only
the intake writes, with an idempotent producer and no transactions: its offsets follow one
another without a hole, so an offset that was not acknowledged is a report that was not
processed. That happened once in the fault suite (two processors, one killed with ``kill -9``):
during the rebalance one report was dropped between fetch and agent and the next commit went
over it, so the report was "accepted" and never classified (faust-streaming issues #606 and
#221 describe the same family).

On such topics this guard holds the commit back at the first offset not processed. If the hole
has not filled itself after ``patience_s`` it raises ``SkippedRecord``: the worker then ends
with exit 75 (``escalate.components.run_worker``), its open transactions are aborted when the
fresh worker fences them, and the report is read again from the committed offset, with
everything after it. A restart costs seconds; a report nobody was told about costs a child.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger("escalate.processors")

#: a hole older than this is a record skipped, not one still on its way to an acknowledgement
PATIENCE_S = 10.0


class SkippedRecord(RuntimeError):
    """A later offset was acknowledged while an earlier one of a gapless topic never was."""


class ContiguityGuard:
    """Decides, per partition, whether a commit would pass over an unprocessed record.

    ``committed`` is faust's committed offset for the partition: the next offset to read.
    """

    def __init__(
        self,
        topics: Collection[str],
        patience_s: float = PATIENCE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topics = frozenset(topics)
        self.patience_s = patience_s
        self._clock = clock
        self._held_since: dict[tuple[str, int], float] = {}

    def holds(
        self, topic: str, partition: int, acked: Sequence[int], committed: int | None
    ) -> bool:
        """True: do not commit this partition now. Raises ``SkippedRecord`` once the hole
        at ``committed`` has been open longer than the patience."""
        key = (topic, partition)
        if topic not in self.topics or committed is None or not acked or min(acked) <= committed:
            self._held_since.pop(key, None)
            return False
        now = self._clock()
        if key not in self._held_since:
            self._held_since[key] = now
            log.warning(
                "%s[%d]: offset %d not processed yet, later ones were; "
                "holding the commit back at %d",
                topic,
                partition,
                committed,
                committed,
            )
        since = self._held_since[key]
        if now - since > self.patience_s:
            raise SkippedRecord(
                f"{topic}[{partition}]: offset {committed} was passed over without being "
                f"processed ({now - since:.0f} s); start again from it"
            )
        return True

    def forget(self, topic: str, partition: int) -> None:
        """The partition went to another worker: whatever was held is theirs to read."""
        self._held_since.pop((topic, partition), None)


def guarded_consumer(guard: ContiguityGuard) -> type[faust_aiokafka.Consumer]:
    """faust's aiokafka consumer with ``guard`` on its commits and gaps."""

    class GuardedConsumer(faust_aiokafka.Consumer):
        def _new_offset(self, tp: Any) -> int | None:
            if guard.holds(tp.topic, tp.partition, self._acked[tp], self._committed_offset[tp]):
                return None
            new: int | None = super()._new_offset(tp)
            return new

        async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
            if tp.topic in guard.topics:
                # No legitimate gap exists in these topics: what the fetcher jumped over was
                # never processed, and must keep the commit back instead of filling the hole.
                return
            await super()._add_gap(tp, offset_from, offset_to)

        async def on_partitions_revoked(self, revoked: Any) -> None:
            for tp in revoked:
                guard.forget(tp.topic, tp.partition)
            await super().on_partitions_revoked(revoked)

    return GuardedConsumer
