"""A liveness check for the stages whose only dependency is Kafka: behind, yet not moving.

Measured from outside the stage's own clients: every ``every_s`` a fresh admin client reads
the consumer group's committed offsets, and a fresh consumer the topics' end offsets (both
with timeouts, in a thread of their own, so a lost reply cannot hold the check). When a
partition has records still to read and the group's committed offset there has not moved for
``stuck_s``, the stage is wedged (for that partition at least: the other ones may move on, as
when the processors hold a commit back at a report they skipped) somewhere its own recovery
(stall checks, poll guard, watchdog) did not reach: after a broker was killed, a faust worker
and kafka-python clients were seen to sit like that for minutes. The process then ends with
exit 75 for the orchestrator to start a fresh one, which reads on from the committed offsets:
what a failed liveness probe does in Kubernetes, without needing one.

One wedge a fresh process does not cure: a transaction left hanging on the group's offsets
partition (see escalate/hanging.py), which makes every offset fetch of the group answer
"unstable" for good. So once the group has not moved for ``repair_after_s``, the check looks for
such a transaction and aborts it (once per stall); the stage then reads on by itself and the
stall starts counting afresh.

Only for processors, grouper and escalator: the notifier and the audit writer pause on
purpose while the SMTP relay or the database is away, and must not be ended for that. A
round that cannot measure (the brokers away) is no evidence either way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from consumers.metrics_registry import PerRegistry
from escalate.hanging import abort_hanging

log = logging.getLogger("escalate.liveness")


class LivenessMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.hanging_aborted = Counter(
            "escalate_hanging_transactions_aborted",
            "Transactions found hanging on a consumer group's offsets partition (open there, "
            "unknown to their coordinator) and aborted so the group could read on.",
            ["group"],
            registry=registry,
        )


metrics_for = PerRegistry(LivenessMetrics)


#: behind without a committed offset moving for this long: wedged
STUCK_S = 90.0
#: behind without moving for this long: look for a hanging transaction (once per stall)
REPAIR_AFTER_S = 30.0
EVERY_S = 10.0
#: exit status for the orchestrator: try again (EX_TEMPFAIL), as the watchdogs use
EXIT_STUCK = 75


#: per partition ("topic[partition]"): (committed offset, offsets still to read behind it)
Reading = dict[str, tuple[int, int]]


def measure(bootstrap: str, group: str, topics: Sequence[str]) -> Reading | None:
    """``group``'s committed offset and lag on each partition of ``topics``, or None."""
    from kafka import KafkaAdminClient, KafkaConsumer

    admin = consumer = None
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, client_id=f"{group}-liveness", request_timeout_ms=10_000
        )
        # kafka-python 3.0 renamed list_consumer_group_offsets (what 2.x had) to
        # list_group_offsets, keyed by group; calling the old name made every round fail
        # quietly as "no evidence", so the check never fired (tests/integration/test_liveness).
        committed = {
            tp: meta.offset
            for tp, meta in admin.list_group_offsets(group).get(group, {}).items()
            if tp.topic in topics and meta.offset >= 0
        }
        if not committed:
            return None
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id=f"{group}-liveness",
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        ends = consumer.end_offsets(list(committed), timeout_ms=10_000)
        behind = {tp: max(0, ends.get(tp, 0) - offset) for tp, offset in committed.items()}
        # Between a stage's committed offset and the end there can be offsets no consumer is
        # given: a transaction's commit marker (a stage commits its last record's offset + 1,
        # so an idle stage sits one short of the end), and after a broker outage whole aborted
        # transactions. Only a record still to be read makes the stage behind.
        for tp in [tp for tp, n in behind.items() if n > 0]:
            if not _record_from(consumer, tp, committed[tp]):
                behind[tp] = 0
        return {f"{tp.topic}[{tp.partition}]": (committed[tp], behind[tp]) for tp in committed}
    except Exception as exc:  # no evidence either way
        log.debug("liveness not measured: %s", type(exc).__name__)
        return None
    finally:
        for client in (consumer, admin):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()


