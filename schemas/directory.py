"""The directory of schools and recipients (operator-edited YAML, ESCALATE_DIRECTORY_FILE)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

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


class Office(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    emails: list[Email] = Field(min_length=1)


class CityOffice(Office):
    intake_desk_emails: list[Email] = Field(min_length=1)


class School(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")]
    name: str
    leadership_emails: list[Email] = Field(min_length=1)


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
