"""Acting on an incident: the personal link from the mail, and the authority API.

``GET /a/{token}`` shows the incident and never changes anything: mail scanners and link
previewers open links on their own, so only a POST from the page records an action. That POST
carries a signed per-page nonce bound to the token (a form on another site cannot get one) and
is refused when the browser says it came from another origin.

An action is answered only after the broker confirmed it, like a report. It does not need the
incident to be known here: an acknowledgement may overtake the routing of its incident, and the
escalator keeps it until the incident arrives.

A ``review``-purpose link (the triage mail) opens the same page with the triage form on top:
severity and category, posted like the other buttons, become a ``reclassify`` action. It may
still acknowledge. An ``act`` link never gets that form: asking for it, or posting a
reclassification with it, is refused as ``wrong_purpose``.

Refusals are counted by a fixed reason and logged without the token (it is a credential) and
without any note (it may repeat the child's report).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from fastapi import FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from prometheus_client import CollectorRegistry, Counter
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from producers.intake.action_page import HelpContact, render_action_page, render_refusal
from producers.intake.bodies import BodyError, json_error, parse_json, read_body
from producers.intake.errors import field_reasons
from producers.intake.form import pick_lang
from producers.intake.incidents import IncidentLookup
from producers.intake.keys import KeyRing
from producers.intake.openapi import REF
from producers.intake.publisher import ActionPublisher, PublishError
from schemas.actions import MAX_NOTE_CHARS, ActionKind, IncidentAction
from schemas.common import Category, Severity, Tier, clean_text
from schemas.escalation import Acknowledgement, EscalationState, IncidentStatus
from schemas.links import BadLink, LinkClaims, LinkPurpose, LinkSigner

log = logging.getLogger("escalate.intake.actions")

#: Every value the refusal counter's ``reason`` label can take.
REFUSAL_REASONS = ("invalid", "expired", "bad_nonce", "cross_origin", "wrong_purpose")
#: What the link page and the API can do; reclassify belongs to the review page.
ACCEPTED_KINDS = (ActionKind.acknowledge, ActionKind.resolve, ActionKind.note)
#: What a review link's page can do on top.
REVIEW_KINDS = (ActionKind.reclassify,)
VIAS = ("link", "api")
# 410 tells the recipient the link was good once; every other refusal is a plain 403.
REFUSAL_STATUS = {"expired": 410}

# At module level: with postponed annotations FastAPI resolves them in this module's globals.
AUTHORITY_KEY = Header(description="An authority key (ESCALATE_AUTHORITY_API_KEYS).")
NONCE_SALT = "escalate.action-page-nonce.v1"
NONCE_MAX_AGE_S = 2 * 3600
# Incident ids are "inc-" plus a uuid today; the pattern only keeps junk out of Kafka keys.
INCIDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# Pages that show an incident must not be cached, framed (a hidden frame could trick a click
# on 'acknowledge'), indexed, or leak their URL (the token) to another site as a Referer.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    # same-origin, not no-referrer: under no-referrer a browser sends 'Origin: null' with the
    # page's own POST, which the origin check must refuse.
    "Referrer-Policy": "same-origin",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


class ActionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.refused = Counter(
            "escalate_action_links_refused_total",
            "Action-link requests refused, by reason "
            "(invalid, expired, bad_nonce, cross_origin, wrong_purpose).",
            ["reason"],
            registry=registry,
        )
        self.accepted = Counter(
            "escalate_incident_actions_total",
            "Actions on incidents the broker confirmed, by kind and channel (link, api).",
            ["kind", "via"],
            registry=registry,
        )
        # Series that exist from the start, so a rate() or an alert sees 0 rather than nothing.
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)
        for kind in ACCEPTED_KINDS:
            for via in VIAS:
                self.accepted.labels(kind.value, via)
        for kind in REVIEW_KINDS:
            self.accepted.labels(kind.value, "link")


class PageNonces:
    """Signed nonces that tie a POST to a page this service rendered for the same token.

    A different salt from the links' makes them a different key, so a nonce can never pass as
    a link token or the reverse. Only a hash of the token is inside, so the nonce does not
    carry the credential a second time.
    """

    def __init__(
        self,
        secret_key: str,
        max_age_s: int = NONCE_MAX_AGE_S,
        previous_keys: Sequence[str] = (),
    ) -> None:
        self._serializer = URLSafeTimedSerializer([*previous_keys, secret_key], salt=NONCE_SALT)
        self._max_age_s = max_age_s

    @staticmethod
    def _bind(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8")).hexdigest()[:32]

    def issue(self, token: str) -> str:
        return self._serializer.dumps(self._bind(token))

    def check(self, token: str, nonce: str | None) -> bool:
        if not nonce:
            return False
        try:
            bound = self._serializer.loads(nonce, max_age=self._max_age_s)
        except (BadSignature, ValueError, TypeError):
            return False
        return isinstance(bound, str) and secrets.compare_digest(bound, self._bind(token))


@dataclass
class ActionDesk:
    """Everything the action routes need; ``create_app`` adds them only when given one."""

    secret_key: str
    link_max_age_s: int
    #: configured key (plain or ``sha256:…``) → the authority system and the tier it acts for
    authority_keys: Mapping[str, tuple[str, Tier]] | KeyRing[tuple[str, Tier]]
    publisher: ActionPublisher
    incidents: IncidentLookup
    school_names: Mapping[str, str] = field(default_factory=dict)
    help_contact: HelpContact | None = None
    #: The public base URL of the links; a POST whose Origin is this one is ours too (a proxy
    #: in front may present another Host to the app).
    public_url: str | None = None
    nonce_max_age_s: int = NONCE_MAX_AGE_S
    #: keys being rotated out: what they signed is still accepted until it expires
    previous_secret_keys: tuple[str, ...] = ()
    signer: LinkSigner = field(init=False)
    nonces: PageNonces = field(init=False)

    def __post_init__(self) -> None:
        self.signer = LinkSigner(self.secret_key, self.previous_secret_keys)
        self.nonces = PageNonces(self.secret_key, self.nonce_max_age_s, self.previous_secret_keys)


class ActionIn(BaseModel):
    """Body of the authority API's ack and resolve (optional)."""

    model_config = ConfigDict(extra="forbid")

    # Cleaned before it is measured, as IncidentAction does: a note typed in decomposed
    # Unicode is longer in code points than the NFC text that will be stored.
    note: Annotated[str, AfterValidator(clean_text), Field(max_length=MAX_NOTE_CHARS)] | None = None


