"""The pure classification stage: an accepted report in, a classified incident and its audit out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.audit import AuditEvent, AuditEventType
from schemas.ids import event_id, incident_id_for_report
from schemas.incidents import Decision, IncidentClassified
from schemas.reports import ReportSubmitted


@dataclass(frozen=True)
class ClassifiedReport:
    incident: IncidentClassified
    audit: AuditEvent


def open_incident(
    submitted: ReportSubmitted, decision: Decision, now: datetime
) -> ClassifiedReport:
    incident = IncidentClassified(
        incident_id=incident_id_for_report(submitted.report_id),
        report_ids=[submitted.report_id],
        tracking_codes=[submitted.tracking_code],
        school_code=submitted.report.school_code,
        received_at=submitted.received_at,
        classified_at=now,
        decision=decision,
        report=submitted.report,
        follow_up_of=submitted.follow_up_of,
    )
    audit = AuditEvent(
        event_id=event_id(
            incident.incident_id, AuditEventType.classified.value, submitted.report_id
        ),
        incident_id=incident.incident_id,
        event=AuditEventType.classified,
        at=now,
        report_ids=incident.report_ids,
        tracking_codes=incident.tracking_codes,
        detail={
            "severity": decision.severity.value,
            "category": decision.category.value,
            "reasons": decision.reasons,
            "needs_review": decision.needs_review,
            "rules_version": decision.rules_version,
            "model_version": decision.model_version,
            "second_opinion": decision.second_opinion.model_dump(mode="json")
            if decision.second_opinion
            else None,
        },
    )
    return ClassifiedReport(incident=incident, audit=audit)
