"""The escalator: deadlines that survive kill -9, around the pure core in ``core.py``.

Why not faust: with faust tables and timers under exactly-once, table updates were lost, a
restore stopped short and recovery crashed on rebalance with two workers (measured here; see
docs). This is the design that held up under 10 × kill -9 with one and two workers: a plain
kafka-python service that keeps each incident's state on a compacted topic and commits state,
outputs and consumed offsets in one transaction.

- Inputs ``incidents.classified.v1`` and ``incidents.actions.v1`` and the state topic
  ``escalation.state.v1`` share key (incident id) and partition count, so partition *p* of each
  belongs together. The range assignor hands a worker the same numbers of both inputs.
- Each owned partition *p* has its own transactional producer, ``{app_id}-escalator-{p}``. A
  worker that takes *p* over initialises that id, which fences the previous owner (a zombie
  cannot commit a step for *p* any more) and aborts whatever it left open; then it reads *p*'s
  state back from the state topic (read_committed) before touching anything.
- Per poll batch and partition: one transaction with the new states, the notification requests,
  the audit events, dead letters and the consumed offsets. Deadlines are checked between polls;
  a step that falls due is its own transaction (state, requests, audit). A crash before the
  commit leaves nothing, and the step is taken again, with the same ids, by whoever owns *p* next.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel, ValidationError

from consumers.dead_letters import DeadLetters, Reason, describe_failure
from consumers.metrics_registry import PerRegistry
from schemas.actions import IncidentAction
from schemas.common import Severity, utcnow
from schemas.escalation import EscalationState
from schemas.incidents import IncidentClassified
from schemas.topics import (
    AUDIT_EVENTS,
    DEAD_LETTER,
    ESCALATION_STATE,
    INCIDENTS_ACTIONS,
    INCIDENTS_CLASSIFIED,
    NOTIFICATIONS_REQUESTED,
)
from schemas.validation import validation_reason
from stream_processors.config_holder import ConfigHolder, LoadedConfig
from stream_processors.escalation.core import Transition, on_action, on_incident, on_tick

log = logging.getLogger("escalate.escalator")

STAGE = "escalator"
RESTORE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class EscalatorConfig:
    topic_prefix: str = ""
    app_id: str = "escalate"
    poll_timeout_ms: int = 250
    max_poll_records: int = 200
    #: a stable name for this worker (ESCALATE_INSTANCE_ID, e.g. the pod's name): with it the
    #: worker is a static group member, and one restarted after a crash takes its partitions
    #: straight back instead of waiting for the group to notice the old one is gone
    instance_id: str | None = None


class EscalatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.steps = Counter(
            "escalate_escalation_steps",
            "Escalation steps taken after a missed deadline, by severity.",
            ["severity"],
            registry=registry,
        )
        for severity in Severity:  # from zero, so increase() sees the very first step
            self.steps.labels(severity=severity.value)
        self.lateness = Histogram(
            "escalate_escalation_lateness_seconds",
            "How long after its deadline a step was taken.",
            buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900),
            registry=registry,
        )
        self.actions = Counter(
            "escalate_escalation_actions",
            "Actions applied to incidents, by kind.",
            ["kind"],
            registry=registry,
        )
        self.open_deadlines = Gauge(
            "escalate_escalation_pending",
            "Incidents this worker holds with a deadline still ahead.",
            registry=registry,
        )
        self.restore_seconds = Histogram(
            "escalate_escalation_restore_seconds",
            "Time to read a partition's state back after taking it over.",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60),
            registry=registry,
        )


metrics_for = PerRegistry(EscalatorMetrics)


class Escalator:
    def __init__(
        self,
        config: EscalatorConfig,
        holder: ConfigHolder,
        *,
        registry: CollectorRegistry = REGISTRY,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self.holder = holder
        self.registry = registry
        self.clock = clock
        self.metrics = metrics_for(registry)
        self.dead_letters = DeadLetters(STAGE, registry)
        prefix = config.topic_prefix
        self.classified_topic = INCIDENTS_CLASSIFIED.name(prefix)
        self.actions_topic = INCIDENTS_ACTIONS.name(prefix)
        self.state_topic = ESCALATION_STATE.name(prefix)
        self.requests_topic = NOTIFICATIONS_REQUESTED.name(prefix)
        self.audit_topic = AUDIT_EVENTS.name(prefix)
        self.dead_letter_topic = DEAD_LETTER.name(prefix)
        self.group_id = f"{config.app_id}-escalator"
        # Per owned partition: its producer and its incidents' state.
        self.producers: dict[int, Any] = {}
        self.states: dict[int, dict[str, EscalationState]] = {}
        self._bootstrap = ""
        self._consumer: Any = None
        self._pending: set[int] = set()  # assigned, not yet taken over

    # ---- ownership of partitions ----

    def _take(self, partitions: set[int]) -> None:
        from kafka import KafkaProducer

        for p in sorted(partitions - set(self.producers)):
            started = time.monotonic()
            producer = KafkaProducer(
                bootstrap_servers=self._bootstrap,
                client_id=f"{self.group_id}-{p}",
                transactional_id=f"{self.group_id}-{p}",
                acks="all",
                enable_idempotence=True,
            )
            producer.init_transactions()  # fences the previous owner of p, aborts its leftovers
            self.producers[p] = producer
            self.states[p] = self._restore(p)
            self.metrics.restore_seconds.observe(time.monotonic() - started)
            log.info(
                "escalator took partition %d: %d incident(s) restored in %.1f s",
                p,
                len(self.states[p]),
                time.monotonic() - started,
            )
        self._update_gauge()

    def _drop(self, partitions: set[int]) -> None:
        for p in partitions:
            producer = self.producers.pop(p, None)
            self.states.pop(p, None)
            if producer is not None:
                producer.close(timeout=1)
        self._update_gauge()

    def _restore(self, p: int) -> dict[str, EscalationState]:
        """Partition p's state as last committed (read_committed, to the end)."""
        from kafka import KafkaConsumer, TopicPartition

        tp = TopicPartition(self.state_topic, p)
        reader = KafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",
            client_id=f"{self.group_id}-restore-{p}",
        )
        states: dict[str, EscalationState] = {}
        try:
            reader.assign([tp])
            reader.seek_to_beginning(tp)
            end = reader.end_offsets([tp])[tp]
            deadline = time.monotonic() + RESTORE_TIMEOUT_S
            while reader.position(tp) < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"state of partition {p} not read back in time")
                for record in reader.poll(timeout_ms=500).get(tp, []):
                    if record.value is None:
                        states.pop(record.key.decode(), None)
                        continue
                    try:
                        state = EscalationState.model_validate_json(record.value)
                    except ValidationError:
                        log.error("unreadable state record %s[%d]@%d", tp.topic, p, record.offset)
                        continue
                    states[state.incident_id] = state
        finally:
            reader.close()
        return states

    def _update_gauge(self) -> None:
        pending = sum(
            1 for states in self.states.values() for s in states.values() if s.next_due is not None
        )
        self.metrics.open_deadlines.set(pending)

    # ---- applying events ----

    def _apply(
        self,
        p: int,
        record: Any,
        work: dict[str, EscalationState],
        config: LoadedConfig,
        now: datetime,
    ) -> tuple[list[tuple[str, bytes, BaseModel]], str | None]:
        """One input record → messages to send; the second value names a dead-letter reason."""
        if record.value is None:
            return [], "empty message (tombstone)"
        try:
            if record.topic == self.classified_topic:
                incident = IncidentClassified.model_validate_json(record.value)
                key = incident.incident_id
                current = work.get(key) or self.states[p].get(key)
                transition = on_incident(current, incident, config.policy, config.directory, now)
            else:
                action = IncidentAction.model_validate_json(record.value)
                key = action.incident_id
                current = work.get(key) or self.states[p].get(key)
                transition = on_action(current, action, config.policy, config.directory, now)
                self.metrics.actions.labels(kind=action.kind.value).inc()
        except ValidationError as exc:
            return [], f"unparseable: {validation_reason(exc)}"
        work[key] = transition.state
        return self._outputs(transition), None

    def _outputs(self, transition: Transition) -> list[tuple[str, bytes, BaseModel]]:
        key = transition.state.incident_id.encode("utf-8")
        out: list[tuple[str, bytes, BaseModel]] = []
        out += [(self.requests_topic, key, r) for r in transition.requests]
        out += [(self.audit_topic, key, a) for a in transition.audits]
        return out

    def _commit(
        self,
        p: int,
        work: dict[str, EscalationState],
        out: list[tuple[str, bytes, BaseModel]],
        offsets: dict[Any, Any] | None,
    ) -> None:
        """One transaction on partition p's producer: outputs, states, consumed offsets."""
        producer = self.producers[p]
        producer.begin_transaction()
        try:
            for topic, key, model in out:
                producer.send(topic, key=key, value=model.model_dump_json().encode("utf-8"))
            for incident_id, state in work.items():
                producer.send(
                    self.state_topic,
                    key=incident_id.encode("utf-8"),
                    value=state.model_dump_json().encode("utf-8"),
                    partition=p,
                )
            if offsets:
                producer.send_offsets_to_transaction(offsets, self._consumer.group_metadata())
            producer.commit_transaction()
        except BaseException:
            try:
                producer.abort_transaction()
            except Exception:  # already fenced or broken: the next owner aborts for us
                log.warning("abort of partition %d's transaction failed", p)
            raise
        self.states[p].update(work)

    def _process(self, batch: dict[Any, list[Any]]) -> None:
        from kafka import OffsetAndMetadata

        config = self.holder.current()
        by_partition: dict[int, list[tuple[Any, list[Any]]]] = {}
        for tp, records in batch.items():
            by_partition.setdefault(tp.partition, []).append((tp, records))
        for p, parts in by_partition.items():
            if p not in self.producers:
                continue  # revoked meanwhile; the new owner reads these again
            now = self.clock()
            work: dict[str, EscalationState] = {}
            out: list[tuple[str, bytes, BaseModel]] = []
            offsets = {}
            for tp, records in parts:
                for record in records:
                    try:
                        produced, problem = self._apply(p, record, work, config, now)
                    except Exception as exc:  # one message must never stop the escalator
                        produced, problem = [], f"failed: escalator raised {describe_failure(exc)}"
                    out += produced
                    if problem is not None:
                        out.append(self._dead_letter(record, problem))
                offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
            self._commit(p, work, out, offsets)

    def _dead_letter(self, record: Any, problem: str) -> tuple[str, bytes, BaseModel]:
        reason_word, _, detail = problem.partition(": ")
        reason = Reason.failed if reason_word == "failed" else Reason.unparseable
        key = record.key.decode("utf-8", "replace") if record.key else None
        letter = self.dead_letters.of(record, reason, detail or problem, key)
        return (self.dead_letter_topic, record.key or b"", letter)

    def _tick(self) -> None:
        """Take every step that has fallen due, one transaction per partition."""
        config = self.holder.current()
        now = self.clock()
        for p, states in list(self.states.items()):
            due = [s for s in states.values() if s.next_due is not None and s.next_due <= now]
            if not due or p not in self.producers:
                continue
            work: dict[str, EscalationState] = {}
            out: list[tuple[str, bytes, BaseModel]] = []
            for state in due:
                try:
                    transition = on_tick(state, config.policy, config.directory, now)
                except Exception as exc:
                    # Keep the deadline from firing in a loop; a person must look at it.
                    log.error(
                        "escalation step for %s failed: %s",
                        state.incident_id,
                        describe_failure(exc),
                    )
                    work[state.incident_id] = state.model_copy(update={"next_due": None})
                    continue
                if transition.requests and state.next_due is not None:
                    self.metrics.steps.labels(
                        severity=(state.severity.value if state.severity else "unknown")
                    ).inc()
                    self.metrics.lateness.observe((now - state.next_due).total_seconds())
                work[state.incident_id] = transition.state
                out += self._outputs(transition)
            self._commit(p, work, out, None)
        self._update_gauge()

    # ---- the loop ----

    def run(self, bootstrap_servers: str, stop: threading.Event) -> None:
        from kafka import KafkaConsumer
        from kafka.consumer.subscription_state import ConsumerRebalanceListener
        from kafka.coordinator.assignors.range import RangePartitionAssignor
        from kafka.errors import KafkaError

        self._bootstrap = bootstrap_servers
        escalator = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            def on_partitions_revoked(self, revoked: Any) -> None:
                lost = {tp.partition for tp in revoked}
                escalator._pending -= lost
                escalator._drop(lost)

            def on_partitions_assigned(self, assigned: Any) -> None:
                # Taken over in the loop, not here: fencing and reading the state back can take
                # seconds, and a listener blocks the client's event loop, heartbeats included.
                escalator._pending |= {tp.partition for tp in assigned}

        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=self.group_id,
            client_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=self.config.max_poll_records,
            # The same partition numbers of both inputs to one worker: they share a state.
            partition_assignment_strategy=[RangePartitionAssignor],
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
            group_instance_id=(
                f"{self.group_id}-{self.config.instance_id}" if self.config.instance_id else None
            ),
        )
        self._consumer = consumer
        try:
            consumer.subscribe([self.classified_topic, self.actions_topic], listener=Listener())
            log.info("escalator consuming as group %s", self.group_id)
            while not stop.is_set():
                try:
                    batch = consumer.poll(timeout_ms=self.config.poll_timeout_ms)
                    if self._pending:
                        taking, self._pending = self._pending, set()
                        self._take(taking)
                    if batch:
                        self._process(batch)
                    self._tick()
                except KafkaError as exc:
                    # Fenced, rebalanced or the broker is away: forget what we held, read it
                    # back from the committed state when the group gives it to us again.
                    log.error("escalator: %s; re-reading committed state", type(exc).__name__)
                    held = set(self.producers)
                    self._drop(held)
                    stop.wait(1.0)
                    self._resume(consumer, held)
        finally:
            self._drop(set(self.producers))
            consumer.close(autocommit=False)

    def _resume(self, consumer: Any, partitions: set[int]) -> None:
        """After a failed transaction: rewind to the committed offsets, take partitions back."""
        assigned = consumer.assignment()
        for tp in assigned:
            committed = consumer.committed(tp)
            if committed is not None:
                consumer.seek(tp, committed)
            else:
                consumer.seek_to_beginning(tp)
        self._take(
            {tp.partition for tp in assigned} & partitions or {tp.partition for tp in assigned}
        )
