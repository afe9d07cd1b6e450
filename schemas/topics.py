"""Every topic, its key, value contract and partition count, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from schemas.actions import IncidentAction
from schemas.audit import AuditEvent, DeadLetter
from schemas.bots import Conversation
from schemas.common import Severity
from schemas.escalation import EscalationState
from schemas.grouping import SchoolGroups
from schemas.incidents import IncidentClassified, IncidentUpdate
from schemas.notifications import DeliveryResult, NotificationRequest
from schemas.reports import ReportSubmitted


@dataclass(frozen=True)
class TopicSpec:
    base_name: str
    key: str
    model: type[BaseModel]
    partitions: int = 3
    #: compacted topics keep the latest value per key (state), not a history
    compacted: bool = False

    def name(self, prefix: str = "") -> str:
        return f"{prefix}{self.base_name}"


REPORTS_SUBMITTED = TopicSpec("reports.submitted.v1", key="report_id", model=ReportSubmitted)
# Each report once classified, keyed by its school (``schemas.ids.school_key``): one school's
# reports meet in one partition, where the grouper decides new incident or update.
REPORTS_CLASSIFIED = TopicSpec("reports.classified.v1", key="school", model=IncidentClassified)
# The grouper's open incidents per school, partitioned like reports.classified.
GROUPING_STATE = TopicSpec("grouping.state.v1", key="school", model=SchoolGroups, compacted=True)
INCIDENTS_UPDATES = TopicSpec("incidents.updates.v1", key="incident_id", model=IncidentUpdate)
INCIDENTS_CLASSIFIED = TopicSpec(
    "incidents.classified.v1", key="incident_id", model=IncidentClassified
)
NOTIFICATIONS_REQUESTED = TopicSpec(
    "notifications.requested.v1", key="incident_id", model=NotificationRequest
)
# The urgent lane: requests about critical incidents, or where a child is said to be in danger
# now, travel on a topic of their own with a consumer of their own, so they never queue behind
# a burst of lesser mail (``requests_topic_for`` chooses).
NOTIFICATIONS_URGENT = TopicSpec(
    "notifications.urgent.v1", key="incident_id", model=NotificationRequest
)
NOTIFICATIONS_RESULTS = TopicSpec(
    "notifications.results.v1", key="incident_id", model=DeliveryResult
)
AUDIT_EVENTS = TopicSpec("audit.events.v1", key="incident_id", model=AuditEvent)
INCIDENTS_ACTIONS = TopicSpec("incidents.actions.v1", key="incident_id", model=IncidentAction)
# Same key and partition count as incidents.classified and incidents.actions: an incident's
# routing, actions and state meet in one partition number, owned by one escalator at a time.
ESCALATION_STATE = TopicSpec(
    "escalation.state.v1", key="incident_id", model=EscalationState, compacted=True
)
# Where each chat bot conversation stands (``platform:chat``), read back by every intake.
BOTS_CONVERSATIONS = TopicSpec(
    "bots.conversations.v1", key="platform:chat", model=Conversation, compacted=True
)
DEAD_LETTER = TopicSpec("deadletter.v1", key="source key", model=DeadLetter, partitions=1)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    REPORTS_SUBMITTED,
    REPORTS_CLASSIFIED,
    GROUPING_STATE,
    INCIDENTS_CLASSIFIED,
    INCIDENTS_UPDATES,
    NOTIFICATIONS_REQUESTED,
    NOTIFICATIONS_URGENT,
    NOTIFICATIONS_RESULTS,
    AUDIT_EVENTS,
    INCIDENTS_ACTIONS,
    ESCALATION_STATE,
    BOTS_CONVERSATIONS,
    DEAD_LETTER,
)


def is_urgent(request: NotificationRequest) -> bool:
    return request.severity is Severity.critical or request.immediate_danger


def requests_topic_for(request: NotificationRequest) -> TopicSpec:
    """The lane of a notification request: urgent (critical, or danger ticked) or normal."""
    return NOTIFICATIONS_URGENT if is_urgent(request) else NOTIFICATIONS_REQUESTED
