"""Delivery by webhook, beside the mail: render, sign, send, and what the outcome means.

An organisation's systems (``webhooks`` in the directory) get each notice its mail recipients
get, as a JSON ``WebhookEvent`` signed per Standard Webhooks. The ``webhook-id`` derives from
the notification, so a retry or a replay after a crash carries the same id and the receiver
handles the event once. The retry, the dead letter and the audit record are the mail's: only
rendering and sending differ (``render_webhook``, ``WebhookSender``), and ``webhook_outcome``
is as pure as ``delivery_outcome``.

A receiver that cannot be reached is not the relay being down: the mail to everyone else must
not wait for one organisation's system, so its failure is recorded (audit, dead letter) rather
than holding the queue.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import httpx
from standardwebhooks import Webhook

from consumers.notifier.delivery import Outcome, channel_outcome
from consumers.notifier.sender import SendError
from schemas.directory import WebhookTarget
from schemas.ids import event_id
from schemas.notifications import NotificationRequest
from schemas.webhooks import IncidentNotice, WebhookEvent

#: answers that say "try again later"; other 4xx say the receiver will not take this event
_TRANSIENT = {408, 409, 425, 429}


def webhook_id(req: NotificationRequest, target: WebhookTarget) -> str:
    return "msg_" + event_id("webhook", req.notification_id, str(target.url))


def render_webhook(req: NotificationRequest, now: datetime) -> bytes:
    """The event body; the same facts, redacted the same way, as the organisation's mail."""
    event = WebhookEvent(
        type=f"incident.{req.kind.value}",
        timestamp=now,
        data=IncidentNotice(
            incident_id=req.incident_id,
            kind=req.kind,
            step=req.step,
            tier=req.recipient.tier,
            organisation=req.recipient.name,
            severity=req.severity,
            category=req.category,
            school_code=req.school_code,
            school_name=req.school_name,
            district_name=req.district_name,
            unknown_school=req.unknown_school,
            immediate_danger=req.immediate_danger,
            description=req.description,
            occurred_at=req.occurred_at,
            received_at=req.received_at,
            ack_due_at=req.ack_due_at,
            tracking_codes=req.tracking_codes,
            report_count=req.report_count,
            new_reports=req.new_reports,
            evidence_urls=req.evidence_urls,
            contact=req.contact,
            acted_by=req.acted_by,
        ),
    )
    return event.model_dump_json().encode("utf-8")


class WebhookSender:
    """Posts signed events; ``secrets`` maps each target's ``secret_env`` to its secret."""

    def __init__(self, secrets: Mapping[str, str], timeout_s: float = 10.0) -> None:
        self._secrets = dict(secrets)
        self._timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    async def send(self, target: WebhookTarget, msg_id: str, body: bytes) -> None:
        secret = self._secrets.get(target.secret_env)
        if not secret:
            raise SendError(
                f"the notifier has no secret {target.secret_env} for this webhook",
                transient=False,
            )
        try:
            signer = Webhook(secret)
        except Exception as exc:  # not base64, empty: no retry fixes it
            raise SendError(
                f"{target.secret_env} is not a usable webhook secret ({type(exc).__name__})",
                transient=False,
            ) from exc
        sent_at = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": signer.sign(msg_id, sent_at, body.decode("utf-8")),
        }
        if self._client is None:  # made on the event loop that uses it
            self._client = httpx.AsyncClient(timeout=self._timeout_s)
        try:
            resp = await self._client.post(str(target.url), content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise SendError(f"webhook timed out: {type(exc).__name__}", transient=True) from exc
        except httpx.HTTPError as exc:
            raise SendError(f"webhook unreachable: {type(exc).__name__}", transient=True) from exc
        if 200 <= resp.status_code < 300:
            return
        code = resp.status_code
        raise SendError(
            f"webhook answered {code}",
            transient=code >= 500 or code in _TRANSIENT,
            code=code,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def webhook_outcome(
    req: NotificationRequest,
    target: WebhookTarget,
    attempts: int,
    error: SendError | None,
    now: datetime,
) -> Outcome:
    return channel_outcome(
        req, "webhook", str(target.url), webhook_id(req, target), attempts, error, now
    )