class ActionAccepted(BaseModel):
    action_id: str


class ResolvedOut(Acknowledgement):
    tier: Tier | None = Field(default=None, description="The organisation that resolved it.")


class TierOut(BaseModel):
    notified_at_step: int | None
    acknowledged: Acknowledgement | None


class IncidentStatusOut(BaseModel):
    """An incident's standing for authority systems: no report text, no contact details."""

    incident_id: str
    status: IncidentStatus
    severity: Severity | None
    category: Category | None
    step: int
    next_due: datetime | None
    tiers: dict[Tier, TierOut]
    resolved: ResolvedOut | None

    @classmethod
    def of(cls, state: EscalationState) -> IncidentStatusOut:
        decision = state.incident.decision if state.incident else None
        resolved = None
        if state.resolved is not None:
            resolved = ResolvedOut(**state.resolved.model_dump(), tier=state.resolved_tier)
        return cls(
            incident_id=state.incident_id,
            status=state.status,
            severity=state.severity or (decision.severity if decision else None),
            category=state.category or (decision.category if decision else None),
            step=state.step,
            next_due=state.next_due,
            tiers={
                tier: TierOut(notified_at_step=t.notified_at_step, acknowledged=t.acknowledged)
                for tier, t in state.tiers.items()
            },
            resolved=resolved,
        )


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)


