"""Reporters follow their report up by tracking code: its status, and more information.

No key is asked for: the tracking code is the secret (40 random bits). Guessing codes is made
slow by a per-address limit on every request that looks a code up (``ratelimit.py``), and
pointless by answering known and unknown codes with the same work: the index does the same
lookups for a miss as for a hit (``StatusIndex.find_code``), and nothing is logged per lookup.

What a code reveals is deliberately little: ``received``, ``under_review``, ``acknowledged`` or
``resolved`` and when that last changed. Never who was told, what others reported, the severity
or the incident id (someone may have seen the code over the reporter's shoulder).

Adding information publishes an ordinary ``ReportSubmitted`` through the report publisher, with
``follow_up_of`` naming the incident the code belongs to; the grouper attaches it there. The
web form has no nonce, and neither has this one: a forged cross-site post would need the code,
and whoever has the code can post directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ValidationError

from producers.intake.actions import PAGE_HEADERS
from producers.intake.bodies import MAX_BODY_BYTES, BodyError, json_error, parse_json, read_body
from producers.intake.errors import field_reasons
from producers.intake.form import checkbox, form_errors, pick_lang
from producers.intake.form_guard import same_origin
from producers.intake.incidents import CodeStatus, ReportLookup, ReportStatus
from producers.intake.openapi import REF
from producers.intake.publisher import PublishError, ReportPublisher
from producers.intake.ratelimit import ClientLimiter, client_key
from producers.intake.status_page import TEXT as STATUS_TEXT
from producers.intake.status_page import render_added, render_lookup, render_status
from schemas.reports import ReportIn

#: Every value of the lookup counter's ``outcome`` label.
LOOKUP_OUTCOMES = ("found", "unknown", "limited", "not_ready")
#: ``intake_client`` of additions sent through the JSON API (the page's are ``web_form``).
FOLLOW_UP_API_CLIENT = "status_api"
# Status answers change and are private to the code's holder: never cached anywhere.
JSON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
# How long a client should wait while the view is still reading the topics.
NOT_READY_RETRY_S = 5


# What a miss renders and drops; nothing about it reaches anyone.
DECOY = CodeStatus("ESC-0000-0000", ReportStatus.received, datetime(2000, 1, 1, tzinfo=UTC), "", "")


class StatusMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lookups = Counter(
            "escalate_report_status_lookups_total",
            "Tracking-code lookups (status page, status API, additions) by outcome "
            "(found, unknown, limited, not_ready).",
            ["outcome"],
            registry=registry,
        )
        for outcome in LOOKUP_OUTCOMES:
            self.lookups.labels(outcome)


class ReportStatusOut(BaseModel):
    """All a tracking code tells: nothing about who was told, other reports or severity."""

    tracking_code: str
    status: ReportStatus
    updated_at: datetime


class FollowUpAccepted(BaseModel):
    report_id: str
    tracking_code: str


@dataclass
class StatusDesk:
    """What the status routes need. ``view`` None: this intake cannot answer (503)."""

    view: ReportLookup | None
    publisher: ReportPublisher
    lookups: ClientLimiter
    follow_ups: ClientLimiter


def _follow_up_schema() -> dict[str, Any]:
    # Nested models are referred to as the document's components (``openapi.add_components``
    # registers ReportIn's), so that every reference resolves.
    schema = ReportIn.model_json_schema(ref_template=REF)
    schema.pop("$defs", None)
    schema["properties"] = {k: v for k, v in schema["properties"].items() if k != "school_code"}
    schema["required"] = [f for f in schema.get("required", []) if f != "school_code"]
    schema["description"] = "A report's fields without school_code, which the original gives."
    return schema


def _form_report(form: dict[str, str], school_code: str) -> dict[str, Any]:
    """The report the status page's form describes, shaped for ``ReportIn`` like the web
    form's: the same model then gives the same reasons."""
    data: dict[str, Any] = {
        "channel": "web_form",
        # The role was given with the first report; an addition does not ask again.
        "reporter_role": "anonymous",
        "school_code": school_code,
        "description": form.get("description", ""),
        "immediate_danger": checkbox(form.get("immediate_danger")),
    }
    contact = {
        key: form[f"contact_{key}"].strip()
        for key in ("name", "phone", "email")
        if form.get(f"contact_{key}", "").strip()
    }
    if contact:
        data["contact"] = contact
    if form.get("evidence_url", "").strip():
        data["evidence_urls"] = [form["evidence_url"].strip()]
    return data


