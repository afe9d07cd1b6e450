"""Hand one rendered message to the SMTP relay, and say whether a failure is worth retrying.

The worker retries transient failures (the relay is down, slow, or answers 4xx) and gives up at
once on permanent ones (5xx, a refused recipient), so a bad address is reported quickly instead
of being hammered until the attempts run out.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime

import aiosmtplib

from schemas.common import utcnow

MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class SmtpConfig:
    """Where mail goes and who it comes from."""

    host: str | None
    port: int = 25
    sender: str = "escalate@localhost"
    timeout_s: float = 15.0


class SendError(Exception):
    """A delivery attempt failed. ``transient`` tells the caller whether trying again may help;
    ``unreachable`` that the relay itself could not be reached, which says nothing about this
    message: the notifier then waits for the relay instead of giving the message up."""

    def __init__(
        self, reason: str, *, transient: bool, code: int | None = None, unreachable: bool = False
    ) -> None:
        super().__init__(reason[:MAX_ERROR_CHARS])
        self.reason = reason[:MAX_ERROR_CHARS]
        self.transient = transient
        self.code = code
        self.unreachable = unreachable

    @property
    def kind(self) -> str:
        """A fixed vocabulary for logs and metric labels."""
        return "transient" if self.transient else "permanent"


def _from_code(code: int, text: str, what: str) -> SendError:
    # 4xx: the server asks us to come back later (greylisting, mailbox busy); 5xx: it will not
    # take this message no matter how often we try.
    transient = 400 <= code < 500
    return SendError(f"{what}: {code} {text}".strip(), transient=transient, code=code)


def classify(exc: BaseException) -> SendError:
    """Map an aiosmtplib or socket error to a SendError with the transient/permanent verdict."""
    if isinstance(exc, SendError):
        return exc
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refusals = exc.recipients
        codes = [r.code for r in refusals]
        # Any 5xx refusal is final for this single-recipient message; all-4xx may clear up.
        transient = bool(codes) and all(400 <= c < 500 for c in codes)
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in refusals)
        return SendError(
            f"recipient refused: {detail}",
            transient=transient,
            code=max(codes) if codes else None,
        )
    if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPConnectTimeoutError):
        return SendError(f"relay unreachable: {exc}", transient=True, unreachable=True)
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return _from_code(exc.code, exc.message, f"recipient {exc.recipient} refused")
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | asyncio.TimeoutError | TimeoutError):
        return SendError(f"timed out: {exc}", transient=True)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _from_code(exc.code, exc.message, type(exc).__name__)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return SendError(f"not supported by the relay: {exc}", transient=False)
    if isinstance(exc, ConnectionRefusedError):
        return SendError(f"relay unreachable: {exc}", transient=True, unreachable=True)
    if isinstance(exc, aiosmtplib.SMTPException | OSError):
        # Connection reset, server disconnected, DNS hiccup: the relay may come back.
        return SendError(f"{type(exc).__name__}: {exc}", transient=True)
    if isinstance(exc, ValueError):
        # aiosmtplib rejects addresses it cannot put on the wire; retrying will not fix them.
        return SendError(f"unsendable message: {exc}", transient=False)
    return SendError(f"{type(exc).__name__}: {exc}", transient=True)


async def send(msg: EmailMessage, smtp: SmtpConfig) -> None:
    """Send ``msg`` to ``smtp.host:smtp.port``; raise SendError on any failure.

    STARTTLS is used when the relay offers it (aiosmtplib's default), plain SMTP otherwise.
    """
    if not smtp.host:
        raise SendError("no SMTP host configured (ESCALATE_SMTP_HOST)", transient=False)
    if "Date" not in msg:
        msg["Date"] = format_datetime(utcnow())
    try:
        await aiosmtplib.send(
            msg,
            hostname=smtp.host,
            port=smtp.port,
            timeout=smtp.timeout_s,
        )
    except Exception as exc:
        raise classify(exc) from exc
