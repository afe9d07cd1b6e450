"""How an SMTP answer is judged (consumers/notifier/sender.classify): give up, retry the
message, or wait for the relay."""

from __future__ import annotations

import aiosmtplib
import pytest

from consumers.notifier.sender import classify


@pytest.mark.parametrize(
    ("exc", "transient", "relay"),
    [
        (aiosmtplib.SMTPDataError(451, "4.3.0 local error, try later"), True, True),
        (aiosmtplib.SMTPResponseException(421, "4.3.2 shutting down"), True, True),
        (aiosmtplib.SMTPRecipientRefused(451, "4.7.1 greylisted", "a@x.example"), True, False),
        (aiosmtplib.SMTPRecipientRefused(452, "4.2.2 mailbox full", "a@x.example"), True, False),
        (aiosmtplib.SMTPDataError(554, "5.7.1 rejected"), False, False),
        (aiosmtplib.SMTPRecipientRefused(550, "5.1.1 no such user", "a@x.example"), False, False),
        (ConnectionRefusedError(111, "refused"), True, True),
    ],
    ids=["451-data", "421", "451-rcpt-greylist", "452-rcpt", "554-data", "550-rcpt", "refused"],
)
def test_the_relay_speaking_of_itself_pauses_the_lane_a_mailbox_does_not(
    exc: BaseException, transient: bool, relay: bool
) -> None:
    judged = classify(exc)
    assert (judged.transient, judged.unreachable) == (transient, relay)
