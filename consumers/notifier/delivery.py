"""The notifier's pure core: what a finished delivery means for the pipeline.

``delivery_outcome(request, attempts, error, now)`` gives the DeliveryResult and the AuditEvent;
no network, no clock of its own, so it is tested like ``open_incident``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from consumers.notifier.render import fallback_message_id, message_id_for
from consumers.notifier.sender import SendError
from schemas.audit import AuditEvent, AuditEventType
from schemas.common import Severity, Tier
from schemas.ids import event_id
from schemas.notifications import DeliveryResult, DeliveryStatus, NotificationRequest


@dataclass(frozen=True)
class Outcome:
    result: DeliveryResult
    audit: AuditEvent

    @property
    def delivered(self) -> bool:
        return self.result.status is DeliveryStatus.delivered


#: the deliveries beside the mail
Channel = Literal["webhook", "telegram"]


def delivery_outcome(
    req: NotificationRequest, attempts: int, error: SendError | None, now: datetime
) -> Outcome:
    """The mail's result and audit record."""
    return _outcome(req, attempts, error, now, message_id_for(req), req.recipient.email)


def channel_outcome(
    req: NotificationRequest,
    channel: Channel,
    target: str,
    message_id: str,
    attempts: int,
    error: SendError | None,
    now: datetime,
) -> Outcome:
    """A delivery beside the mail (a webhook, a duty chat): the same record, naming the
    channel and the target instead of the address."""
    return _outcome(req, attempts, error, now, message_id, target, channel)


def _outcome(
    req: NotificationRequest,
    attempts: int,
    error: SendError | None,
    now: datetime,
    message_id: str,
    recipient: str,
    channel: Channel | None = None,
) -> Outcome:
    status = DeliveryStatus.delivered if error is None else DeliveryStatus.failed
    result = DeliveryResult(
        notification_id=req.notification_id,
        incident_id=req.incident_id,
        tier=req.recipient.tier,
        recipient_email=req.recipient.email,
        step=req.step,
        status=status,
        attempts=attempts,
        at=now,
        message_id=message_id,
        error=None if error is None else error.reason,
        **({"channel": channel, "target": recipient} if channel else {}),
    )
    event_type = AuditEventType.notified if error is None else AuditEventType.notify_failed
    # Only routing facts: never the description or the reporter's contact details.
    detail: dict[str, Any] = {"tier": req.recipient.tier.value}
    if channel:
        detail["channel"] = channel
    detail["recipient"] = recipient
    if channel:
        detail["organisation"] = req.recipient.name
    detail |= {
        "message_id": message_id,
        "step": req.step,
        "attempts": attempts,
        "notification_id": req.notification_id,
        "severity": req.severity.value,
    }
    if error is not None:
        detail["error"] = error.reason
        detail["error_kind"] = error.kind
    # The mail's event id stays as it always was; a channel's names the channel and target.
    parts = (channel, recipient) if channel else ()
    audit = AuditEvent(
        event_id=event_id(req.incident_id, event_type.value, req.notification_id, *parts),
        incident_id=req.incident_id,
        event=event_type,
        at=now,
        report_ids=req.report_ids,
        tracking_codes=req.tracking_codes,
        detail=detail,
    )
    return Outcome(result, audit)


def fallback_audit(
    incident_id: str, severity: Severity, recipients: list[str], delivered: bool, now: datetime
) -> AuditEvent:
    """The trail's record that the city intake desk was (or could not be) told of a failure."""
    event_type = AuditEventType.notified if delivered else AuditEventType.notify_failed
    return AuditEvent(
        event_id=event_id(incident_id, event_type.value, "fallback"),
        incident_id=incident_id,
        event=event_type,
        at=now,
        detail={
            "tier": Tier.city_office.value,
            "recipient": ", ".join(recipients),
            "message_id": fallback_message_id(incident_id),
            "fallback": True,
            "severity": severity.value,
        },
    )
