"""Chat bot conversations: where each reporter's chat stands, kept on a compacted topic."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ChatStep(StrEnum):
    school = "school"  # asked which school
    pick_school = "pick_school"  # offered several schools to choose from
    what = "what"  # asked what happened
    danger = "danger"  # asked whether a child is in danger now
    done = "done"  # report filed


class Conversation(BaseModel):
    """One chat's progress through the questions; survives restarts of the intake.

    ``description`` holds what the reporter wrote only until the report is filed, then it
    is dropped from the state: the report itself lives on ``reports.submitted``.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    platform: str
    chat: str = Field(description="The platform's chat id.")
    lang: Literal["vi", "en"] = "vi"
    step: ChatStep = ChatStep.school
    school_code: str | None = None
    school_typed: str | None = Field(
        default=None, description="The school as typed when no school of the directory fit."
    )
    school_choices: list[str] = Field(default_factory=list, description="Codes offered.")
    description: str | None = None
    danger: bool = False
    #: the first report of this conversation, once filed (a danger message files at once)
    report_id: str | None = None
    tracking_code: str | None = None
    #: the platform's id of the last message handled: a redelivered one is not handled twice
    last_update: int = -1
    updated_at: datetime

    @property
    def key(self) -> str:
        return conversation_key(self.platform, self.chat)


def conversation_key(platform: str, chat: str) -> str:
    return f"{platform}:{chat}"
