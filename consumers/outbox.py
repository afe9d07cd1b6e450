"""A local SMTP server that keeps every message as a file instead of delivering it.

``escalate up`` starts it when no real relay is configured (ESCALATE_SMTP_HOST unset), so a
developer sees exactly what recipients would get without any mail leaving the machine.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from escalate.settings import Settings

log = logging.getLogger("escalate.outbox")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME_CHARS = 80


def safe_name(message_id: str | None) -> str:
    """A file-name-safe form of the Message-ID (or 'no-message-id')."""
    cleaned = _UNSAFE.sub("_", (message_id or "").strip("<> \t")).strip("._")
    return cleaned[:MAX_NAME_CHARS] or "no-message-id"


def _print_line(line: str) -> None:
    print(f"outbox: {line}", flush=True)


class _OutboxHandler:
    """aiosmtpd handler: write the raw message to disk, then report one line about it."""

    def __init__(self, outbox_dir: Path, on_mail: Callable[[str], None] | None) -> None:
        self.outbox_dir = outbox_dir
        self.on_mail = on_mail
        self._lock = threading.Lock()
        self.saved: list[Path] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        data = raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "surrogateescape")
        headers = BytesParser(policy=policy.default).parsebytes(data, headersonly=True)
        path = self._save(data, headers.get("Message-ID"))
        recipients = ", ".join(envelope.rcpt_tos)
        subject = str(headers.get("Subject", "(no subject)"))
        log.info("outbox saved %s", path.name)
        if self.on_mail is not None:
            self.on_mail(f"to {recipients} — {subject}")
        return "250 Message accepted for delivery"

    def _save(self, data: bytes, message_id: str | None) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        with self._lock:
            self.outbox_dir.mkdir(parents=True, exist_ok=True)
            path = self.outbox_dir / f"{stamp}-{safe_name(message_id)}.eml"
            counter = 1
            while path.exists():
                counter += 1
                path = self.outbox_dir / f"{stamp}-{safe_name(message_id)}-{counter}.eml"
            # Write then rename, so a reader never sees half a message.
            tmp = path.with_suffix(".eml.part")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            self.saved.append(path)
        return path


class _AnyPortController(Controller):
    """Learns the real port when asked to bind port 0, before aiosmtpd connects to itself."""

    def _trigger_server(self) -> None:
        server = self.server
        if self.port == 0 and isinstance(server, asyncio.Server) and server.sockets:
            self.port = int(server.sockets[0].getsockname()[1])
        super()._trigger_server()  # type: ignore[no-untyped-call]


class OutboxServer:
    """SMTP capture on ``host:port`` (port 0 picks a free one; read ``.port`` after ``start``).

    Messages land in ``settings.outbox_dir`` as ``<UTC timestamp>-<message id>.eml``; ``on_mail``
    (default: print to stdout) gets one line per message, ``to <recipients> — <subject>``; the
    body, which holds the report text, is never printed.
    Use as a context manager or call ``start()`` / ``stop()``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        on_mail: Callable[[str], None] | None = _print_line,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.outbox_dir = settings.outbox_dir
        self._handler = _OutboxHandler(self.outbox_dir, on_mail)
        self._controller: _AnyPortController | None = None

    @property
    def port(self) -> int:
        if self._controller is None:
            raise RuntimeError("OutboxServer is not started")
        return int(self._controller.port)

    @property
    def saved(self) -> list[Path]:
        """Files written so far by this server, oldest first."""
        return list(self._handler.saved)

    def start(self) -> OutboxServer:
        if self._controller is not None:
            return self
        self.outbox_dir.mkdir(parents=True, exist_ok=True)
        # aiosmtpd logs every SMTP command at INFO; keep the console for our one-line summaries.
        mail_log = logging.getLogger("mail.log")
        if mail_log.level == logging.NOTSET:
            mail_log.setLevel(logging.WARNING)
        controller = _AnyPortController(
            self._handler, hostname=self.host, port=self._requested_port
        )
        controller.start()
        self._controller = controller
        log.info(
            "outbox SMTP listening on %s:%d, saving to %s", self.host, self.port, self.outbox_dir
        )
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> OutboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
