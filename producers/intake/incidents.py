"""The intake's read-only view of where each incident stands.

The escalator owns ``escalation.state.v1``, a compacted topic holding the latest
``EscalationState`` per incident. The intake only needs to show that state (on the action page
and in the authority API), so it reads the whole topic into memory and keeps following it.
There is no consumer group: every intake process needs every partition, and committing offsets
would only make a restart skip the states it must rebuild.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from consumers.kafka_io import topic_partitions
from schemas.escalation import EscalationState
from schemas.topics import ESCALATION_STATE

log = logging.getLogger("escalate.intake.incidents")


class IncidentLookup(Protocol):
    """What the intake app needs from a view; tests pass a fake holding known states."""

    def get(self, incident_id: str) -> EscalationState | None: ...

    def ready(self) -> bool: ...


class IncidentView:
    """Follows the state topic in a background thread; ``get`` answers from memory.

    ``ready()`` is true once everything that was on the topic when the view (re)connected has
    been read, so 'unknown incident' means unknown, not 'not read yet'. Read with
    ``read_committed``: the escalator writes state inside transactions, and a state from an
    aborted transaction never happened.
    """

    def __init__(
        self,
        bootstrap: str,
        topic_prefix: str = "",
        poll_ms: int = 500,
        retry_s: float = 2.0,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = ESCALATION_STATE.name(topic_prefix)
        self._poll_ms = poll_ms
        self._retry_s = retry_s
        self._states: dict[str, EscalationState] = {}
        # Where to resume after losing the broker; only the view's thread touches it.
        self._positions: dict[TopicPartition, int] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, incident_id: str) -> EscalationState | None:
        with self._lock:
            return self._states.get(incident_id)

    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout_s: float) -> bool:
        return self._ready.wait(timeout_s)

    def __len__(self) -> int:
        with self._lock:
            return len(self._states)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="incident-view", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None

    def _run(self) -> None:
        # A broker that is away (at start or later) is waited for, not fatal: the intake keeps
        # taking reports meanwhile, and the page says 'status not available'.
        while not self._stop.is_set():
            try:
                self._follow()
            except KafkaError as exc:
                log.warning("incident view lost the broker (%s); retrying", type(exc).__name__)
            except Exception:
                log.exception("incident view failed; retrying")
            self._ready.clear()
            self._stop.wait(self._retry_s)

    def _follow(self) -> None:
        consumer = KafkaConsumer(
            bootstrap_servers=self._bootstrap.split(","),
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            # Only used when a kept position no longer exists (topic recreated).
            auto_offset_reset="earliest",
            client_id="escalate-intake-incident-view",
        )
        try:
            partitions = self._partitions(consumer)
            if partitions is None:
                return
            consumer.assign(partitions)
            # After a reconnect, go on from where the view was: reading from the start again
            # would briefly show older states over the newer ones already kept.
            for tp in partitions:
                if tp in self._positions:
                    consumer.seek(tp, self._positions[tp])
                else:
                    consumer.seek_to_beginning(tp)
            targets: dict[TopicPartition, int] = consumer.end_offsets(partitions)
            while not self._stop.is_set():
                batches = consumer.poll(timeout_ms=self._poll_ms)
                for tp, records in batches.items():
                    for record in records:
                        self._apply(record.key, record.value, record.partition, record.offset)
                        self._positions[tp] = record.offset + 1
                if not self._ready.is_set() and all(
                    consumer.position(tp) >= end for tp, end in targets.items()
                ):
                    log.info("incident view caught up: %d incidents", len(self))
                    self._ready.set()
        finally:
            consumer.close()

    def _partitions(self, consumer: KafkaConsumer) -> list[TopicPartition] | None:
        """All partitions of the state topic, waiting while it does not exist yet."""
        while not self._stop.is_set():
            found = topic_partitions(consumer, self._topic, timeout_s=self._retry_s)
            if found:
                return found
            self._stop.wait(self._retry_s)
        return None

    def _apply(self, key: bytes | None, value: bytes | None, partition: int, offset: int) -> None:
        if value is None:
            # A tombstone: the escalator has forgotten this incident.
            if key is not None:
                with self._lock:
                    self._states.pop(key.decode("utf-8", "replace"), None)
            return
        try:
            state = EscalationState.model_validate_json(value)
        except ValidationError as exc:
            # Only the position and the error count: the value may hold the child's report.
            log.warning(
                "state record at %s/%d offset %d skipped: %d problem(s)",
                self._topic,
                partition,
                offset,
                exc.error_count(),
            )
            return
        with self._lock:
            self._states[state.incident_id] = state
