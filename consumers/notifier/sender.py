"""Hand rendered messages to the SMTP relay, and say whether a failure is worth retrying.

``send`` opens a connection for one message (tests and one-off tools use it); ``SmtpPool``
keeps a few connections per relay open and reuses them: the notifier sends everything, the
intake desk's fallback mail included, through one.

A notification comes rendered to its bytes (``RenderedEmail``, consumers/notifier/render.py)
and goes to the relay with ``sendmail`` as it is, with the envelope and the MAIL options
``send_message`` would have used; flattening an EmailMessage again for each mail was most of
the notifier's work. An ``EmailMessage`` (the intake desk's fallback mail), or a rendered mail
the relay cannot take as it is (no 8BITMIME, or an address that needs SMTPUTF8), goes through
aiosmtplib's ``send_message`` as before.

The worker retries transient failures (the relay is down, slow, or answers 4xx) and gives up at
once on permanent ones (5xx, a refused recipient), so a bad address is reported quickly instead
of being hammered until the attempts run out.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime

import aiosmtplib

from consumers.notifier.render import RenderedEmail
from schemas.common import utcnow

#: what the notifier sends: a notification rendered to its bytes, or a plain EmailMessage
Mail = RenderedEmail | EmailMessage

MAX_ERROR_CHARS = 300


#: how the connection to the relay is protected: STARTTLS when the relay offers it (a relay on
#: the same host or network often does not), STARTTLS or nothing, or TLS from the first byte
#: (port 465, "SMTPS")
SECURITY_MODES = ("opportunistic", "starttls", "tls")


@dataclass(frozen=True)
class SmtpConfig:
    """Where mail goes, who it comes from, and how the notifier logs in to the relay."""

    host: str | None
    port: int = 25
    sender: str = "escalate@localhost"
    timeout_s: float = 15.0
    #: with a username, the notifier logs in (AUTH) after the greeting and any STARTTLS
    username: str | None = None
    password: str = field(default="", repr=False)
    security: str = "opportunistic"

    def __post_init__(self) -> None:
        if self.security not in SECURITY_MODES:
            raise ValueError(f"SMTP security {self.security!r}: one of {', '.join(SECURITY_MODES)}")

    def client(self) -> aiosmtplib.SMTP:
        """A new (unconnected) client for this relay; ``connect`` greets, secures, logs in."""
        assert self.host is not None
        return aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self.timeout_s,
            username=self.username or None,
            password=self.password if self.username else None,
            use_tls=self.security == "tls",
            # None: STARTTLS when offered; True: refuse to go on without it
            start_tls={"opportunistic": None, "starttls": True, "tls": False}[self.security],
        )


class SendError(Exception):
    """A delivery attempt failed. ``transient`` tells the caller whether trying again may help;
    ``unreachable`` that the relay itself could not be reached or said it cannot work now (421,
    451), which says nothing about this message: the notifier then waits for the relay instead
    of giving the message up."""

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


def _from_code(code: int, text: str, what: str, about_relay: bool = False) -> SendError:
    # 4xx: the server asks us to come back later (greylisting, mailbox busy); 5xx: it will not
    # take this message no matter how often we try.
    transient = 400 <= code < 500
    # 421 (service not available), or 451 (local error in processing) outside RCPT, is the
    # relay speaking of itself, not of one mailbox: like a relay that cannot be reached, it
    # pauses the lane (nothing is given up) instead of using up one message's attempts.
    # Measured in the fault suite: with 451 at DATA for 30 s, messages whose five attempts fell
    # inside the window were recorded as failed and never mailed. A 451 at RCPT is about that
    # recipient (greylisting) and stays the message's own.
    relay_wide = code == 421 or (about_relay and code == 451)
    # 530 (authentication required): the relay wants a login we did not give. That is its
    # configuration and ours, not this message: wait for an operator, give nothing up.
    if code == 530:
        transient = relay_wide = True
    return SendError(
        f"{what}: {code} {text}".strip(), transient=transient, code=code, unreachable=relay_wide
    )


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
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        # Wrong or expired credentials are the relay refusing us, not this message: pause the
        # lane and keep every message (an operator fixes the password), never give them up.
        return SendError(
            f"the relay refused our login (ESCALATE_SMTP_USERNAME/PASSWORD): {exc.code}",
            transient=True,
            code=exc.code,
            unreachable=True,
        )
    if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPConnectTimeoutError):
        return SendError(f"relay unreachable: {exc}", transient=True, unreachable=True)
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return _from_code(exc.code, exc.message, f"recipient {exc.recipient} refused")
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | asyncio.TimeoutError | TimeoutError):
        return SendError(f"timed out: {exc}", transient=True)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _from_code(exc.code, exc.message, type(exc).__name__, about_relay=True)
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


def _stamp(msg: Mail) -> None:
    """Date the mail at its first attempt; a retry keeps that date."""
    if isinstance(msg, RenderedEmail):
        msg.stamp(format_datetime(utcnow()))
    elif "Date" not in msg:
        msg["Date"] = format_datetime(utcnow())


async def _greet(client: aiosmtplib.SMTP) -> None:
    """EHLO (HELO if refused) unless done, as send_message does first: the relay's extensions
    decide how the mail goes."""
    if client.is_ehlo_or_helo_needed:
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            if not client.is_connected:
                raise
            await client.helo()


async def _transmit(client: aiosmtplib.SMTP, msg: Mail) -> None:
    """One mail transaction on a connected client."""
    if isinstance(msg, RenderedEmail):
        await _greet(client)
        if msg.sender is not None and msg.fits_wire and client.supports_extension("8bitmime"):
            # What send_message did with the flattened message: the same envelope, the same
            # MAIL option (it asks for BODY=8BITMIME whenever the relay offers it).
            await client.sendmail(
                msg.sender, msg.recipients, msg.wire(), mail_options=["BODY=8BITMIME"]
            )
            return
        msg = msg.message()
    await client.send_message(msg)


async def send(msg: Mail, smtp: SmtpConfig) -> None:
    """Send ``msg`` to ``smtp.host:smtp.port``; raise SendError on any failure.

    The connection is secured and logged in to as ``smtp.security`` and ``smtp.username`` say.
    """
    if not smtp.host:
        raise SendError("no SMTP host configured (ESCALATE_SMTP_HOST)", transient=False)
    _stamp(msg)
    try:
        if isinstance(msg, RenderedEmail):
            client = smtp.client()
            async with client:
                await _transmit(client, msg)
        else:
            async with smtp.client() as client:
                await client.send_message(msg)
    except Exception as exc:
        raise classify(exc) from exc


class _Relay:
    """The clients of one relay: idle ones (most recently used last) and a cap on how many."""

    def __init__(self, size: int) -> None:
        self.slots = asyncio.Semaphore(size)
        self.idle: list[tuple[aiosmtplib.SMTP, float]] = []


class SmtpPool:
    """A few SMTP connections per relay, each reused for many messages.

    Opening a connection (TCP, greeting, EHLO, maybe STARTTLS) costs more than sending a
    message, so a busy notifier keeps up to ``size`` clients per relay open. A client serves
    one message at a time; at most ``size`` messages per relay are in flight, the rest wait for
    a client. A client that failed in any way is closed, never reused: the next message gets a
    fresh connection. One that sat idle longer than ``idle_s`` is replaced too, because relays
    drop quiet connections and the first send on such a one would fail for nothing.

    Bound to the event loop that first uses it (asyncio primitives are), so one pool per loop.
    """

    def __init__(self, size: int = 8, *, idle_s: float = 30.0) -> None:
        self.size = max(1, size)
        self.idle_s = idle_s
        self.connections_opened = 0
        self._relays: dict[SmtpConfig, _Relay] = {}

    async def send(self, msg: Mail, smtp: SmtpConfig) -> None:
        """Like ``send``, on a pooled connection; raise SendError on any failure."""
        if not smtp.host:
            raise SendError("no SMTP host configured (ESCALATE_SMTP_HOST)", transient=False)
        _stamp(msg)
        relay = self._relays.setdefault(smtp, _Relay(self.size))
        async with relay.slots:
            client = None
            try:
                client = await self._client(relay, smtp)
                await _transmit(client, msg)
            except BaseException as exc:
                # Whatever went wrong (a refusal mid-transaction, a reset, a cancellation), the
                # session's state is unknown: drop it rather than reuse it.
                if client is not None:
                    client.close()
                if isinstance(exc, Exception):
                    raise classify(exc) from exc
                raise
            relay.idle.append((client, time.monotonic()))

    async def _client(self, relay: _Relay, smtp: SmtpConfig) -> aiosmtplib.SMTP:
        now = time.monotonic()
        while relay.idle:
            client, since = relay.idle.pop()
            if client.is_connected and now - since < self.idle_s:
                return client
            client.close()
        client = smtp.client()
        self.connections_opened += 1
        await client.connect()
        return client

    async def close(self) -> None:
        """Say QUIT on every idle connection (politely, but without waiting long)."""
        for relay in self._relays.values():
            while relay.idle:
                client, _ = relay.idle.pop()
                try:
                    await asyncio.wait_for(client.quit(), timeout=2)
                except Exception:
                    client.close()
