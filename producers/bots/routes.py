"""The webhook every chat platform calls: ``POST /v1/bots/{platform}``.

For each message: the conversation moves on (``advance``), a report it completes is stored
on ``reports.submitted`` exactly as any other channel's (acks=all, with an idempotency claim
made from the platform's message id, so a redelivered message files nothing twice), the
chat's new state is stored, and only then are the replies sent. The one exception is a
message saying a child is in danger: the emergency numbers go out first, before anything is
stored, because they depend on nothing.

The platform is answered 200 once all that is done; 503 when the report or the state could
not be stored, so that the platform delivers the message again (Telegram retries).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter

from consumers.dead_letters import describe_failure
from producers.bots.conversation import TEXT, Incoming, Turn, advance
from producers.bots.platform import BadPayload, ChatPlatform, SendFailed
from producers.bots.store import ConversationStore
from producers.intake.bodies import ErrorBody, json_error, read_body
from producers.intake.idempotency import Outcome, claim_for, decide
from producers.intake.incidents import ClaimLookup, ReportLookup
from producers.intake.publisher import PublishError, ReportPublisher
from producers.intake.schools import SchoolFinder
from schemas.ids import incident_id_for_report
from schemas.reports import ReportSubmitted

log = logging.getLogger("escalate.bots")


class BotMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.updates = Counter(
            "escalate_bot_updates_total",
            "Webhook calls from chat platforms by outcome (handled, unauthorized, invalid, "
            "unavailable, failed).",
            ["platform", "outcome"],
            registry=registry,
        )
        self.replies_failed = Counter(
            "escalate_bot_replies_failed_total",
            "Replies a chat platform did not take (the report, if any, was stored).",
            ["platform"],
            registry=registry,
        )


def add_bot_routes(
    app: FastAPI,
    platform: ChatPlatform,
    store: ConversationStore,
    publisher: ReportPublisher,
    schools: SchoolFinder,
    status_view: ReportLookup,
    public_url: str,
    metrics: BotMetrics,
    noted: Callable[[ReportSubmitted], None],
) -> None:
    name = platform.name

    def status_link(code: str, lang: str) -> str:
        return f"{public_url}/report/status?{urlencode({'code': code, 'lang': lang})}"

    async def reply(chat: str, text: str) -> None:
        try:
            await platform.send(chat, text)
        except SendFailed as exc:
            metrics.replies_failed.labels(name).inc()
            log.warning("%s reply not sent: %s", name, exc)

    async def store_report(message: Incoming, turn: Turn) -> tuple[str, str]:
        """(report id, tracking code) of this turn's report, stored now or found stored by an
        earlier delivery of the same message.

        The earlier delivery's ids matter: when its report was stored but the chat's state was
        not (503, and the platform delivers again), the reporter must still be told the code,
        and later messages must follow up that report rather than start another."""
        assert turn.report is not None
        claim = claim_for(name, f"{message.chat}:{message.update_id}", turn.report)
        if isinstance(status_view, ClaimLookup):
            found = status_view.find_claim(claim.key_id, datetime.now(UTC))
            if decide(claim, found) is Outcome.replayed and found is not None:
                return found.report_id, found.tracking_code
        follow_up_of = None
        state = turn.state
        if turn.follow_up and state.tracking_code:
            known = status_view.find_code(state.tracking_code)
            follow_up_of = (
                known.incident_id
                if known is not None
                else incident_id_for_report(state.report_id or "")
            )
        submitted = await publisher.publish_async(
            turn.report, name, follow_up_of=follow_up_of, claim=claim
        )
        noted(submitted)
        return submitted.report_id, submitted.tracking_code

    async def handle(message: Incoming) -> None:
        state = store.get(f"{message.platform}:{message.chat}")
        turn = advance(state, message, schools, datetime.now(UTC))
        if state is not None and turn.state is state:
            return  # a message already handled, delivered again
        replies = list(turn.replies)
        if turn.emergency:
            await reply(message.chat, replies.pop(0))
        new_state = turn.state
        if turn.report is not None:
            report_id, tracking_code = await store_report(message, turn)
            if new_state.report_id is None:
                new_state = new_state.model_copy(
                    update={"report_id": report_id, "tracking_code": tracking_code}
                )
        await store.put(new_state)
        code = new_state.tracking_code or ""
        link = status_link(code, new_state.lang) if code else ""
        for text in replies:
            await reply(message.chat, text.replace("{code}", code).replace("{link}", link))

    challenge = getattr(platform, "subscription_challenge", None)
    if challenge is not None:

        @app.get(
            f"/v1/bots/{name}",
            tags=["chat bots"],
            responses={
                200: {"description": "The challenge, echoed", "content": {"text/plain": {}}},
                403: {"model": ErrorBody, "description": "Wrong verify token."},
            },
        )
        async def subscribe(request: Request) -> Response:
            """The platform checking the webhook when it is registered (Messenger)."""
            answer = challenge(request.query_params)
            if answer is None:
                metrics.updates.labels(name, "unauthorized").inc()
                return json_error(403, "wrong verify token")
            return PlainTextResponse(answer)

    @app.post(
        f"/v1/bots/{name}",
        tags=["chat bots"],
        summary=f"{name}: webhook for the platform's updates",
        responses={
            200: {"description": "Handled (or a fault of ours the reporter was told about)."},
            400: {"model": ErrorBody, "description": "Not an update this platform sends."},
            401: {"model": ErrorBody, "description": "Not signed as the platform signs."},
            413: {"model": ErrorBody, "description": "Body too large."},
            503: {"model": ErrorBody, "description": "Not stored; deliver the update again."},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    )
    async def webhook(request: Request) -> Response:
        body = await read_body(request)
        if body is None:
            metrics.updates.labels(name, "invalid").inc()
            return json_error(413, "body too large")
        if not platform.verify(request.headers, body):
            metrics.updates.labels(name, "unauthorized").inc()
            return json_error(401, f"not signed as {name} signs its webhook calls")
        try:
            messages = platform.incoming(body)
        except BadPayload as exc:
            metrics.updates.labels(name, "invalid").inc()
            return json_error(400, str(exc))
        if not store.caught_up():
            metrics.updates.labels(name, "unavailable").inc()
            return json_error(503, "conversations are still being read back; retry", retry=True)
        for message in messages:
            state = store.get(f"{message.platform}:{message.chat}")
            lang = state.lang if state is not None else "vi"
            try:
                await handle(message)
            except PublishError:
                metrics.updates.labels(name, "unavailable").inc()
                await reply(message.chat, TEXT[lang]["not_stored"])
                return json_error(503, "not stored; deliver the update again", retry=True)
            except Exception as exc:
                # A fault of ours that a redelivery would only repeat: answered 200 so the
                # platform stops, but never silently: counted, logged (without the message),
                # and the reporter told to send it again or call 111.
                metrics.updates.labels(name, "failed").inc()
                log.error(
                    "%s message %d of a chat not handled: %s",
                    name,
                    message.update_id,
                    describe_failure(exc),
                )
                await reply(message.chat, TEXT[lang]["not_stored"])
        metrics.updates.labels(name, "handled").inc()
        return JSONResponse({})
