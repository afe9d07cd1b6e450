"""The grouper: one incident per event, around the pure rule in ``core.py``.

Classified reports arrive on ``reports.classified.v1`` keyed by school, so all of one school's
reports meet in one partition and one worker decides, in order, whether each opens an incident
(forwarded to ``incidents.classified.v1`` for routing and the escalator) or joins an open one
(an ``IncidentUpdate`` on ``incidents.updates.v1`` for the escalator, and a ``grouped`` audit
event saying why). What the grouper remembers per school lives on the compacted
``grouping.state.v1``, committed in the same transaction as those outputs and the consumed
offset, by the same machinery as the escalator's deadlines (``StateWorker``): a kill -9
between two reports of a burst leaves either both the decision and its state or neither.

The state holds keyed hashes only (see ``schemas/grouping.py``), and a school's entries are
forgotten once their window has passed: a tick writes the school's state without them, or a
tombstone when nothing is left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from consumers.dead_letters import SourceRecord
from consumers.metrics_registry import PerRegistry
from schemas.audit import AuditEvent, AuditEventType
from schemas.common import utcnow
from schemas.grouping import GroupingPolicy, SchoolGroups
from schemas.ids import event_id, school_key
from schemas.incidents import GroupMatch, IncidentClassified, IncidentUpdate, MatchKind
from schemas.topics import (
    AUDIT_EVENTS,
    DEAD_LETTER,
    GROUPING_STATE,
    INCIDENTS_CLASSIFIED,
    INCIDENTS_UPDATES,
    REPORTS_CLASSIFIED,
    TopicSpec,
)
from stream_processors.config_holder import ConfigHolder
from stream_processors.grouping.core import expire, match, remember
from stream_processors.grouping.signals import extract, hashed, shorthand_from
from stream_processors.state_worker import Output, StateWorker, Unusable, Work, WorkerOptions

STAGE = "grouper"
#: how long no report must have arrived before old incidents are swept from the state
QUIET_BEFORE_EXPIRY_S = 5.0


@dataclass(frozen=True)
class GrouperConfig:
    topic_prefix: str = ""
    app_id: str = "escalate"
    #: the key of the hashes the state keeps (derived from the secret key by the composition
    #: root); a new key only means reports already seen no longer match for one window
    hash_key: bytes = field(default=b"", repr=False)
    poll_timeout_ms: int = 250
    max_poll_records: int = 200
    instance_id: str | None = None


@dataclass(frozen=True)
class Grouped:
    """What one classified report became: the school's new state and what to send."""

    state: SchoolGroups
    outputs: list[tuple[TopicSpec, str, IncidentClassified | IncidentUpdate | AuditEvent]]
    outcome: str  # new, link, account, text, follow_up


def group_report(
    groups: SchoolGroups | None,
    report: IncidentClassified,
    policy: GroupingPolicy,
    hash_key: bytes,
    now: datetime,
    shorthand: Mapping[str, tuple[str, ...]] | None = None,
) -> Grouped:
    """Pure: a classified single-report incident and the school's state → new incident or
    update. A report sent from the status page of an earlier one (``follow_up_of``) joins that
    incident whatever its wording or age; grouping never lowers a severity (the escalator takes
    the higher of the two)."""
    school = school_key(report.school_code)
    signals = hashed(
        extract(report.report.description, [str(u) for u in report.report.evidence_urls]), hash_key
    )
    severity = report.decision.severity
    found: tuple[str, GroupMatch] | None = None
    if report.follow_up_of:
        found = (report.follow_up_of, GroupMatch(kind=MatchKind.follow_up, label="tracking code"))
    else:
        hit = match(groups, signals, report.received_at, policy)
        if hit is not None:
            found = (hit.incident_id, hit.match)
    if found is None:
        state = remember(
            groups, school, report.incident_id, severity, signals, report.received_at, policy
        )
        return Grouped(state, [(INCIDENTS_CLASSIFIED, report.incident_id, report)], "new")
    target, why = found
    report_id = report.report_ids[0] if report.report_ids else report.incident_id
    code = report.tracking_codes[0] if report.tracking_codes else ""
    update = IncidentUpdate(
        incident_id=target,
        report_id=report_id,
        tracking_code=code,
        school_code=report.school_code,
        received_at=report.received_at,
        grouped_at=now,
        match=why,
        decision=report.decision,
        report=report.report,
    )
    audit = AuditEvent(
        event_id=event_id(target, AuditEventType.grouped.value, report_id),
        incident_id=target,
        event=AuditEventType.grouped,
        at=now,
        report_ids=[report_id],
        tracking_codes=[code] if code else [],
        detail={
            "report_id": report_id,
            "joined": target,
            "would_have_been": report.incident_id,
            "match": why.model_dump(mode="json"),
            "report_severity": severity.value,
        },
    )
    state = remember(groups, school, target, severity, signals, report.received_at, policy)
    outputs: list[tuple[TopicSpec, str, IncidentClassified | IncidentUpdate | AuditEvent]] = [
        (INCIDENTS_UPDATES, target, update),
        (AUDIT_EVENTS, target, audit),
    ]
    return Grouped(state, outputs, why.kind.value)


class GrouperMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.grouped = Counter(
            "escalate_grouped_reports",
            "Classified reports by what the grouper made of them: new (opened an incident), "
            "or the evidence that joined them to an open one (link, account, text, follow_up).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("new", *(kind.value for kind in MatchKind)):
            self.grouped.labels(outcome=outcome)
        self.open_incidents = Gauge(
            "escalate_grouping_open_incidents",
            "Incidents this worker holds open to later reports (all schools it owns).",
            registry=registry,
        )
        self.restore_seconds = Histogram(
            "escalate_grouping_restore_seconds",
            "Time to read a partition's grouping state back after taking it over.",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60),
            registry=registry,
        )


metrics_for = PerRegistry(GrouperMetrics)


class Grouper(StateWorker[SchoolGroups]):
    state_model = SchoolGroups

    def __init__(
        self,
        config: GrouperConfig,
        holder: ConfigHolder,
        *,
        registry: CollectorRegistry = REGISTRY,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        prefix = config.topic_prefix
        self.config = config
        self.holder = holder
        self.metrics = metrics_for(registry)
        self.classified_topic = REPORTS_CLASSIFIED.name(prefix)
        self.prefix = prefix
        self._shorthand: dict[str, tuple[str, ...]] = {}
        self._shorthand_of: object = None
        self._last_applied = float("-inf")
        super().__init__(
            WorkerOptions(
                stage=STAGE,
                group_id=f"{config.app_id}-grouper",
                inputs=(self.classified_topic,),
                state_topic=GROUPING_STATE.name(prefix),
                dead_letter_topic=DEAD_LETTER.name(prefix),
                poll_timeout_ms=config.poll_timeout_ms,
                max_poll_records=config.max_poll_records,
                instance_id=config.instance_id,
            ),
            restore_seconds=self.metrics.restore_seconds,
            registry=registry,
            clock=clock,
        )

    def state_key(self, state: SchoolGroups) -> str:
        return state.school

    def _policy(self) -> GroupingPolicy:
        return self.holder.current().policy.grouping

    def apply(
        self, p: int, record: SourceRecord, work: Work[SchoolGroups], now: datetime
    ) -> list[Output]:
        if record.value is None:
            raise Unusable("empty message (tombstone)")
        report = IncidentClassified.model_validate_json(record.value)
        school = school_key(report.school_code)
        policy = self.holder.current().policy
        if policy is not self._shorthand_of:
            self._shorthand = shorthand_from(policy.classification)
            self._shorthand_of = policy
        result = group_report(
            work.get(school), report, policy.grouping, self.config.hash_key, now, self._shorthand
        )
        self._last_applied = time.monotonic()
        work[school] = result.state
        self.metrics.grouped.labels(outcome=result.outcome).inc()
        return [
            (spec.name(self.prefix), key.encode("utf-8"), model)
            for spec, key, model in result.outputs
        ]

    def due(self, states: Mapping[str, SchoolGroups], now: datetime) -> Iterable[SchoolGroups]:
        window = self._policy().window
        return [s for s in states.values() if any(o.last_report_at + window < now for o in s.open)]

    def on_due(
        self, state: SchoolGroups, now: datetime
    ) -> tuple[SchoolGroups | None, list[Output]]:
        return expire(state, now, self._policy()), []

    def held_changed(self) -> None:
        self.metrics.open_incidents.set(
            sum(len(s.open) for states in self.states.values() for s in states.values())
        )

    def incident_of(self, record: SourceRecord) -> str | None:
        return None  # keyed by school: the incident is not known before the report is read
