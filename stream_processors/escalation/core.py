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

Triage (policy ``review``): an incident the policy selects is also sent, as ``kind=review``, to
the review desk with the review deadline; if nobody reviews by then, the review ladder is asked
one rung per deadline, each rung its own step. ``next_due`` is the earlier of the escalation
and the review deadline, and a tick takes whichever fell due (both, when both did).

A report only the learned model rated higher (``decision.model_raised``) goes to triage with
the policy's short ``second_opinion.review_within``, and the tiers the policy withholds (the
police) are kept in ``state.withheld``: not told, not climbed to, not counted as told. A review
tells them if the reviewed severity names them (a confirmation does); if nobody reviews in
time and the reporter ticked immediate danger, the review deadline tells them.

A review (``reclassify``) records who reviewed and what changed. A raise re-routes: the tiers
the new severity notifies at once and that have not been told get a ``first_notice`` (it is
their first mail about the incident, and it says the new severity) as a new step, and the
escalation deadline becomes the new severity's ``ack_within`` from now. A lowering never
un-notifies anyone and keeps the current deadline; it only changes what later steps do (which
ladder, which interval, whether an acknowledgement ends it). A review of a resolved incident,
or of one not yet known, is recorded and changes nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from schemas.actions import ActionKind, IncidentAction
from schemas.audit import AuditEvent, AuditEventType
from schemas.common import SEVERITY_RANK, Category, Severity, Tier
from schemas.escalation import (
    MAX_LATER_REPORTS,
    Acknowledgement,
    EscalationState,
    LaterReport,
    ReviewState,
    TierState,
)
from schemas.ids import event_id
from schemas.incidents import Decision, IncidentClassified, IncidentUpdate
from schemas.notifications import NotificationKind, NotificationRequest, Recipient
from schemas.policy import ReviewDesk, Routing
from schemas.reports import ReportIn
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
        if tier in state.withheld:
            continue  # waits for a reviewer, not for the clock
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
    recipients and contact redaction are exactly the first notice's.

    Every mail but the short acknowledged/resolved news shows the reports that joined since
    the first, and how many are new to that tier; the tiers' ``reports_seen`` move up to now.
    """
    if not tiers or state.incident is None:
        return []
    incident = _as_current(state)
    informational = kind in INFORMATIONAL
    later = [] if informational else state.later_reports
    plan = plan_notifications(
        incident, routing, index, now, tiers=tiers, step=state.step, later=later
    )
    count = state.report_count
    out = []
    for req in plan.notifications:
        update: dict[str, object] = {"kind": kind}
        if due is not None:
            update["ack_due_at"] = due
        if informational:
            # One per action and recipient, never confused with the step's own mail.
            update["notification_id"] = event_id(
                "notification", req.incident_id, req.recipient.email.lower(), kind.value, ref
            )
            update["acted_by"] = acted_by
            update["acted_by_name"] = acted_by_name
        else:
            tier_state = state.tiers.get(req.recipient.tier)
            seen = tier_state.reports_seen if tier_state is not None else count
            first = kind is NotificationKind.first_notice
            update["new_reports"] = 0 if first else max(0, count - seen)
            if kind is NotificationKind.update:
                update["notification_id"] = event_id(
                    "notification", req.incident_id, req.recipient.email.lower(), kind.value, ref
                )
        out.append(req.model_copy(update=update))
    if not informational:
        for tier in tiers:
            if tier in state.tiers:
                state.tiers[tier].reports_seen = count
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
    for tier in routing.first_tiers(decision):
        ts = state.tiers.setdefault(tier, TierState())
        ts.notified_at_step = 0
    state.withheld = routing.withheld(decision)
    state.escalation_due = (
        ack_due_at(incident.received_at, route.ack_within) if keeps_going(state, routing) else None
    )
    requests, audits = _open_review(state, decision, incident.report, routing, index, now)
    _refresh_due(state)
    state.updated_at = now
    # Updates that came in before their incident (another topic, no order between them).
    early, state.early_updates = state.early_updates, []
    for update in early:
        if update.report_id not in incident.report_ids:
            more, noted = _take_update(state, update, routing, index, now)
            requests += more
            audits += noted
    return Transition(state, requests, audits)


def _open_review(
    state: EscalationState,
    decision: Decision,
    report: ReportIn,
    routing: Routing,
    index: DirectoryIndex,
    now: datetime,
) -> tuple[list[NotificationRequest], list[AuditEvent]]:
    """Send the incident to triage if the policy selects this decision and none is open."""
    reason = routing.review.reason(decision, report)
    if reason is None or state.resolved is not None or state.review is not None:
        return [], []
    received = state.incident.received_at if state.incident is not None else now
    due = ack_due_at(received if state.step == 0 else now, routing.review_within(reason))
    state.review = ReviewState(reason=reason.value, opened_at=now, due=due)
    requests = _review_requests(
        state, list(routing.review.recipients), routing, index, now, due=due, ref="desk"
    )
    audit = _audit(
        state,
        AuditEventType.escalated,
        "review-desk",
        now,
        {
            "step": state.step,
            "review": reason.value,
            "escalated_to": [],
            "recipients": _addresses(requests),
            "review_due": due.isoformat(),
            "withheld_until_review": [t.value for t in state.withheld],
        },
    )
    return requests, [audit]


def on_update(
    state: EscalationState | None,
    update: IncidentUpdate,
    routing: Routing,
    index: DirectoryIndex,
    now: datetime,
) -> Transition:
    """A later report joined the incident (the grouper matched it, or its reporter added it).

    The tiers already told get no new first notice: the next reminder, escalation or update
    digest shows them the count and the new reports. A report that raises the severity
    re-routes at once: the tiers the new severity notifies and that were not told get a first
    notice (at the new severity), and the deadline becomes the new severity's. Grouping never
    lowers a severity. An update ahead of its incident is kept and applied when it comes.
    """
    if state is None or state.incident is None:
        state = (state or _blank(update.incident_id, now)).model_copy(deep=True)
        if all(u.report_id != update.report_id for u in state.early_updates):
            state.early_updates = [*state.early_updates, update][-MAX_LATER_REPORTS:]
        state.updated_at = now
        return Transition(state)
    if update.report_id in state.incident.report_ids:
        return Transition(state)  # a replay: this report is already part of the incident
    state = state.model_copy(deep=True)
    requests, audits = _take_update(state, update, routing, index, now)
    _refresh_due(state)
    state.updated_at = now
    return Transition(state, requests, audits)


def _take_update(
    state: EscalationState,
    update: IncidentUpdate,
    routing: Routing,
    index: DirectoryIndex,
    now: datetime,
) -> tuple[list[NotificationRequest], list[AuditEvent]]:
    incident = state.incident
    assert incident is not None
    state.incident = incident.model_copy(
        update={
            "report_ids": [*incident.report_ids, update.report_id],
            "tracking_codes": [*incident.tracking_codes, update.tracking_code],
        }
    )
    decision = update.decision
    state.later_reports = [
        *state.later_reports,
        LaterReport(
            report_id=update.report_id,
            tracking_code=update.tracking_code,
            received_at=update.received_at,
            severity=decision.severity,
            category=decision.category,
            match=update.match,
            report=update.report,
        ),
    ][-MAX_LATER_REPORTS:]
    old = _severity(state)
    detail: dict[str, object] = {
        "report_id": update.report_id,
        "match": update.match.model_dump(mode="json"),
        "report_severity": decision.severity.value,
        "report_count": state.report_count,
        "severity": old.value,
    }
    requests: list[NotificationRequest] = []
    audits: list[AuditEvent] = []
    if state.resolved is not None:
        detail["after_resolution"] = True
    elif SEVERITY_RANK[decision.severity] > SEVERITY_RANK[old]:
        requests, audits = _raise_by_update(state, decision, update.report, routing, index, now)
        detail.update(
            {
                "severity": decision.severity.value,
                "raised_from": old.value,
                "step": state.step,
                "notified": sorted(
                    {
                        r.recipient.tier.value
                        for r in requests
                        if r.kind is not NotificationKind.review
                    }
                ),
                "recipients": _addresses(requests),
                "withheld_until_review": [t.value for t in state.withheld],
                "next_due": state.escalation_due.isoformat() if state.escalation_due else None,
            }
        )
    _schedule_digest(state, routing, now)
    audit = _audit(state, AuditEventType.updated, update.report_id, now, detail)
    return requests, [audit, *audits]


def _raise_by_update(
    state: EscalationState,
    decision: Decision,
    report: ReportIn,
    routing: Routing,
    index: DirectoryIndex,
    now: datetime,
) -> tuple[list[NotificationRequest], list[AuditEvent]]:
    """A later report rated higher: the new severity's first tiers that were not told are told
    now (the model-only raise keeps its withheld tiers waiting for review, as for a new
    incident), and the clock, ladder and reminders start again at the new severity."""
    state.severity = decision.severity
    state.category = decision.category
    route = routing.severities[decision.severity]
    told = set(_notified(state))
    fresh = [t for t in routing.first_tiers(decision) if t not in told]
    held = [t for t in routing.withheld(decision) if t not in told]
    state.withheld = [t for t in dict.fromkeys([*state.withheld, *held]) if t not in fresh]
    due = ack_due_at(now, route.ack_within)
    requests: list[NotificationRequest] = []
    if fresh:
        state.step += 1
        for tier in fresh:
            state.tiers.setdefault(tier, TierState()).notified_at_step = state.step
        requests = _requests(
            state, fresh, NotificationKind.first_notice, routing, index, now, due=due
        )
    state.reminders_at_top = 0
    state.escalation_due = due if keeps_going(state, routing) else None
    more, audits = _open_review(state, decision, report, routing, index, now)
    return requests + more, audits


def _schedule_digest(state: EscalationState, routing: Routing, now: datetime) -> None:
    """At most one update digest per ack_within, and only while some tier told has not seen
    the latest reports. A reminder due sooner shows them first; the digest then goes to
    whoever is left (tiers that acknowledged get no reminders)."""
    if state.resolved is not None or not _unseen(state):
        state.digest_due = None
        return
    if state.digest_due is not None:
        return
    assert state.incident is not None
    within = routing.severities[_severity(state)].ack_within
    since = state.last_digest_at or state.incident.received_at
    state.digest_due = max(now, ack_due_at(since, within))


def _unseen(state: EscalationState) -> list[Tier]:
    count = state.report_count
    return [
        tier
        for tier, ts in state.tiers.items()
        if ts.notified_at_step is not None and ts.reports_seen < count
    ]


def _digest(
    state: EscalationState, routing: Routing, index: DirectoryIndex, now: datetime
) -> tuple[list[NotificationRequest], list[AuditEvent]]:
    """The digest fell due: the tiers told that have not seen the latest reports get them."""
    state.digest_due = None
    tiers = _unseen(state) if state.resolved is None else []
    if not tiers:
        return [], []
    ref = f"digest-{state.report_count}"
    due = state.escalation_due or now
    requests = _requests(
        state, tiers, NotificationKind.update, routing, index, now, due=due, ref=ref
    )
    state.last_digest_at = now
    audit = _audit(
        state,
        AuditEventType.updated,
        ref,
        now,
        {
            "digest": True,
            "step": state.step,
            "report_count": state.report_count,
            "tiers": [t.value for t in tiers],
            "recipients": _addresses(requests),
        },
    )
    return requests, [audit]


def on_tick(
    state: EscalationState, routing: Routing, index: DirectoryIndex, now: datetime
) -> Transition:
    """A deadline passed: take the escalation step and/or the review step that fell due."""
    if state.next_due is None or now < state.next_due or state.incident is None:
        return Transition(state)
    state = state.model_copy(deep=True)
    requests: list[NotificationRequest] = []
    audits: list[AuditEvent] = []
    if state.escalation_due is not None and now >= state.escalation_due:
        requests, audits = _escalate(state, routing, index, now)
    review = state.review
    if review is not None and review.due is not None and now >= review.due:
        more, noted = _review_step(state, review, routing, index, now)
        requests += more
        audits += noted
    if state.digest_due is not None and now >= state.digest_due:
        more, noted = _digest(state, routing, index, now)
        requests += more
        audits += noted
    _refresh_due(state)
    state.updated_at = now
    return Transition(state, requests, audits)


def _escalate(
    state: EscalationState, routing: Routing, index: DirectoryIndex, now: datetime
) -> tuple[list[NotificationRequest], list[AuditEvent]]:
    """The escalation deadline passed: tell the next tier, remind the rest, set the next one."""
    if not keeps_going(state, routing):
        state.escalation_due = None
        return [], []
    route = routing.severities[_severity(state)]
    new_tier = _next_tier(state, routing)
    remind = _unacknowledged(state)
    if new_tier is None:
        if state.reminders_at_top >= routing.acknowledgement.max_reminders:
            state.escalation_due = None  # the ladder and the reminders are spent
            return [], [
                _audit(
                    state,
                    AuditEventType.escalated,
                    f"exhausted-{state.step}",
                    now,
                    {"step": state.step, "exhausted": True, "unacknowledged": remind},
                )
            ]
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
    state.escalation_due = due
    audit = _audit(
        state,
        AuditEventType.escalated,
        str(state.step),
        now,
        {
            "step": state.step,
            "escalated_to": [new_tier.value] if new_tier else [],
            "reminded": [t.value for t in remind],
            "recipients": _addresses(requests),
            "next_due": due.isoformat(),
        },
    )
    return requests, [audit]


def _review_step(
    state: EscalationState,
    review: ReviewState,
    routing: Routing,
    index: DirectoryIndex,
    now: datetime,
) -> tuple[list[NotificationRequest], list[AuditEvent]]:
    """Nobody reviewed in time: ask the next rung of the review ladder that applies.

    When tiers were held back for review (a model-only raise) and the reporter ticked
    immediate danger, waiting longer is the greater risk: they are told now, as a step of its
    own, and the ladder goes on at the next deadline.
    """
    ladder = routing.review.ladder
    danger = state.incident is not None and state.incident.report.immediate_danger
    if state.withheld and danger and state.resolved is None:
        return _release_withheld(state, review, routing, index, now)
    position = review.ladder_position
    while position < len(ladder) and ladder[position].only_if_danger_ticked and not danger:
        position += 1
    if state.resolved is not None or position >= len(ladder):
        review.ladder_position = position
        review.due = None  # nobody left to ask; the desk's mail still stands
        return [], []
    rung = ladder[position]
    review.ladder_position = position + 1
    state.step += 1
    due = ack_due_at(now, routing.review.within)
    review.due = due
    requests = _review_requests(
        state, [rung.tier], routing, index, now, due=due, ref=f"rung-{position}"
    )
    audit = _audit(
        state,
        AuditEventType.escalated,
        f"review-{position}",
        now,
        {
            "step": state.step,
            "review": review.reason,
            "escalated_to": [rung.tier.value],
            "reminded": [],
            "recipients": _addresses(requests),
            "review_due": due.isoformat(),
        },
    )
    return requests, [audit]


def _release_withheld(
    state: EscalationState,
    review: ReviewState,
    routing: Routing,
    index: DirectoryIndex,
    now: datetime,
) -> tuple[list[NotificationRequest], list[AuditEvent]]:
    released = list(state.withheld)
    state.withheld = []
    state.step += 1
    for tier in released:
        state.tiers.setdefault(tier, TierState()).notified_at_step = state.step
    route = routing.severities[_severity(state)]
    due = ack_due_at(now, route.ack_within)
    requests = _requests(
        state, released, NotificationKind.first_notice, routing, index, now, due=due
    )
    state.escalation_due = due if keeps_going(state, routing) else None
    review.due = ack_due_at(now, routing.review.within)
    audit = _audit(
        state,
        AuditEventType.escalated,
        f"released-{state.step}",
        now,
        {
            "step": state.step,
            "review": review.reason,
            "escalated_to": [t.value for t in released],
            "released": "not reviewed in time and immediate danger ticked",
            "recipients": _addresses(requests),
            "next_due": due.isoformat(),
        },
    )
    return requests, [audit]


def _refresh_due(state: EscalationState) -> None:
    """``next_due`` is the one time the worker watches: the earliest of the deadlines."""
    review_due = state.review.due if state.review is not None else None
    dues = [d for d in (state.escalation_due, review_due, state.digest_due) if d is not None]
    state.next_due = min(dues) if dues else None


def _addresses(requests: list[NotificationRequest]) -> list[dict[str, str]]:
    return [{"tier": r.recipient.tier.value, "email": r.recipient.email} for r in requests]


def _review_requests(
    state: EscalationState,
    targets: list[ReviewDesk | Tier],
    routing: Routing,
    index: DirectoryIndex,
    now: datetime,
    *,
    due: datetime,
    ref: str,
) -> list[NotificationRequest]:
    """``kind=review`` requests for the desk and/or tiers. Built by the router's core, so
    recipients and contact redaction are a notification's; the intake desk is asked as the
    city office, whose contact visibility it shares. Ids name the rung, never a step's mail."""
    if state.incident is None:
        return []
    incident = _as_current(state)
    out: list[NotificationRequest] = []
    seen: set[str] = set()
    for target in targets:
        tier = Tier.city_office if target is ReviewDesk.intake_desk else Tier(target)
        plan = plan_notifications(incident, routing, index, now, tiers=[tier], step=state.step)
        found = plan.notifications
        if target is ReviewDesk.intake_desk and found:
            office = index.directory.city_office
            found = [
                found[0].model_copy(
                    update={
                        "recipient": Recipient(
                            tier=Tier.city_office, name=f"{office.name} (intake desk)", email=e
                        )
                    }
                )
                for e in office.intake_desk_emails
            ]
        for req in found:
            address = req.recipient.email.lower()
            if address in seen:
                continue
            seen.add(address)
            out.append(
                req.model_copy(
                    update={
                        "kind": NotificationKind.review,
                        "ack_due_at": due,
                        "notification_id": event_id(
                            "notification", req.incident_id, address, "review", ref
                        ),
                    }
                )
            )
    return out


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

    def news(kind: NotificationKind) -> list[NotificationRequest]:
        """One short mail to everyone told: which organisation acknowledged or resolved."""
        return _requests(
            state,
            told,
            kind,
            routing,
            index,
            now,
            due=None,
            acted_by=action.tier,
            acted_by_name=action.actor,
            ref=action.action_id,
        )

    if action.kind is ActionKind.acknowledge:
        ts = state.tiers.setdefault(action.tier, TierState())
        if ts.acknowledged is None and state.resolved is None:
            ts.acknowledged = who
            audits.append(_audit(state, AuditEventType.acknowledged, action.action_id, now, detail))
            requests = news(NotificationKind.acknowledged)
    elif action.kind is ActionKind.resolve:
        if state.resolved is None:
            state.resolved = who
            state.resolved_tier = action.tier
            audits.append(_audit(state, AuditEventType.resolved, action.action_id, now, detail))
            requests = news(NotificationKind.resolved)
    elif action.kind is ActionKind.note:
        audits.append(_audit(state, AuditEventType.note_added, action.action_id, now, detail))
    elif action.kind is ActionKind.reclassify:
        requests, audit = _reclassify(state, action, detail, routing, index, now)
        audits.append(audit)
    if state.incident is not None and not keeps_going(state, routing):
        state.escalation_due = None
    if state.resolved is not None and state.review is not None:
        state.review.due = None
    _refresh_due(state)
    return Transition(state, requests, audits)