def _same_origin(request: Request, public_url: str | None) -> bool:
    """False only when the browser named an origin that is not this service.

    No Origin header is allowed: old browsers and some mail apps' views omit it on a same-site
    POST, and the nonce already proves the form came from our page. ``Origin: null`` (sandboxed
    or privacy-redirected contexts) is not ours.
    """
    origin = request.headers.get("origin")
    if origin is None:
        return True
    netloc = urlsplit(origin).netloc.lower()
    if not netloc:
        return False
    if netloc == request.headers.get("host", "").lower():
        return True
    return public_url is not None and netloc == urlsplit(public_url).netloc.lower()


def add_action_routes(app: FastAPI, desk: ActionDesk, metrics: ActionMetrics) -> None:
    def refuse(
        lang: str, reason: str, claims: LinkClaims | None = None, token: str = ""
    ) -> HTMLResponse:
        metrics.refused.labels(reason).inc()
        # The incident and tier only when the token was genuine; never the token itself.
        if claims is not None:
            log.warning(
                "action link refused (%s) for incident %s, %s",
                reason,
                claims.incident_id,
                claims.tier,
            )
        else:
            log.warning("action link refused (%s)", reason)
        retry = f"{token}?lang={lang}" if claims is not None else None
        return _html(
            render_refusal(lang, reason, retry_href=retry, help_contact=desk.help_contact),
            REFUSAL_STATUS.get(reason, 403),
        )

    def page(
        lang: str,
        token: str,
        claims: LinkClaims,
        status: int = 200,
        done: ActionKind | None = None,
        problem: str | None = None,
        note: str = "",
    ) -> HTMLResponse:
        state = desk.incidents.get(claims.incident_id)
        school_code = state.incident.school_code if state and state.incident else ""
        return _html(
            render_action_page(
                lang,
                token=token,
                nonce=desk.nonces.issue(token),
                claims=claims,
                state=state,
                school_name=desk.school_names.get(school_code),
                done=done,
                problem=problem,
                note=note,
            ),
            status,
        )

    page_responses: dict[int | str, dict[str, Any]] = {
        403: {
            "description": "The link is forged, altered or malformed (or, for a POST: the "
            "page nonce is missing or stale, or the form came from another origin). "
            "Nothing changed."
        },
        410: {"description": "The link has expired; use the latest mail. Nothing changed."},
    }

    @app.get(
        "/a/{token}",
        response_class=HTMLResponse,
        summary="The incident page a notification mail links to",
        description="Shows the incident and its status, with the actions; for a review link "
        "also the classifier's decision and the triage form (`view=review` asks for it and is "
        "refused for any other link). Changes nothing.",
        responses={200: {"description": "The incident page (HTML)."}, **page_responses},
    )
    async def action_page(
        token: str,
        lang: str | None = None,
        done: str | None = None,
        view: str | None = None,
    ) -> HTMLResponse:
        language = pick_lang(lang)
        try:
            claims = desk.signer.verify(token, desk.link_max_age_s)
        except BadLink as exc:
            return refuse(language, exc.reason)
        if view == "review" and claims.purpose is not LinkPurpose.review:
            return refuse(language, "wrong_purpose", claims, token)
        # Set by the redirect after a recorded action; anything else is ignored, not an error.
        shown = next((k for k in (*ACCEPTED_KINDS, *REVIEW_KINDS) if k.value == done), None)
        return page(language, token, claims, done=shown)

    @app.post(
        "/a/{token}",
        response_class=HTMLResponse,
        summary="Record an action from the incident page",
        responses={
            303: {"description": "Recorded; see the incident page with the confirmation."},
            **page_responses,
            413: {"description": "Form larger than 64 KiB."},
            422: {
                "description": "No known action, an empty note for 'note', a note too long, "
                "a severity or category not in the lists."
            },
            503: {"description": "Not recorded; try again."},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-www-form-urlencoded": {
                        "schema": {
                            "type": "object",
                            "required": ["action", "nonce"],
                            "properties": {
                                "action": {
                                    "enum": [k.value for k in (*ACCEPTED_KINDS, *REVIEW_KINDS)],
                                    "description": "reclassify only with a review link.",
                                },
                                "note": {"type": "string", "maxLength": MAX_NOTE_CHARS},
                                "severity": {"enum": [v.value for v in Severity]},
                                "category": {"enum": [v.value for v in Category]},
                                "nonce": {
                                    "type": "string",
                                    "description": "From the page's hidden field.",
                                },
                            },
                        }
                    }
                },
            }
        },
    )
    async def act_by_link(request: Request, token: str, lang: str | None = None) -> Response:
        language = pick_lang(lang)
        try:
            claims = desk.signer.verify(token, desk.link_max_age_s)
        except BadLink as exc:
            return refuse(language, exc.reason)
        if not _same_origin(request, desk.public_url):
            return refuse(language, "cross_origin", claims, token)
        body = await read_body(request)
        if body is None:
            return page(language, token, claims, 413, problem="err_too_large")
        form = {
            k: v[0]
            for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()
        }
        if not desk.nonces.check(token, form.get("nonce")):
            return refuse(language, "bad_nonce", claims, token)
        typed_note = form.get("note", "")
        if form.get("action") == ActionKind.reclassify.value:
            return await reclassify(language, token, claims, form)
        kind = next((k for k in ACCEPTED_KINDS if k.value == form.get("action")), None)
        if kind is None:
            return page(language, token, claims, 422, problem="err_action", note=typed_note)
        note = typed_note.strip() or None
        if kind is ActionKind.note and note is None:
            return page(language, token, claims, 422, problem="err_note_missing")
        try:
            action = _action(kind, claims.incident_id, claims.tier, claims.recipient, "link", note)
        except ValidationError:
            return page(language, token, claims, 422, problem="err_note_long", note=typed_note)
        try:
            await run_in_threadpool(desk.publisher.publish, action)
        except PublishError:
            return page(language, token, claims, 503, problem="unavailable", note=typed_note)
        metrics.accepted.labels(kind.value, "link").inc()
        # Post/redirect/get: a refresh of the confirmation shows it again, it does not re-send.
        # Relative to /a/, like the form's action.
        return RedirectResponse(
            f"{token}?lang={language}&done={kind.value}", status_code=303, headers=PAGE_HEADERS
        )

    async def reclassify(
        language: str, token: str, claims: LinkClaims, form: dict[str, str]
    ) -> Response:
        if claims.purpose is not LinkPurpose.review:
            return refuse(language, "wrong_purpose", claims, token)
        severity = next((v for v in Severity if v.value == form.get("severity")), None)
        category = next((v for v in Category if v.value == form.get("category")), None)
        if severity is None or category is None:
            return page(language, token, claims, 422, problem="err_review")
        action = _action(
            ActionKind.reclassify,
            claims.incident_id,
            claims.tier,
            claims.recipient,
            "link",
            None,
            severity=severity,
            category=category,
        )
        try:
            await run_in_threadpool(desk.publisher.publish, action)
        except PublishError:
            return page(language, token, claims, 503, problem="unavailable")
        metrics.accepted.labels(ActionKind.reclassify.value, "link").inc()
        log.info("review recorded for incident %s by %s", claims.incident_id, claims.tier)
        return RedirectResponse(
            f"{token}?lang={language}&done={ActionKind.reclassify.value}",
            status_code=303,
            headers=PAGE_HEADERS,
        )

    authorities = (
        desk.authority_keys
        if isinstance(desk.authority_keys, KeyRing)
        else KeyRing(desk.authority_keys)
    )

    def authority_for(key: str | None) -> tuple[str, Tier] | None:
        return authorities.find(key)

    @app.get(
        "/v1/incidents/{incident_id}",
        response_model=IncidentStatusOut,
        summary="Where an incident stands",
        responses={
            200: {"description": "The incident's status; no report text, no contact details."},
            401: {"description": "Missing or wrong authority X-API-Key."},
            404: {"description": "No such incident (yet)."},
            503: {"description": "The status view is still loading; retry shortly."},
        },
    )
    async def incident_status(
        incident_id: str, x_api_key: Annotated[str | None, AUTHORITY_KEY] = None
    ) -> Response:
        if authority_for(x_api_key) is None:
            return json_error(401, "missing or unknown authority X-API-Key header")
        state = desk.incidents.get(incident_id) if INCIDENT_ID.match(incident_id) else None
        if state is None:
            if not desk.incidents.ready():
                return json_error(503, "incident status is still loading", retry=True)
            return json_error(404, "no incident with this id is known (yet)")
        return JSONResponse(IncidentStatusOut.of(state).model_dump(mode="json"))

    async def act_by_api(
        request: Request, incident_id: str, key: str | None, kind: ActionKind
    ) -> Response:
        who = authority_for(key)
        if who is None:
            return json_error(401, "missing or unknown authority X-API-Key header")
        name, tier = who
        if not INCIDENT_ID.match(incident_id):
            return json_error(
                422,
                "the incident id is not valid",
                fields=[{"field": "incident_id", "reason": "letters, digits and . _ : - only"}],
            )
        body = await read_body(request)
        if body is None:
            return json_error(413, "request body larger than 64 KiB")
        note = None
        if body.strip():
            try:
                data = parse_json(body)
            except BodyError as exc:
                return json_error(400, str(exc))
            if not isinstance(data, dict):
                return json_error(400, 'body must be a JSON object such as {"note": "..."}')
            try:
                note = ActionIn.model_validate(data).note
            except ValidationError as exc:
                return json_error(422, "the body is not valid", fields=field_reasons(exc))
        try:
            action = _action(kind, incident_id, tier, name, "api", note)
        except ValidationError as exc:
            return json_error(422, "the body is not valid", fields=field_reasons(exc))
        try:
            await run_in_threadpool(desk.publisher.publish, action)
        except PublishError as exc:
            return json_error(503, f"action not stored, please retry: {exc}", retry=True)
        metrics.accepted.labels(kind.value, "api").inc()
        return JSONResponse({"action_id": action.action_id}, status_code=202)

    action_responses: dict[int | str, dict[str, Any]] = {
        202: {"model": ActionAccepted, "description": "Stored; the escalator applies it."},
        400: {"description": "Body is not JSON or not a JSON object."},
        401: {"description": "Missing or wrong authority X-API-Key."},
        413: {"description": "Body larger than 64 KiB."},
        422: {"description": "Unknown field, or note too long; `fields` says which and why."},
        503: {"description": "The action could not be stored; nothing was accepted."},
    }
    action_body = {
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": ActionIn.model_json_schema(ref_template=REF)}
            },
        }
    }

    @app.post(
        "/v1/incidents/{incident_id}/ack",
        status_code=202,
        summary="Acknowledge an incident for the key's organisation",
        description="Valid before the incident is known here: it is kept until it arrives.",
        responses=action_responses,
        openapi_extra=action_body,
    )
    async def acknowledge(
        request: Request, incident_id: str, x_api_key: Annotated[str | None, AUTHORITY_KEY] = None
    ) -> Response:
        return await act_by_api(request, incident_id, x_api_key, ActionKind.acknowledge)

    @app.post(
        "/v1/incidents/{incident_id}/resolve",
        status_code=202,
        summary="Mark an incident resolved: handled, no further action",
        responses=action_responses,
        openapi_extra=action_body,
    )
    async def resolve(
        request: Request, incident_id: str, x_api_key: Annotated[str | None, AUTHORITY_KEY] = None
    ) -> Response:
        return await act_by_api(request, incident_id, x_api_key, ActionKind.resolve)


def _action(
    kind: ActionKind,
    incident_id: str,
    tier: Tier,
    actor: str,
    via: Literal["link", "api"],
    note: str | None,
    *,
    severity: Severity | None = None,
    category: Category | None = None,
) -> IncidentAction:
    """The action as the escalator receives it; the model cleans and bounds the note."""
    return IncidentAction(
        severity=severity,
        category=category,
        action_id=str(uuid.uuid4()),
        incident_id=incident_id,
        kind=kind,
        tier=tier,
        actor=actor,
        via=via,
        at=datetime.now(UTC),
        note=note,
    )
