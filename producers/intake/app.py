"""The intake HTTP service.

A report is answered 202 only after the broker confirmed the write; when it cannot be stored the
answer is 503, so no reporter is ever told 'accepted' for a report we could lose.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, Field, ValidationError

from producers.bots.platform import ChatPlatform
from producers.bots.routes import BotMetrics, add_bot_routes
from producers.bots.store import ConversationStore
from producers.intake.actions import ActionDesk, ActionMetrics, add_action_routes
from producers.intake.bodies import (
    MAX_BODY_BYTES,
    BodyError,
    ErrorBody,
    json_error,
    parse_json,
    read_body,
)
from producers.intake.errors import field_reasons
from producers.intake.form import (
    FORM_BODY_SCHEMA,
    SCHOOL_SEARCH_JS,
    TEXT,
    checkbox,
    form_errors,
    pick_lang,
    render_accepted,
    render_form,
)
from producers.intake.form_guard import FIELD as FORM_TOKEN_FIELD
from producers.intake.form_guard import FORM_RATE, FormGuard, Refusal
from producers.intake.headers import SecurityHeaders
from producers.intake.idempotency import HEADER as IDEMPOTENCY_HEADER
from producers.intake.idempotency import (
    InFlight,
    InvalidKey,
    Outcome,
    claim_for,
    decide,
    parse_key,
)
from producers.intake.incidents import ClaimLookup, ReportLookup, normalise_tracking_code
from producers.intake.keys import KeyRing
from producers.intake.openapi import add_components, ref
from producers.intake.publisher import PublishError, ReportPublisher
from producers.intake.ratelimit import (
    CLIENT_RATE,
    FOLLOW_UP_RATE,
    LOOKUP_RATE,
    ClientLimiter,
    client_key,
)
from producers.intake.schools import UNKNOWN_SCHOOL, SchoolFinder, SchoolMatch, looks_like_code
from producers.intake.status import StatusDesk, StatusMetrics, add_status_routes
from schemas.reports import IdempotencyClaim, ReportIn, ReportSubmitted


class Filed(NamedTuple):
    """What a report was stored as (now, or by an earlier request with the same claim)."""

    report_id: str
    tracking_code: str


class ReportAccepted(BaseModel):
    """The answer to a stored report."""

    report_id: str
    tracking_code: str = Field(description="What the reporter quotes to follow the report.")


class IntakeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "escalate_intake_reports_total",
            "Report submissions by outcome (accepted, replayed, invalid, conflict, unauthorized,"
            " refused: cross-site or without a valid form token, limited: too many from one"
            " address, unavailable).",
            ["channel", "outcome"],
            registry=registry,
        )
        # Registered with the intake's own metrics so they exist (at zero) in every intake.
        self.actions = ActionMetrics(registry)
        self.status = StatusMetrics(registry)
        self.bots = BotMetrics(registry)


def create_app(
    publisher: ReportPublisher,
    api_keys: Mapping[str, str] | KeyRing[str],
    registry: CollectorRegistry,
    extra_ready: Callable[[], dict[str, bool]] | None = None,
    actions: ActionDesk | None = None,
    status_view: ReportLookup | None = None,
    lookup_rate: str = LOOKUP_RATE,
    follow_up_rate: str = FOLLOW_UP_RATE,
    rate_limit_storage: str = "memory://",
    schools: SchoolFinder | None = None,
    bots: Sequence[ChatPlatform] = (),
    bot_store: ConversationStore | None = None,
    public_url: str = "",
    form_guard: FormGuard | None = None,
    form_rate: str = FORM_RATE,
    client_rate: str = CLIENT_RATE,
) -> FastAPI:
    """``api_keys`` maps each accepted key (plain, or ``sha256:…``: ``keys.KeyRing``) to the
    client name recorded with its reports.

    With ``actions`` the app also serves the personal links of notification mails
    (``/a/{token}``) and the authority API (``/v1/incidents/…``); without, only intake.

    Reporters' status lookups (``/report/status``, ``/v1/reports/{code}``) read
    ``status_view``, or else the actions' incident view when it knows tracking codes (the
    ``IncidentView`` does); with neither they answer 503. ``lookup_rate`` and
    ``follow_up_rate`` are per-address limits in ``limits`` notation ("30/minute").

    With ``schools`` the web form takes a school's name as well as its code, and
    ``/v1/schools`` answers searches; without, the form takes codes only.

    Each of ``bots`` (chat platforms) gets its webhook, ``/v1/bots/{name}``; they need
    ``schools``, a status view and ``bot_store``, and link to status pages under
    ``public_url``.

    ``form_guard`` signs and checks the web form's tokens (give every intake process of a
    deployment one built from the same secret key); ``form_rate`` limits form posts per
    address, ``client_rate`` reports per API client (key).
    """
    app = FastAPI(title="incident-escalation intake", version="1", docs_url="/docs")
    app.add_middleware(SecurityHeaders, https=public_url.startswith("https://"))
    add_components(app, ReportIn)
    metrics = IntakeMetrics(registry)
    if actions is not None:
        add_action_routes(app, actions, metrics.actions)
    if status_view is None and actions is not None and isinstance(actions.incidents, ReportLookup):
        status_view = actions.incidents
    add_status_routes(
        app,
        StatusDesk(
            view=status_view,
            publisher=publisher,
            lookups=ClientLimiter("report-status", lookup_rate, rate_limit_storage),
            follow_ups=ClientLimiter("report-follow-up", follow_up_rate, rate_limit_storage),
        ),
        metrics.status,
        metrics.requests,
    )

    claims = status_view if isinstance(status_view, ClaimLookup) else None
    in_flight = InFlight()
    guard = form_guard or FormGuard()
    form_posts = ClientLimiter("report-form", form_rate, rate_limit_storage)
    client_posts = ClientLimiter("report-api", client_rate, rate_limit_storage)

    def noted(submitted: ReportSubmitted) -> None:
        # The reporter may look the code up at once, before the view reads it back.
        if status_view is not None:
            status_view.note_submitted(submitted)

    clients = api_keys if isinstance(api_keys, KeyRing) else KeyRing(api_keys)

    def client_for(key: str | None) -> str | None:
        return clients.find(key)

    if bots:
        if schools is None or status_view is None or bot_store is None:
            raise ValueError("chat bots need the school finder, a status view and a store")
        for platform in bots:
            add_bot_routes(
                app,
                platform,
                bot_store,
                publisher,
                schools,
                status_view,
                public_url,
                metrics.bots,
                noted,
            )

    @app.post(
        "/v1/reports",
        status_code=202,
        responses={
            202: {"model": ReportAccepted, "description": "Stored; keep the tracking code."},
            400: {
                "model": ErrorBody,
                "description": "Body is not JSON, or the Idempotency-Key header is unusable.",
            },
            401: {"model": ErrorBody, "description": "Missing or wrong X-API-Key."},
            409: {
                "model": ErrorBody,
                "description": "The Idempotency-Key was used for a different report.",
            },
            413: {"model": ErrorBody, "description": "Body larger than 64 KiB."},
            422: {
                "model": ErrorBody,
                "description": "A field is missing or invalid; `fields` says which and why.",
            },
            429: {
                "model": ErrorBody,
                "description": "Too many reports from this client; `Retry-After` says when.",
            },
            501: {
                "model": ErrorBody,
                "description": "Idempotency-Key sent to an intake that keeps none.",
            },
            503: {
                "model": ErrorBody,
                "description": "The report could not be stored; nothing was accepted.",
            },
        },
        openapi_extra={
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    "description": "Any unique string per report (a UUID will do). Sending "
                    "the same key and report again within 24 hours returns the first answer "
                    "(with the header `Idempotent-Replayed: true`) and stores nothing new.",
                },
                {
                    "name": "X-API-Key",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "The key this client was given (ESCALATE_API_KEYS).",
                },
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref(ReportIn)}},
            },
        },
    )
    async def submit_report(request: Request) -> Response:
        client = client_for(request.headers.get("x-api-key"))
        if client is None:
            metrics.requests.labels("unknown", "unauthorized").inc()
            return json_error(401, "missing or unknown X-API-Key header")
        wait_s = client_posts.hit(client)
        if wait_s is not None:
            # One client (an app, an import) cannot crowd out the others; it is told when
            # to come back, and a retry with its Idempotency-Key stays safe.
            metrics.requests.labels("unknown", "limited").inc()
            return json_error(
                429,
                f"too many reports from this client; retry in {wait_s} s",
                retry=True,
                headers={"Retry-After": str(wait_s)},
            )
        try:
            key = parse_key(request.headers.get(IDEMPOTENCY_HEADER))
        except InvalidKey as exc:
            metrics.requests.labels("unknown", "invalid").inc()
            return json_error(400, str(exc))
        body = await read_body(request)
        if body is None:
            metrics.requests.labels("unknown", "invalid").inc()
            return json_error(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        try:
            data = parse_json(body)
        except BodyError as exc:
            metrics.requests.labels("unknown", "invalid").inc()
            return json_error(400, str(exc))
        if not isinstance(data, dict):
            metrics.requests.labels("unknown", "invalid").inc()
            return json_error(400, "body must be a JSON object describing one report")
        try:
            report = ReportIn.model_validate(data)
        except ValidationError as exc:
            metrics.requests.labels("unknown", "invalid").inc()
            return json_error(422, "the report is not valid", fields=field_reasons(exc))
        if key is None:
            return await store(report, client, None)
        if claims is None:
            return json_error(501, f"this intake does not keep {IDEMPOTENCY_HEADER}s")
        if not claims.ready():
            # Until the reports already stored have been read back, a retry could not be
            # recognised; refusing is safe, the client retries with the same key.
            metrics.requests.labels(report.channel.value, "unavailable").inc()
            return json_error(
                503, f"cannot check the {IDEMPOTENCY_HEADER} yet, please retry", retry=True
            )
        claim = claim_for(client, key, report)
        try:
            outcome, filed = await file_claimed(report, client, claim)
        except PublishError as exc:
            metrics.requests.labels(report.channel.value, "unavailable").inc()
            return json_error(503, f"report not stored, please retry: {exc}", retry=True)
        if outcome is Outcome.conflict:
            metrics.requests.labels(report.channel.value, "conflict").inc()
            return json_error(
                409,
                f"this {IDEMPOTENCY_HEADER} was used for a different report within the "
                "last 24 hours; send a new key for a new report",
            )
        body = {"report_id": filed.report_id, "tracking_code": filed.tracking_code}
        if outcome is Outcome.replayed:
            metrics.requests.labels(report.channel.value, "replayed").inc()
            return JSONResponse(body, status_code=202, headers={"Idempotent-Replayed": "true"})
        metrics.requests.labels(report.channel.value, "accepted").inc()
        return JSONResponse(body, status_code=202)

    async def file_claimed(
        report: ReportIn, client: str, claim: IdempotencyClaim
    ) -> tuple[Outcome, Filed]:
        """Store the report unless its claim was filed already (then: what it was filed as).

        One request per claim at a time in this process, so concurrent retries find the
        first one's claim instead of racing it. Raises PublishError when not stored."""
        assert claims is not None

        async def once() -> tuple[Outcome, Filed]:
            found = claims.find_claim(claim.key_id, datetime.now(UTC))
            outcome = decide(claim, found)
            if found is not None:
                return outcome, Filed(found.report_id, found.tracking_code)
            submitted = await publisher.publish_async(report, client, claim=claim)
            noted(submitted)
            return outcome, Filed(submitted.report_id, submitted.tracking_code)

        return await in_flight.one_at_a_time(claim.key_id, once)

    async def store(report: ReportIn, client: str, claim: IdempotencyClaim | None) -> Response:
        try:
            submitted = await publisher.publish_async(report, client, claim=claim)
        except PublishError as exc:
            metrics.requests.labels(report.channel.value, "unavailable").inc()
            return json_error(503, f"report not stored, please retry: {exc}", retry=True)
        metrics.requests.labels(report.channel.value, "accepted").inc()
        noted(submitted)
        return JSONResponse(
            {"report_id": submitted.report_id, "tracking_code": submitted.tracking_code},
            status_code=202,
        )

    @app.get(
        "/v1/schools",
        responses={400: {"description": "The query is too long or the limit out of range."}},
    )
    async def find_schools(q: str = "", limit: int = 8) -> JSONResponse:
        """Schools whose name (with or without accents) or code matches ``q``, best first:
        what the form suggests and the bots offer. Names, codes and districts only."""
        if len(q) > 200:
            return json_error(400, "q: at most 200 characters")
        if not 1 <= limit <= 20:
            return json_error(400, "limit: from 1 to 20")
        found = schools.search(q, limit) if schools is not None else []
        return JSONResponse(
            {"schools": [{"code": m.code, "name": m.name, "district": m.district} for m in found]}
        )

    @app.get("/report/school-search.js", include_in_schema=False)
    async def school_search_js() -> Response:
        return Response(
            SCHOOL_SEARCH_JS,
            media_type="text/javascript; charset=utf-8",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    def form_page(language: str, status: int = 200, **parts: Any) -> HTMLResponse:
        """The form with a fresh token; never cached (the token is the page's own)."""
        page = render_form(language, token=guard.issue(), suggest=schools is not None, **parts)
        return HTMLResponse(page, status_code=status, headers={"Cache-Control": "no-store"})

    @app.get("/report", response_class=HTMLResponse)
    async def report_form(lang: str | None = None) -> HTMLResponse:
        return form_page(pick_lang(lang))

    def which_school(form: dict[str, str]) -> tuple[str, list[SchoolMatch], str | None]:
        """(code, candidates to choose from, the name as typed when no school matched it).

        A reporter who cannot find their school still gets their report in: it goes to the
        city office's intake desk (as any code outside the directory does) with the name as
        they typed it, rather than being refused."""
        typed = form.get("school_code", "").strip()
        picked = form.get("school_pick", "").strip()
        if schools is None:
            return typed, [], None
        if picked and schools.by_code(picked):
            return picked, [], None
        school, candidates = schools.resolve(typed)
        if school is not None:
            return school.code, [], None
        if candidates or not typed or looks_like_code(typed):
            return typed, candidates, None
        return UNKNOWN_SCHOOL, [], typed

    @app.post(
        "/report",
        response_class=HTMLResponse,
        status_code=303,
        responses={
            303: {"description": "Stored: on to the thank-you page with the tracking code."},
            403: {
                "description": "Sent from another site, or without a valid form token: "
                "the form again, filled in, to check and send. Nothing stored."
            },
            413: {"description": "Body too large: the form again."},
            422: {
                "description": "A field is missing or invalid: the form again, filled in, "
                "with the problems listed."
            },
            429: {
                "description": "Too many posts from this address: the form again, filled "
                "in; `Retry-After` says when to send it."
            },
            503: {
                "description": "Not stored (the broker is unavailable): the form again, "
                "filled in, to send again later."
            },
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/x-www-form-urlencoded": {"schema": FORM_BODY_SCHEMA}},
            }
        },
    )
    async def report_form_post(request: Request, lang: str | None = None) -> Response:
        language = pick_lang(lang)
        body = await read_body(request)
        if body is None:
            metrics.requests.labels("web_form", "invalid").inc()
            return form_page(language, 413, errors=[TEXT[language]["too_large"]])
        fields = parse_qs(body.decode("utf-8", "replace"))
        token = fields.pop(FORM_TOKEN_FIELD, [None])[0]
        form = {k: v[0] for k, v in fields.items()}
        verdict = guard.judge(request.headers, token)
        if verdict.nonce is None:
            metrics.requests.labels("web_form", "refused").inc()
            note = "cross_site" if verdict.refusal is Refusal.cross_site else "resend"
            return form_page(language, 403, values=form, notice=TEXT[language][note])
        wait_s = form_posts.hit(client_key(request.client.host if request.client else None))
        if wait_s is not None:
            metrics.requests.labels("web_form", "limited").inc()
            page = form_page(language, 429, values=form, notice=TEXT[language]["too_many"])
            page.headers["Retry-After"] = str(wait_s)
            return page
        code, candidates, typed = which_school(form)
        if candidates:
            metrics.requests.labels("web_form", "invalid").inc()
            problem = f"{TEXT[language]['field_school_code']}: {TEXT[language]['pick_error']}"
            return form_page(language, 422, values=form, errors=[problem], candidates=candidates)
        contact = {
            key: form[f"contact_{key}"].strip()
            for key in ("name", "phone", "email")
            if form.get(f"contact_{key}", "").strip()
        }
        description = form.get("description", "")
        if typed is not None and description.strip():
            description = f"{description}\n\n{TEXT[language]['unknown_school_note']}: {typed}"
        data: dict[str, Any] = {
            "channel": "web_form",
            "reporter_role": form.get("reporter_role") or "anonymous",
            "school_code": code,
            "description": description,
            "immediate_danger": checkbox(form.get("immediate_danger")),
        }
        if form.get("category_hint"):
            data["category_hint"] = form["category_hint"]
        if contact:
            data["contact"] = contact
        try:
            report = ReportIn.model_validate(data)
        except ValidationError as exc:
            metrics.requests.labels("web_form", "invalid").inc()
            return form_page(language, 422, values=form, errors=form_errors(exc, language))
        try:
            if claims is not None and claims.ready():
                # The token's nonce is this post's idempotency key: a double click or a
                # browser resending the post gets the first report back, not a second one.
                claim = claim_for("web_form", verdict.nonce, report)
                outcome, filed = await file_claimed(report, "web_form", claim)
            else:
                submitted = await publisher.publish_async(report, "web_form")
                noted(submitted)
                outcome, filed = Outcome.new, Filed(submitted.report_id, submitted.tracking_code)
        except PublishError:
            metrics.requests.labels("web_form", "unavailable").inc()
            return form_page(language, 503, values=form, unavailable=True)
        if outcome is Outcome.conflict:
            # The same form sent again with other text (back, edit, send): ask before filing
            # it as a second report.
            metrics.requests.labels("web_form", "conflict").inc()
            notice = TEXT[language]["sent_already"].format(code=filed.tracking_code)
            return form_page(language, 409, values=form, notice=notice)
        metrics.requests.labels(
            "web_form", "replayed" if outcome is Outcome.replayed else "accepted"
        ).inc()
        # Post/redirect/get: reloading the thank-you page does not send the report again.
        query = {"code": filed.tracking_code, "lang": language}
        if report.immediate_danger:
            query["danger"] = "1"
        return RedirectResponse(f"/report/accepted?{urlencode(query)}", status_code=303)

    @app.get(
        "/report/accepted",
        response_class=HTMLResponse,
        responses={404: {"description": "Not a tracking code: the empty form instead."}},
    )
    async def report_accepted(
        code: str = "", lang: str | None = None, danger: str | None = None
    ) -> HTMLResponse:
        normal = normalise_tracking_code(code)
        if normal is None:
            return form_page(pick_lang(lang), 404)
        return HTMLResponse(render_accepted(pick_lang(lang), normal, danger == "1"))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        checks = {"kafka_producer": await run_in_threadpool(publisher.ready)}
        if extra_ready:
            checks.update(extra_ready())
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks},
            status_code=200 if ok else 503,
        )

    return app
