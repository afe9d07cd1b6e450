"""The directory of schools and recipients (operator-edited YAML, ESCALATE_DIRECTORY_FILE)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

# One plain ASCII address (RFC 5322 dot-atom characters; an internationalised domain in its
# xn-- form): nothing that could end a header line, start a second address, or need SMTPUTF8.
# The notifier relies on this when it puts the address into the To header.
Email = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
        r"@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$",
        max_length=254,
    ),
]


class WebhookTarget(BaseModel):
    """A system of the organisation that takes signed notifications (Standard Webhooks).

    The signing secret is not in the directory: ``secret_env`` names the environment variable
    of the notifier that holds it (``whsec_…``, base64), so the directory can be shared.
    """

    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl
    secret_env: Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9_]*$", max_length=100)]


class Office(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    emails: list[Email] = Field(min_length=1)
    webhooks: list[WebhookTarget] = Field(default_factory=list)
    #: duty officers' Telegram chats (or groups) that get a short alert through the bot
    telegram_chat_ids: list[int] = Field(default_factory=list)


class CityOffice(Office):
    intake_desk_emails: list[Email] = Field(min_length=1)


class School(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")]
    name: str
    leadership_emails: list[Email] = Field(min_length=1)
    webhooks: list[WebhookTarget] = Field(default_factory=list)
    telegram_chat_ids: list[int] = Field(default_factory=list)


class District(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str
    name: str
    office: Office
    police: Office
    schools: list[School] = Field(default_factory=list)


class Directory(BaseModel):
    model_config = ConfigDict(extra="allow")

    city_office: CityOffice
    police: Office
    districts: list[District] = Field(default_factory=list)