def _record_from(consumer: Any, tp: Any, offset: int, timeout_s: float = 5.0) -> bool:
    """Whether a committed record sits at or after ``offset`` of ``tp`` (read_committed skips
    markers and aborted transactions)."""
    consumer.assign([tp])
    consumer.seek(tp, offset)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if consumer.poll(timeout_ms=500).get(tp):
            return True
        if consumer.position(tp) >= consumer.end_offsets([tp], timeout_ms=5_000)[tp]:
            return False  # read to the end without a record: only markers or aborted data
    raise TimeoutError(f"{tp} not read at {offset}")


class Liveness:
    def __init__(
        self,
        bootstrap: str,
        group: str,
        topics: Sequence[str],
        stuck_s: float = STUCK_S,
        every_s: float = EVERY_S,
        on_stuck: Callable[[str], None] | None = None,
        measure_fn: Callable[[], Reading | None] | None = None,
        measure_timeout_s: float = 30.0,
        repair_after_s: float = REPAIR_AFTER_S,
        repair_fn: Callable[[], int] | None = None,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.metrics = metrics_for(registry)
        self.measure_timeout_s = measure_timeout_s
        self.group = group
        self.stuck_s = stuck_s
        self.every_s = every_s
        self.repair_after_s = repair_after_s
        self._measure = measure_fn or (lambda: measure(bootstrap, group, topics))
        self._repair = repair_fn or (lambda: len(abort_hanging(bootstrap, group)))
        self._on_stuck = on_stuck or _exit_stuck
        self._committed: dict[str, int] = {}
        self._moved_at: dict[str, float] = {}  # per partition: when it last moved or caught up
        self._repair_tried_at: float | None = None  # the stall (when it began) already tried
        self._stop = threading.Event()

    def check_once(self) -> bool:
        """One round; True when the stage is judged stuck."""
        found = _bounded(self._measure, self.measure_timeout_s, f"{self.group}-liveness-check")
        now = time.monotonic()
        if found is None:
            return False
        # Judged per partition: one partition wedged while the others move on is a stage that
        # has stopped for the reports keyed there (a summed offset would hide it).
        for part, (committed, behind) in found.items():
            if behind == 0 or self._committed.get(part) != committed:
                self._moved_at[part] = now
            self._committed[part] = committed
        stalled = [self._moved_at[part] for part, (_, behind) in found.items() if behind > 0]
        if not stalled:
            return False
        began = min(stalled)
        stalled_s = now - began
        if stalled_s > self.repair_after_s and self._repair_tried_at != began:
            self._repair_tried_at = began
            if self._try_repair():
                for part in found:  # the stage can read on now: give it a fresh window
                    self._moved_at[part] = now
                return False
        return stalled_s > self.stuck_s

    def _try_repair(self) -> bool:
        """Abort what hangs on the group's offsets partition; True when something was."""

        def attempt() -> int:
            try:
                return self._repair()
            except Exception as exc:  # a failed look is no repair, and no reason to stop
                log.warning("%s: no look for hanging transactions: %s", self.group, exc)
                return 0

        aborted = _bounded(attempt, self.measure_timeout_s, f"{self.group}-liveness-repair")
        if not aborted:
            return False
        self.metrics.hanging_aborted.labels(self.group).inc(aborted)
        return True

    def start(self) -> None:
        threading.Thread(target=self._run, name=f"{self.group}-liveness", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            if self.check_once():
                self._on_stuck(
                    f"{self.group}: behind, and its committed offsets have not moved for "
                    f"{self.stuck_s:.0f} s"
                )
                return

    def stop(self) -> None:
        self._stop.set()


def _bounded(work: Callable[[], Any], timeout_s: float, name: str) -> Any:
    """``work()`` in a thread of its own; None when it has not returned within ``timeout_s``
    (a Kafka client that lost a reply must not hold the check)."""
    result: list[Any] = [None]

    def run() -> None:
        result[0] = work()

    helper = threading.Thread(target=run, name=name, daemon=True)
    helper.start()
    helper.join(timeout=timeout_s)
    return result[0]


def _exit_stuck(why: str) -> None:
    log.critical("%s; exiting so a fresh process takes over", why)
    logging.shutdown()
    os._exit(EXIT_STUCK)
