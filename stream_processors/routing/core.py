"""The pure routing core: a classified incident in, notification requests and an audit event out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas.audit import AuditEvent, AuditEventType
from schemas.common import Tier
from schemas.directory import Office, School
from schemas.escalation import LaterReport
from schemas.ids import event_id, notification_id
from schemas.incidents import IncidentClassified
from schemas.notifications import LaterReportNote, NotificationRequest, Recipient
from schemas.policy import Routing
from stream_processors.routing.directory_index import DirectoryIndex


@dataclass(frozen=True)
class RoutingPlan:
    notifications: list[NotificationRequest]
    audit: AuditEvent


def recipients_for(
    tier: Tier, school_code: str, index: DirectoryIndex
) -> tuple[list[Recipient], bool]:
    """Addresses of one tier for one school; the flag says the school was not in the directory.

    A tier that cannot be resolved because the school is unknown falls back to the city
    office's intake desk, so nothing is dropped for want of an address.
    """
    directory = index.directory
    place = index.find(school_code)
    if tier is Tier.city_office:
        office = directory.city_office
        return _people(tier, office), False
    if tier is Tier.police:
        found: list[Recipient] = []
        if place is not None:
            found += _people(tier, place.district.police)
        found += _people(tier, directory.police)
        return found, place is None
    if place is None:
        desk = directory.city_office
        # The desk's own systems are the city office's: they hear of it under that tier.
        return [
            Recipient(tier=Tier.city_office, name=f"{desk.name} (intake desk)", email=e)
            for e in desk.intake_desk_emails
        ], True
    if tier is Tier.school:
        return _people(tier, place.school), False
    return _people(tier, place.district.office), False


def _people(tier: Tier, org: Office | School) -> list[Recipient]:
    """One organisation's recipients; its webhooks and duty chats ride on the first, so that
    each of them hears of a step once however many addresses it has."""
    emails = org.leadership_emails if isinstance(org, School) else org.emails
    return [
        Recipient(
            tier=tier,
            name=org.name,
            email=e,
            webhooks=list(org.webhooks) if n == 0 else [],
            telegram_chat_ids=list(org.telegram_chat_ids) if n == 0 else [],
        )
        for n, e in enumerate(emails)
    ]


def ack_due_at(received_at: datetime, within: timedelta) -> datetime:
    """When the acknowledgement is due; the latest time ``datetime`` can hold if that overflows.

    ``received_at`` is stamped by intake, so a date a few hours short of the year 10000 only
    comes from a corrupt or hand-made message. It must still be routed: an OverflowError here
    would stop the route stage for every incident behind it.
    """
    try:
        return received_at + within
    except OverflowError:
        return datetime.max.replace(tzinfo=received_at.tzinfo)


def _dedupe(recipients: list[Recipient]) -> list[Recipient]:
    """One request per address; an address listed twice keeps the webhooks and chats of both."""
    unique: dict[str, Recipient] = {}
    for r in recipients:
        key = r.email.lower()
        kept = unique.get(key)
        if kept is None:
            unique[key] = r
        elif r.webhooks or r.telegram_chat_ids:
            known = {str(w.url) for w in kept.webhooks}
            extra = [w for w in r.webhooks if str(w.url) not in known]
            chats = kept.telegram_chat_ids + [
                c for c in r.telegram_chat_ids if c not in kept.telegram_chat_ids
            ]
            unique[key] = kept.model_copy(
                update={"webhooks": kept.webhooks + extra, "telegram_chat_ids": chats}
            )
    return list(unique.values())


def plan_notifications(
    incident: IncidentClassified,
    routing: Routing,
    index: DirectoryIndex,
    now: datetime,
    tiers: list[Tier] | None = None,
    step: int = 0,
    later: Sequence[LaterReport] = (),
) -> RoutingPlan:
    """Notification requests for ``tiers`` (default: the tiers told at once of a new incident,
    which are those its severity names less any a model-only raise holds back for review).

    ``later`` are reports that joined the incident after it was opened; each request shows
    them with the reporter's contact redacted by the same rule as the first report's."""
    decision = incident.decision
    route = routing.severities[decision.severity]
    wanted = tiers if tiers is not None else routing.first_tiers(decision)
    withheld = routing.withheld(decision) if tiers is None else []
    recipients: list[Recipient] = []
    unknown_school = index.find(incident.school_code) is None
    for tier in wanted:
        found, _ = recipients_for(tier, incident.school_code, index)
        recipients += found
    recipients = _dedupe(recipients)
    place = index.find(incident.school_code)
    report = incident.report
    ack_due = ack_due_at(incident.received_at, route.ack_within)
    requests = []
    if decision.severity not in routing.webhook_severities:
        recipients = [r.model_copy(update={"webhooks": []}) for r in recipients]
    if decision.severity not in routing.telegram_severities:
        recipients = [r.model_copy(update={"telegram_chat_ids": []}) for r in recipients]
    for recipient in recipients:
        may_see_contact = (
            recipient.tier in routing.contact_visible_to and recipient.tier is not Tier.school
        )
        notes = [
            LaterReportNote(
                tracking_code=item.tracking_code,
                received_at=item.received_at,
                severity=item.severity,
                category=item.category,
                description=item.report.description,
                immediate_danger=item.report.immediate_danger,
                contact=item.report.contact if may_see_contact else None,
            )
            for item in later
        ]
        requests.append(
            NotificationRequest(
                notification_id=notification_id(incident.incident_id, recipient.email, step),
                incident_id=incident.incident_id,
                step=step,
                recipient=recipient,
                severity=decision.severity,
                category=decision.category,
                school_code=incident.school_code,
                school_name=place.school.name
                if place
                else f"unknown school {incident.school_code}",
                district_name=place.district.name if place else None,
                unknown_school=unknown_school,
                description=report.description,
                occurred_at=report.occurred_at,
                received_at=incident.received_at,
                ack_due_at=ack_due,
                report_ids=incident.report_ids,
                tracking_codes=incident.tracking_codes,
                reasons=decision.reasons,
                needs_review=decision.needs_review,
                rules_version=decision.rules_version,
                immediate_danger=report.immediate_danger,
                evidence_urls=[str(u) for u in report.evidence_urls],
                contact=report.contact if may_see_contact else None,
                report_count=max(1, len(incident.report_ids)),
                later_reports=notes,
            )
        )
    audit = AuditEvent(
        event_id=event_id(incident.incident_id, AuditEventType.routed.value, str(step)),
        incident_id=incident.incident_id,
        event=AuditEventType.routed,
        at=now,
        report_ids=incident.report_ids,
        tracking_codes=incident.tracking_codes,
        detail={
            "step": step,
            "severity": decision.severity.value,
            "tiers": [t.value for t in wanted],
            "recipients": [{"tier": r.tier.value, "email": r.email} for r in recipients],
            "unknown_school": unknown_school,
            "ack_due_at": ack_due.isoformat(),
            "rules_version": decision.rules_version,
            "model_version": decision.model_version,
            "withheld_until_review": [t.value for t in withheld],
        },
    )
    return RoutingPlan(notifications=requests, audit=audit)
