"""Security headers on every response of the intake, unless a route set its own.

Pages that show an incident or a report's status set stricter ones of their own
(``actions.PAGE_HEADERS``: no-store, noindex); this adds the baseline everywhere else, the web
form included: no framing (a hidden frame could trick a click on "Send"), no MIME sniffing, no
Referer to other sites, scripts and connections only to this origin. A plain ASGI middleware,
not Starlette's ``BaseHTTPMiddleware``: it only touches the response start, so the intake's
throughput does not pay for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: the pages use one inline stylesheet each and one script file (the school suggestions)
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
BASELINE = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    # same-origin, not no-referrer: under no-referrer a browser sends "Origin: null" with a
    # page's own post, which origin checks must then treat as unknown
    "referrer-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "content-security-policy": CONTENT_SECURITY_POLICY,
}
#: FastAPI's interactive docs load their scripts and styles from a CDN and inline; they get
#: the baseline without the content policy
DOCS_PATHS = ("/docs", "/redoc")
HSTS = "max-age=31536000"


class SecurityHeaders:
    def __init__(self, app: ASGIApp, https: bool = False) -> None:
        self.app = app
        self.extra = {"strict-transport-security": HSTS} if https else {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wanted = {**BASELINE, **self.extra}
        if str(scope.get("path", "")).startswith(DOCS_PATHS):
            del wanted["content-security-policy"]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.decode("latin-1").lower() for name, _ in headers}
                headers += [
                    (name.encode("latin-1"), value.encode("latin-1"))
                    for name, value in wanted.items()
                    if name not in present
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)