def add_status_routes(
    app: FastAPI, desk: StatusDesk, metrics: StatusMetrics, reports: Counter
) -> None:
    """``reports`` is the intake's report counter: additions are reports too."""

    def address(request: Request) -> str:
        return client_key(request.client.host if request.client else None)

    def ready_view() -> ReportLookup | None:
        view = desk.view
        return view if view is not None and view.ready() else None

    def html(body: str, status: int, extra: dict[str, str] | None = None) -> HTMLResponse:
        return HTMLResponse(body, status_code=status, headers={**PAGE_HEADERS, **(extra or {})})

    def page_limited(language: str, typed: str, wait: int) -> HTMLResponse:
        metrics.lookups.labels("limited").inc()
        return html(
            render_lookup(language, typed, "limited", wait), 429, {"Retry-After": str(wait)}
        )

    def page_not_ready(language: str, typed: str) -> HTMLResponse:
        metrics.lookups.labels("not_ready").inc()
        return html(
            render_lookup(language, typed, "not_ready"),
            503,
            {"Retry-After": str(NOT_READY_RETRY_S)},
        )

    def too_many(wait: int) -> JSONResponse:
        metrics.lookups.labels("limited").inc()
        return JSONResponse(
            {
                "error": f"too many tracking-code requests from this address; "
                f"retry in {wait} seconds",
                "retry_after": wait,
            },
            status_code=429,
            headers={**JSON_HEADERS, "Retry-After": str(wait)},
        )

    def not_ready() -> JSONResponse:
        metrics.lookups.labels("not_ready").inc()
        return JSONResponse(
            {"error": "report status is still loading; retry shortly", "retry": True},
            status_code=503,
            headers={**JSON_HEADERS, "Retry-After": str(NOT_READY_RETRY_S)},
        )

    def unknown() -> JSONResponse:
        metrics.lookups.labels("unknown").inc()
        return JSONResponse(
            {"error": "no report with this tracking code is known; check the code"},
            status_code=404,
            headers=JSON_HEADERS,
        )

    @app.get(
        "/v1/reports/{tracking_code}",
        response_model=ReportStatusOut,
        summary="Where a report stands, by its tracking code (no key needed)",
        description="Upper or lower case, with or without dashes. Limited per client address.",
        responses={
            200: {"description": "The status; nothing about who was told or other reports."},
            404: {"description": "No report with this code is known."},
            429: {"description": "Too many requests from this address; see Retry-After."},
            503: {"description": "The status view is still loading; retry shortly."},
        },
    )
    async def report_status(request: Request, tracking_code: str) -> Response:
        wait = desk.lookups.hit(address(request))
        if wait is not None:
            return too_many(wait)
        view = ready_view()
        if view is None:
            return not_ready()
        found = view.find_code(tracking_code)
        if found is None:
            return unknown()
        metrics.lookups.labels("found").inc()
        return JSONResponse(
            {
                "tracking_code": found.tracking_code,
                "status": found.status.value,
                "updated_at": found.updated_at.isoformat(),
            },
            headers=JSON_HEADERS,
        )

    @app.post(
        "/v1/reports/{tracking_code}/updates",
        status_code=202,
        summary="Add information to the incident a tracking code belongs to",
        description="The body is a report without `school_code` (the original's is used). "
        "The answer's tracking code is the addition's own.",
        responses={
            202: {"model": FollowUpAccepted, "description": "Stored."},
            400: {"description": "Body is not JSON or not a JSON object."},
            404: {"description": "No report with this code is known."},
            413: {"description": "Body larger than 64 KiB."},
            422: {"description": "A field is missing or invalid; `fields` says which and why."},
            429: {"description": "Too many requests from this address; see Retry-After."},
            503: {"description": "Not stored (or the status view is loading); retry."},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _follow_up_schema()}},
            }
        },
    )
    async def add_by_api(request: Request, tracking_code: str) -> Response:
        wait = desk.follow_ups.hit(address(request))
        if wait is not None:
            return too_many(wait)
        body = await read_body(request)
        if body is None:
            reports.labels("unknown", "invalid").inc()
            return json_error(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        try:
            data = parse_json(body)
        except BodyError as exc:
            reports.labels("unknown", "invalid").inc()
            return json_error(400, str(exc))
        if not isinstance(data, dict):
            reports.labels("unknown", "invalid").inc()
            return json_error(400, "body must be a JSON object describing the addition")
        view = ready_view()
        if view is None:
            return not_ready()
        found = view.find_code(tracking_code)
        if found is None:
            return unknown()
        metrics.lookups.labels("found").inc()
        reasons = []
        if "school_code" in data:
            reasons.append(
                {
                    "field": "school_code",
                    "reason": "taken from the original report; remove it",
                }
            )
        try:
            report = ReportIn.model_validate({**data, "school_code": found.school_code})
        except ValidationError as exc:
            reasons.extend(field_reasons(exc))
        if reasons:
            reports.labels("unknown", "invalid").inc()
            return json_error(422, "the addition is not valid", fields=reasons)
        try:
            submitted = await desk.publisher.publish_async(
                report,
                FOLLOW_UP_API_CLIENT,
                follow_up_of=found.incident_id,
            )
        except PublishError as exc:
            reports.labels(report.channel.value, "unavailable").inc()
            return json_error(503, f"addition not stored, please retry: {exc}", retry=True)
        reports.labels(report.channel.value, "accepted").inc()
        view.note_submitted(submitted)
        return JSONResponse(
            {"report_id": submitted.report_id, "tracking_code": submitted.tracking_code},
            status_code=202,
            headers=JSON_HEADERS,
        )

    @app.get(
        "/report/status",
        response_class=HTMLResponse,
        summary="The reporter's status page (bilingual): type a code, see the status, add "
        "information",
        responses={
            404: {"description": "No report with this code: the lookup page again, to retype it."},
            429: {"description": "Too many lookups from this address; `Retry-After` says when."},
            503: {"description": "Reports are still being read back; `Retry-After` says when."},
        },
    )
    async def status_page(
        request: Request, code: str | None = None, lang: str | None = None
    ) -> HTMLResponse:
        language = pick_lang(lang)
        typed = (code or "").strip()[:64]
        if not typed:
            return html(render_lookup(language), 200)
        wait = desk.lookups.hit(address(request))
        if wait is not None:
            return page_limited(language, typed, wait)
        view = ready_view()
        if view is None:
            return page_not_ready(language, typed)
        found = view.find_code(typed)
        # The status page is rendered for a miss too (and dropped): it costs several times the
        # lookup page, and the time must not tell a guessed code that exists from one that
        # does not.
        shown = render_status(language, found or DECOY)
        if found is None:
            metrics.lookups.labels("unknown").inc()
            return html(render_lookup(language, typed, "unknown"), 404)
        metrics.lookups.labels("found").inc()
        return html(shown, 200)

    @app.post(
        "/report/status",
        response_class=HTMLResponse,
        summary="Add information to a report from its status page (a form post)",
        responses={
            403: {"description": "Sent from another site: nothing stored, the page again."},
            404: {"description": "No report with this code."},
            413: {"description": "Body too large."},
            422: {"description": "The addition is not valid: the page again with the problems."},
            429: {"description": "Too many additions from this address; see `Retry-After`."},
            503: {"description": "Not stored (the broker or the view is unavailable)."},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-www-form-urlencoded": {
                        "schema": {
                            "type": "object",
                            "required": ["code", "description"],
                            "properties": {
                                "code": {"type": "string"},
                                "description": {"type": "string"},
                                "immediate_danger": {"type": "string"},
                                "contact_name": {"type": "string"},
                                "contact_phone": {"type": "string"},
                                "contact_email": {"type": "string"},
                            },
                        }
                    }
                },
            }
        },
    )
    async def add_by_page(request: Request, lang: str | None = None) -> HTMLResponse:
        language = pick_lang(lang)
        if not same_origin(request.headers):
            # Another site cannot add to a report in a visitor's name, even knowing its code.
            reports.labels("web_form", "refused").inc()
            return html(render_lookup(language, "", "cross_site"), 403)
        wait = desk.follow_ups.hit(address(request))
        if wait is not None:
            return page_limited(language, "", wait)
        body = await read_body(request)
        if body is None:
            reports.labels("web_form", "invalid").inc()
            return html(render_lookup(language, "", "too_large"), 413)
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        typed = form.get("code", "").strip()[:64]
        view = ready_view()
        if view is None:
            return page_not_ready(language, typed)
        found = view.find_code(typed)
        if found is None:
            metrics.lookups.labels("unknown").inc()
            return html(render_lookup(language, typed, "unknown"), 404)
        metrics.lookups.labels("found").inc()
        return await publish_from_page(language, found, form)

    async def publish_from_page(
        language: str, found: CodeStatus, form: dict[str, str]
    ) -> HTMLResponse:
        try:
            report = ReportIn.model_validate(_form_report(form, found.school_code))
        except ValidationError as exc:
            reports.labels("web_form", "invalid").inc()
            labels = {"description": STATUS_TEXT[language]["description"]}
            problems = form_errors(exc, language, labels)
            return html(render_status(language, found, form, problems), 422)
        try:
            submitted = await desk.publisher.publish_async(
                report, "web_form", follow_up_of=found.incident_id
            )
        except PublishError:
            reports.labels("web_form", "unavailable").inc()
            return html(render_status(language, found, form, problem="unavailable"), 503)
        reports.labels("web_form", "accepted").inc()
        if desk.view is not None:
            desk.view.note_submitted(submitted)
        return html(
            render_added(
                language, found.tracking_code, submitted.tracking_code, report.immediate_danger
            ),
            201,
        )
