"""The notifier logs in to a relay that requires it (aiosmtpd with AUTH), and a refused login
pauses delivery instead of giving the message up."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from consumers.notifier.sender import SendError, SmtpConfig, SmtpPool, send
from escalate.components import smtp_config
from escalate.settings import Settings
from tests.services.http import free_port

# The test relay offers AUTH without TLS (it has no certificate); aiosmtpd warns about that.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


class Keep:
    def __init__(self) -> None:
        self.mails: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.mails.append((envelope.mail_from, list(envelope.rcpt_tos)))  # type: ignore[attr-defined]
        return "250 OK"


def check_login(
    server: object, session: object, envelope: object, mechanism: str, data: object
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        b"notifier",
        b"s3cret",
    )
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def relay() -> Iterator[tuple[Keep, int]]:
    keep = Keep()
    port = free_port()
    controller = Controller(
        keep,
        hostname="127.0.0.1",
        port=port,
        authenticator=check_login,
        auth_required=True,
        # aiosmtpd offers AUTH over TLS only by default; the test relay has no certificate.
        auth_require_tls=False,
    )
    controller.start()
    yield keep, port
    controller.stop()


def mail() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "escalate@example.org"
    msg["To"] = "school@example.org"
    msg["Subject"] = "test"
    msg.set_content("body")
    return msg


def test_logs_in_when_given_a_username(relay: tuple[Keep, int]) -> None:
    keep, port = relay
    smtp = SmtpConfig(host="127.0.0.1", port=port, username="notifier", password="s3cret")
    asyncio.run(send(mail(), smtp))

    async def pooled() -> None:
        pool = SmtpPool(size=2)
        await pool.send(mail(), smtp)
        await pool.send(mail(), smtp)
        await pool.close()

    asyncio.run(pooled())
    assert [to for _, to in keep.mails] == [["school@example.org"]] * 3


def test_without_login_the_relay_refuses_and_delivery_waits(relay: tuple[Keep, int]) -> None:
    keep, port = relay
    with pytest.raises(SendError) as refused:
        asyncio.run(send(mail(), SmtpConfig(host="127.0.0.1", port=port)))
    assert refused.value.code == 530  # authentication required
    assert refused.value.transient and refused.value.unreachable
    assert keep.mails == []


def test_a_refused_login_pauses_rather_than_gives_up(relay: tuple[Keep, int]) -> None:
    keep, port = relay
    wrong = SmtpConfig(host="127.0.0.1", port=port, username="notifier", password="old")
    with pytest.raises(SendError) as refused:
        asyncio.run(SmtpPool().send(mail(), wrong))
    assert refused.value.transient and refused.value.unreachable
    assert refused.value.code == 535
    assert "old" not in str(refused.value)
    assert keep.mails == []


def test_settings_map_onto_the_relay_config() -> None:
    settings = Settings(
        smtp_host="relay.example.org",
        smtp_port=465,
        smtp_username="notifier",
        smtp_password="s3cret",
        smtp_security="tls",
    )
    smtp = smtp_config(settings)
    client = smtp.client()
    assert (client.hostname, client.port, client.use_tls) == ("relay.example.org", 465, True)
    assert (client._login_username, client._login_password) == ("notifier", "s3cret")
    assert "s3cret" not in repr(smtp)
    with pytest.raises(ValueError, match="go together"):
        Settings(smtp_username="notifier")
    with pytest.raises(ValueError, match="one of"):
        SmtpConfig(host="relay.example.org", security="ssl")
