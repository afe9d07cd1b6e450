"""The pure escalation core: an incident's state, one event, the clock → the next state and
what to send.

Three events move an incident: its routing (``on_incident``), an action by a person
(``on_action``) and the passing of its deadline (``on_tick``). Each returns a ``Transition``: the
new state, the notification requests and the audit events. No Kafka, no wall clock: the worker
passes ``now``, and unit tests move it.

The rules (POLICY.md, "Tiers and escalation"):
- When no notified tier has acknowledged by the deadline, the next tier on the ladder is told
  (never beyond the severity's ``escalate_up_to``), the others are reminded, and the deadline
  moves on by ``ack_within``. Once the ladder has no tier left, reminders go on at that interval
  up to ``acknowledgement.max_reminders``.
- An acknowledgement stops all of this, except for critical incidents: there each organisation
  acknowledges for itself, is reminded until it does, and the climb goes on until every tier
  has been told (Decree 56/2017).
- A resolution stops everything. Everyone already told hears of an acknowledgement or a
  resolution, and by which organisation, in one short mail.
- An action may arrive before its incident: it is kept, and applied when the incident comes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from schemas.actions import ActionKind, IncidentAction
from schemas.audit import AuditEvent, AuditEventType
from schemas.common import Severity, Tier
from schemas.escalation import Acknowledgement, EscalationState, TierState
from schemas.ids import event_id
from schemas.incidents import IncidentClassified
from schemas.notifications import NotificationKind, NotificationRequest
from schemas.policy import Routing
from stream_processors.routing.core import ack_due_at, plan_notifications
from stream_processors.routing.directory_index import DirectoryIndex

MAX_APPLIED_ACTIONS = 100
INFORMATIONAL = (NotificationKind.acknowledged, NotificationKind.resolved)


@dataclass(frozen=True)
class Transition:
    state: EscalationState
    requests: list[NotificationRequest] = field(default_factory=list)
    audits: list[AuditEvent] = field(default_factory=list)


def _blank(incident_id: str, now: datetime) -> EscalationState:
    return EscalationState(incident_id=incident_id, updated_at=now)


def _severity(state: EscalationState) -> Severity:
    assert state.severity is not None, "only called once the incident is known"
    return state.severity


def _unacknowledged(state: EscalationState) -> list[Tier]:
    return [
        tier
        for tier, ts in state.tiers.items()
        if ts.notified_at_step is not None and ts.acknowledged is None
    ]


def _notified(state: EscalationState) -> list[Tier]:
    return [tier for tier, ts in state.tiers.items() if ts.notified_at_step is not None]


def _next_tier(state: EscalationState, routing: Routing) -> Tier | None:
    for tier in routing.climb(_severity(state)):
        ts = state.tiers.get(tier)
        if ts is None or ts.notified_at_step is None:
            return tier
    return None


def keeps_going(state: EscalationState, routing: Routing) -> bool:
    """Whether the incident still has a deadline: nobody (or, if critical, not everybody) has
    acknowledged and it is not resolved."""
    if state.incident is None or state.resolved is not None:
        return False
    if _severity(state) is Severity.critical:
        return bool(_unacknowledged(state)) or _next_tier(state, routing) is not None
    return not any(ts.acknowledged for ts in state.tiers.values())


def _requests(
    state: EscalationState,
    tiers: list[Tier],
    kind: NotificationKind,
    routing: Routing,
    index: DirectoryIndex,
    now: datetime,
    *,
    due: datetime | None,
    acted_by: Tier | None = None,
    acted_by_name: str | None = None,
    ref: str = "",
) -> list[NotificationRequest]:
    """Requests for ``tiers`` at the current step, built by the router's own core so that
    recipients and contact redaction are exactly the first notice's."""
    if not tiers or state.incident is None:
        return []
    incident = _as_current(state)
    plan = plan_notifications(incident, routing, index, now, tiers=tiers, step=state.step)
    out = []
    for req in plan.notifications:
        update: dict[str, object] = {"kind": kind}
        if due is not None:
            update["ack_due_at"] = due
        if kind in INFORMATIONAL:
            # One per action and recipient, never confused with the step's own mail.
            update["notification_id"] = event_id(
                "notification", req.incident_id, req.recipient.email.lower(), kind.value, ref
            )
            update["acted_by"] = acted_by
            update["acted_by_name"] = acted_by_name
        out.append(req.model_copy(update=update))
    return out


def _as_current(state: EscalationState) -> IncidentClassified:
    """The incident with the severity and category in force (a review may have changed them)."""
    assert state.incident is not None
    decision = state.incident.decision
    if state.severity == decision.severity and state.category == decision.category:
        return state.incident
    changed = decision.model_copy(update={"severity": state.severity, "category": state.category})
    return state.incident.model_copy(update={"decision": changed})


def _audit(
    state: EscalationState, kind: AuditEventType, ref: str, now: datetime, detail: dict[str, object]
) -> AuditEvent:
    incident = state.incident
    return AuditEvent(
        event_id=event_id(state.incident_id, kind.value, ref),
        incident_id=state.incident_id,
        event=kind,
        at=now,
        report_ids=incident.report_ids if incident else [],
        tracking_codes=incident.tracking_codes if incident else [],
        detail=detail,
    )


