"""The intake HTTP service.

A report is answered 202 only after the broker confirmed the write; when it cannot be stored the
answer is 503, so no reporter is ever told 'accepted' for a report we could lose.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError

from producers.intake.errors import field_reasons
from producers.intake.form import form_errors, pick_lang, render_accepted, render_form
from producers.intake.publisher import PublishError, ReportPublisher
from schemas.reports import ReportIn

MAX_BODY_BYTES = 64 * 1024


def _error(status: int, error: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, **extra}, status_code=status)


class IntakeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "escalate_intake_reports_total",
            "Report submissions by outcome (accepted, invalid, unauthorized, unavailable).",
            ["channel", "outcome"],
            registry=registry,
        )


async def _read_body(request: Request) -> bytes | None:
    """The body, or None when it exceeds the limit (checked while reading, not after)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class BodyError(ValueError):
    """A request body that is not one JSON document; the message is safe to show the client."""


def _parse_json(body: bytes) -> Any:
    """The JSON document in ``body``; anything that cannot be read as one is a BodyError.

    ``json.loads`` fails in more ways than JSONDecodeError: deep nesting raises RecursionError,
    an integer of more than 4,300 digits raises a plain ValueError (Python's int max-str-digits
    guard). Each must be the client's 400, never our 500. The reasons name the problem without
    quoting the body, which may hold a child's report.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(
            f"body is not valid UTF-8 JSON: invalid UTF-8 at byte {exc.start}"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BodyError(
            f"body is not valid UTF-8 JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise BodyError("body is not valid UTF-8 JSON: nested too deeply") from None
    except ValueError:
        # The only other ValueError json.loads raises is for numbers too long to convert.
        raise BodyError("body is not valid UTF-8 JSON: a number has too many digits") from None


def create_app(
    publisher: ReportPublisher,
    api_keys: dict[str, str],
    registry: CollectorRegistry,
    extra_ready: Callable[[], dict[str, bool]] | None = None,
) -> FastAPI:
    """``api_keys`` maps each accepted key to the client name recorded with its reports."""
    app = FastAPI(title="incident-escalation intake", version="1", docs_url="/docs")
    metrics = IntakeMetrics(registry)

    def client_for(key: str | None) -> str | None:
        if not key:
            return None
        found = None
        for candidate, name in api_keys.items():
            if secrets.compare_digest(candidate.encode(), key.encode()):
                found = name
        return found

    @app.post(
        "/v1/reports",
        status_code=202,
        responses={
            202: {"description": "Stored; keep the tracking code."},
            400: {"description": "Body is not JSON or not a JSON object."},
            401: {"description": "Missing or wrong X-API-Key."},
            413: {"description": "Body larger than 64 KiB."},
            422: {"description": "A field is missing or invalid; `fields` says which and why."},
            503: {"description": "The report could not be stored; nothing was accepted."},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ReportIn.model_json_schema()}},
            }
        },
    )
    async def submit_report(request: Request) -> Response:
        client = client_for(request.headers.get("x-api-key"))
        if client is None:
            metrics.requests.labels("unknown", "unauthorized").inc()
            return _error(401, "missing or unknown X-API-Key header")
        body = await _read_body(request)
        if body is None:
            metrics.requests.labels("unknown", "invalid").inc()
            return _error(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        try:
            data = _parse_json(body)
        except BodyError as exc:
            metrics.requests.labels("unknown", "invalid").inc()
            return _error(400, str(exc))
        if not isinstance(data, dict):
            metrics.requests.labels("unknown", "invalid").inc()
            return _error(400, "body must be a JSON object describing one report")
        try:
            report = ReportIn.model_validate(data)
        except ValidationError as exc:
            metrics.requests.labels("unknown", "invalid").inc()
            return _error(422, "the report is not valid", fields=field_reasons(exc))
        try:
            submitted = await run_in_threadpool(publisher.publish, report, client)
        except PublishError as exc:
            metrics.requests.labels(report.channel.value, "unavailable").inc()
            return _error(503, f"report not stored, please retry: {exc}", retry=True)
        metrics.requests.labels(report.channel.value, "accepted").inc()
        return JSONResponse(
            {"report_id": submitted.report_id, "tracking_code": submitted.tracking_code},
            status_code=202,
        )

    @app.get("/report", response_class=HTMLResponse)
    async def report_form(lang: str | None = None) -> HTMLResponse:
        return HTMLResponse(render_form(pick_lang(lang)))

    @app.post("/report", response_class=HTMLResponse)
    async def report_form_post(request: Request, lang: str | None = None) -> HTMLResponse:
        language = pick_lang(lang)
        body = await _read_body(request)
        if body is None:
            metrics.requests.labels("web_form", "invalid").inc()
            return HTMLResponse(render_form(language, errors=["too large"]), status_code=413)
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        contact = {
            key: form[f"contact_{key}"].strip()
            for key in ("name", "phone", "email")
            if form.get(f"contact_{key}", "").strip()
        }
        data: dict[str, Any] = {
            "channel": "web_form",
            "reporter_role": form.get("reporter_role") or "anonymous",
            "school_code": form.get("school_code", ""),
            "description": form.get("description", ""),
            "immediate_danger": bool(form.get("immediate_danger")),
        }
        if form.get("category_hint"):
            data["category_hint"] = form["category_hint"]
        if contact:
            data["contact"] = contact
        try:
            report = ReportIn.model_validate(data)
        except ValidationError as exc:
            metrics.requests.labels("web_form", "invalid").inc()
            return HTMLResponse(
                render_form(language, form, form_errors(exc, language)), status_code=422
            )
        try:
            submitted = await run_in_threadpool(publisher.publish, report, "web_form")
        except PublishError:
            metrics.requests.labels("web_form", "unavailable").inc()
            return HTMLResponse(render_form(language, form, unavailable=True), status_code=503)
        metrics.requests.labels("web_form", "accepted").inc()
        return HTMLResponse(
            render_accepted(language, submitted.tracking_code, report.immediate_danger),
            status_code=201,
        )

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
