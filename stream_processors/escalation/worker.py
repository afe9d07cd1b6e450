"""The escalator: deadlines that survive kill -9, around the pure core in ``core.py``.

The Kafka machinery (ownership and fencing per partition, reading state back, one transaction
per batch, dead letters, recovery) is ``stream_processors.state_worker.StateWorker``; its
docstring says why it is built that way. What is the escalator's own:

- Inputs ``incidents.classified.v1`` (routing done: start the clock), ``incidents.actions.v1``
  (acknowledge, resolve, note, reclassify) and ``incidents.updates.v1`` (a later report joined
  the incident) and the state topic ``escalation.state.v1`` are all keyed by incident id with
  the same partition count, so an incident's routing, actions, updates and state meet in one
  partition number, owned by one escalator at a time.
- The state is one ``EscalationState`` per incident, never deleted: a resolved incident's state
  is what the status page and the acknowledgement links read back.
- Deadlines are ``state.next_due``; ``on_tick`` takes the step, whose notification ids follow
  from (incident, step), so a step redone after a crash is recognised downstream.
- The group id ``{app_id}-escalator`` and the transactional ids ``{app_id}-escalator-{p}`` are
  what deployed workers fence each other with: they must stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from consumers.dead_letters import SourceRecord, describe_failure
from consumers.metrics_registry import PerRegistry
from schemas.actions import IncidentAction
from schemas.common import Severity, utcnow
from schemas.escalation import EscalationState
from schemas.incidents import IncidentClassified, IncidentUpdate
from schemas.topics import (
    AUDIT_EVENTS,
    DEAD_LETTER,
    ESCALATION_STATE,
    INCIDENTS_ACTIONS,
    INCIDENTS_CLASSIFIED,
    INCIDENTS_UPDATES,
    requests_topic_for,
)
from stream_processors.config_holder import ConfigHolder
from stream_processors.escalation.core import (
    Transition,
    on_action,
    on_incident,
    on_tick,
    on_update,
)
from stream_processors.state_worker import Output, StateWorker, Work, WorkerOptions

STAGE = "escalator"


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


class Escalator(StateWorker[EscalationState]):
    state_model = EscalationState

    def __init__(
        self,
        config: EscalatorConfig,
        holder: ConfigHolder,
        *,
        registry: CollectorRegistry = REGISTRY,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        prefix = config.topic_prefix
        self.config = config
        self.holder = holder
        self.metrics = metrics_for(registry)
        self.classified_topic = INCIDENTS_CLASSIFIED.name(prefix)
        self.actions_topic = INCIDENTS_ACTIONS.name(prefix)
        self.updates_topic = INCIDENTS_UPDATES.name(prefix)
        self.prefix = prefix
        self.audit_topic = AUDIT_EVENTS.name(prefix)
        self.group_id = f"{config.app_id}-escalator"
        super().__init__(
            WorkerOptions(
                stage=STAGE,
                group_id=self.group_id,
                inputs=(self.classified_topic, self.actions_topic, self.updates_topic),
                state_topic=ESCALATION_STATE.name(prefix),
                dead_letter_topic=DEAD_LETTER.name(prefix),
                poll_timeout_ms=config.poll_timeout_ms,
                max_poll_records=config.max_poll_records,
                instance_id=config.instance_id,
            ),
            restore_seconds=self.metrics.restore_seconds,
            registry=registry,
            clock=clock,
        )

    # ---- hooks ----

    def state_key(self, state: EscalationState) -> str:
        return state.incident_id

    def incident_of(self, record: SourceRecord) -> str | None:
        # Every input is keyed by incident id.
        return record.key.decode("utf-8", "replace") if record.key else None

    def apply(
        self, p: int, record: SourceRecord, work: Work[EscalationState], now: datetime
    ) -> list[Output]:
        config = self.holder.current()
        assert record.value is not None  # the worker dead-letters empty messages itself
        if record.topic == self.classified_topic:
            incident = IncidentClassified.model_validate_json(record.value)
            key = incident.incident_id
            transition = on_incident(work.get(key), incident, config.policy, config.directory, now)
        elif record.topic == self.updates_topic:
            update = IncidentUpdate.model_validate_json(record.value)
            key = update.incident_id
            transition = on_update(work.get(key), update, config.policy, config.directory, now)
        else:
            action = IncidentAction.model_validate_json(record.value)
            key = action.incident_id
            transition = on_action(work.get(key), action, config.policy, config.directory, now)
            self.metrics.actions.labels(kind=action.kind.value).inc()
        work[key] = transition.state
        return self._outputs(transition)

    def due(
        self, states: Mapping[str, EscalationState], now: datetime
    ) -> Iterable[EscalationState]:
        return [s for s in states.values() if s.next_due is not None and s.next_due <= now]

    def on_due(
        self, state: EscalationState, now: datetime
    ) -> tuple[EscalationState | None, list[Output]]:
        config = self.holder.current()
        try:
            transition = on_tick(state, config.policy, config.directory, now)
        except Exception as exc:
            # Keep the deadline from firing in a loop; a person must look at it.
            self.log.error(
                "escalation step for %s failed: %s", state.incident_id, describe_failure(exc)
            )
            return state.model_copy(update={"next_due": None}), []
        if transition.requests and state.next_due is not None:
            severity = state.severity.value if state.severity else "unknown"
            self.metrics.steps.labels(severity=severity).inc()
            self.metrics.lateness.observe((now - state.next_due).total_seconds())
        return transition.state, self._outputs(transition)

    def held_changed(self) -> None:
        self.metrics.open_deadlines.set(
            sum(
                1
                for states in self.states.values()
                for s in states.values()
                if s.next_due is not None
            )
        )

    # ---- helpers ----

    def _outputs(self, transition: Transition) -> list[Output]:
        key = transition.state.incident_id.encode("utf-8")
        out: list[Output] = [
            (requests_topic_for(r).name(self.prefix), key, r) for r in transition.requests
        ]
        out += [(self.audit_topic, key, a) for a in transition.audits]
        return out