def on_incident(
    state: EscalationState | None,
    incident: IncidentClassified,
    routing: Routing,
    index: DirectoryIndex,
    now: datetime,
) -> Transition:
    """The router has sent the first notice: start the clock."""
    if state is not None and state.incident is not None:
        return Transition(state)  # a replay: the incident is already known
    state = (state or _blank(incident.incident_id, now)).model_copy(deep=True)
    decision = incident.decision
    route = routing.severities[decision.severity]
    state.incident = incident
    state.severity = decision.severity
    state.category = decision.category
    for tier in route.notify:
        ts = state.tiers.setdefault(tier, TierState())
        ts.notified_at_step = 0
    state.next_due = (
        ack_due_at(incident.received_at, route.ack_within) if keeps_going(state, routing) else None
    )
    state.updated_at = now
    return Transition(state)


def on_tick(
    state: EscalationState, routing: Routing, index: DirectoryIndex, now: datetime
) -> Transition:
    """The deadline passed: tell the next tier, remind the rest, set the next deadline."""
    if state.next_due is None or now < state.next_due or state.incident is None:
        return Transition(state)
    state = state.model_copy(deep=True)
    if not keeps_going(state, routing):
        state.next_due = None
        state.updated_at = now
        return Transition(state)
    route = routing.severities[_severity(state)]
    new_tier = _next_tier(state, routing)
    remind = _unacknowledged(state)
    if new_tier is None:
        if state.reminders_at_top >= routing.acknowledgement.max_reminders:
            state.next_due = None  # the ladder and the reminders are spent
            state.updated_at = now
            return Transition(
                state,
                audits=[
                    _audit(
                        state,
                        AuditEventType.escalated,
                        f"exhausted-{state.step}",
                        now,
                        {"step": state.step, "exhausted": True, "unacknowledged": remind},
                    )
                ],
            )
        state.reminders_at_top += 1
    state.step += 1
    due = ack_due_at(now, route.ack_within)
    if new_tier is not None:
        state.tiers.setdefault(new_tier, TierState()).notified_at_step = state.step
    requests = _requests(state, remind, NotificationKind.reminder, routing, index, now, due=due)
    if new_tier is not None:
        requests += _requests(
            state, [new_tier], NotificationKind.escalation, routing, index, now, due=due
        )
    state.next_due = due
    state.updated_at = now
    audit = _audit(
        state,
        AuditEventType.escalated,
        str(state.step),
        now,
        {
            "step": state.step,
            "escalated_to": [new_tier.value] if new_tier else [],
            "reminded": [t.value for t in remind],
            "recipients": [
                {"tier": r.recipient.tier.value, "email": r.recipient.email} for r in requests
            ],
            "next_due": due.isoformat(),
        },
    )
    return Transition(state, requests, [audit])


def on_action(
    state: EscalationState | None,
    action: IncidentAction,
    routing: Routing,
    index: DirectoryIndex,
    now: datetime,
) -> Transition:
    """Someone acknowledged, resolved, added a note or reclassified."""
    if state is not None and action.action_id in state.applied_actions:
        return Transition(state)  # the same action twice (a double click, a replay)
    state = (state or _blank(action.incident_id, now)).model_copy(deep=True)
    state.applied_actions = [*state.applied_actions, action.action_id][-MAX_APPLIED_ACTIONS:]
    state.updated_at = now
    who = Acknowledgement(by=action.actor, at=action.at, via=action.via)
    detail: dict[str, object] = {
        "tier": action.tier.value,
        "recipient": action.actor,
        "via": action.via,
        "note_length": len(action.note or ""),
    }
    audits: list[AuditEvent] = []
    requests: list[NotificationRequest] = []
    told = _notified(state)
    if action.kind is ActionKind.acknowledge:
        ts = state.tiers.setdefault(action.tier, TierState())
        if ts.acknowledged is None and state.resolved is None:
            ts.acknowledged = who
            audits.append(_audit(state, AuditEventType.acknowledged, action.action_id, now, detail))
            requests = _requests(
                state,
                told,
                NotificationKind.acknowledged,
                routing,
                index,
                now,
                due=None,
                acted_by=action.tier,
                acted_by_name=action.actor,
                ref=action.action_id,
            )
    elif action.kind is ActionKind.resolve:
        if state.resolved is None:
            state.resolved = who
            state.resolved_tier = action.tier
            audits.append(_audit(state, AuditEventType.resolved, action.action_id, now, detail))
            requests = _requests(
                state,
                told,
                NotificationKind.resolved,
                routing,
                index,
                now,
                due=None,
                acted_by=action.tier,
                acted_by_name=action.actor,
                ref=action.action_id,
            )
    elif action.kind is ActionKind.note:
        audits.append(_audit(state, AuditEventType.note_added, action.action_id, now, detail))
    if state.incident is not None and not keeps_going(state, routing):
        state.next_due = None
    return Transition(state, requests, audits)
