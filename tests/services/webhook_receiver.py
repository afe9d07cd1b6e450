"""A webhook receiver on a local port, as an authority's system would run one: it verifies
each call's Standard Webhooks signature with the shared secret, handles each ``webhook-id``
once, and can be told to fail (the first call of each event, or every call)."""

from __future__ import annotations

import base64
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from standardwebhooks import Webhook, WebhookVerificationError

from tests.services.http import serve

SECRET = "whsec_" + base64.b64encode(b"a test secret of thirty-two bytes!!").decode()


@dataclass
class Receiver:
    base: str = ""
    #: every call: (webhook-id, verified)
    calls: list[tuple[str, bool]] = field(default_factory=list)
    #: events handled, once per webhook-id
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail_first: bool = False
    status: int = 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"{self.base}/hooks/incidents"


@contextlib.contextmanager
def webhook_receiver(secret: str = SECRET) -> Iterator[Receiver]:
    receiver = Receiver()
    app = FastAPI()
    verifier = Webhook(secret)

    @app.post("/hooks/incidents")
    async def incidents(request: Request) -> JSONResponse:
        body = await request.body()
        msg_id = request.headers.get("webhook-id", "")
        try:
            payload = verifier.verify(body, dict(request.headers))
        except WebhookVerificationError:
            with receiver.lock:
                receiver.calls.append((msg_id, False))
            return JSONResponse({"error": "bad signature"}, status_code=401)
        with receiver.lock:
            first_call = all(seen != msg_id for seen, _ in receiver.calls)
            receiver.calls.append((msg_id, True))
            if receiver.status != 200:
                return JSONResponse({"error": "refused"}, status_code=receiver.status)
            if receiver.fail_first and first_call:
                return JSONResponse({"error": "busy"}, status_code=503)
            receiver.events.setdefault(msg_id, payload)  # idempotent by webhook-id
        return JSONResponse({"ok": True})

    with serve(app) as base:
        receiver.base = base
        yield receiver