def _reclassify(
    state: EscalationState,
    action: IncidentAction,
    detail: dict[str, object],
    routing: Routing,
    index: DirectoryIndex,
    now: datetime,
) -> tuple[list[NotificationRequest], AuditEvent]:
    """A person set severity and category (the same values: a confirmation). A value left out
    stays as it is."""
    old_severity, old_category = state.severity, state.category
    new_severity: Severity | None = action.severity or old_severity
    new_category: Category | None = action.category or old_category
    detail = {
        **detail,
        "old_severity": old_severity.value if old_severity else None,
        "old_category": old_category.value if old_category else None,
        "new_severity": new_severity.value if new_severity else None,
        "new_category": new_category.value if new_category else None,
    }
    if state.incident is None or new_severity is None or old_severity is None:
        # Nothing to re-route yet; the incident's own decision will apply when it comes.
        detail["applied"] = False
        return [], _audit(state, AuditEventType.reclassified, action.action_id, now, detail)
    review = state.review or ReviewState(reason="unasked", opened_at=now)
    review.due = None
    review.reviewed_by = action.actor
    review.reviewed_at = action.at
    review.reviewed_tier = action.tier
    review.previous_severity = old_severity
    review.previous_category = old_category
    state.review = review
    state.severity = new_severity
    state.category = new_category
    raised = SEVERITY_RANK[new_severity] > SEVERITY_RANK[old_severity]
    # A person has now looked: nothing waits for review any more. Tiers held back from a
    # model-only raise are told if the reviewed severity names them (a confirmation does).
    held, state.withheld = state.withheld, []
    change = (
        "raised"
        if raised
        else "lowered"
        if SEVERITY_RANK[new_severity] < SEVERITY_RANK[old_severity]
        else "confirmed"
        if new_category == old_category
        else "recategorised"
    )
    detail.update({"applied": True, "change": change})
    requests: list[NotificationRequest] = []
    if (raised or held) and state.resolved is None:
        route = routing.severities[new_severity]
        fresh = [
            t
            for t in route.notify
            if t not in state.tiers or state.tiers[t].notified_at_step is None
        ]
        due = ack_due_at(now, route.ack_within)
        if fresh:
            state.step += 1
            for tier in fresh:
                state.tiers.setdefault(tier, TierState()).notified_at_step = state.step
            requests = _requests(
                state, fresh, NotificationKind.first_notice, routing, index, now, due=due
            )
        if raised or fresh:
            # The new severity's (or the newly told tiers') clock, ladder and reminders start now.
            state.reminders_at_top = 0
            state.escalation_due = due if keeps_going(state, routing) else None
        detail.update(
            {
                "step": state.step,
                "notified": [t.value for t in fresh],
                "recipients": _addresses(requests),
                "next_due": state.escalation_due.isoformat() if state.escalation_due else None,
            }
        )
    return requests, _audit(state, AuditEventType.reclassified, action.action_id, now, detail)
