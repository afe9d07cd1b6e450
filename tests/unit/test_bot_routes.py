"""The bot webhook's bookkeeping around a delivery that half failed: the report stored, the
chat's state not (503), and the platform delivering the same message again."""

from __future__ import annotations

import json

from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from producers.bots.conversation import Incoming
from producers.bots.routes import BotMetrics, add_bot_routes
from producers.intake.publisher import PublishError
from producers.intake.schools import SchoolFinder
from schemas.bots import Conversation
from tests.fakes import FakeReportPublisher, FakeReportView
from tests.unit.test_schools import CITY


class StateStore:
    """Conversations in memory; ``fail_next`` refuses one write as a broker that is away."""

    def __init__(self) -> None:
        self.states: dict[str, Conversation] = {}
        self.fail_next = False

    def get(self, key: str) -> Conversation | None:
        return self.states.get(key)

    async def put(self, state: Conversation) -> None:
        if self.fail_next:
            self.fail_next = False
            raise PublishError("the broker did not confirm the write")
        self.states[state.key] = state

    def caught_up(self) -> bool:
        return True


class Chat:
    """A platform whose webhook body is {"id": update id, "text": ...} from one chat."""

    name = "telegram"

    def __init__(self) -> None:
        self.sent: list[str] = []

    def verify(self, headers: object, body: bytes) -> bool:
        return True

    def incoming(self, body: bytes) -> list[Incoming]:
        data = json.loads(body)
        return [Incoming("telegram", "42", data["id"], data["text"], "en")]

    async def send(self, chat: str, text: str) -> None:
        self.sent.append(text)

    async def aclose(self) -> None:
        pass


def test_a_redelivered_message_whose_report_was_stored_gets_that_reports_code() -> None:
    view, store, chat, publisher = FakeReportView(), StateStore(), Chat(), FakeReportPublisher()
    app = FastAPI()
    add_bot_routes(
        app,
        chat,  # type: ignore[arg-type]
        store,  # type: ignore[arg-type]
        publisher,  # type: ignore[arg-type]
        SchoolFinder(CITY),
        view,  # type: ignore[arg-type]
        "https://escalate.example.org",
        BotMetrics(CollectorRegistry()),
        view.note_submitted,  # type: ignore[arg-type]
    )
    client = TestClient(app)

    def say(update_id: int, text: str) -> int:
        body = json.dumps({"id": update_id, "text": text})
        return client.post("/v1/bots/telegram", content=body).status_code

    for update_id, text in enumerate(["/start", "BD-2", "A stranger joined the online class"], 1):
        assert say(update_id, text) == 200
    store.fail_next = True
    assert say(4, "no") == 503  # the report is stored, the chat's state is not
    assert len(publisher.published) == 1
    assert say(4, "no") == 200  # the platform delivers the message again

    stored = publisher.published[0]
    assert len(publisher.published) == 1  # nothing filed twice
    assert stored.tracking_code in chat.sent[-1]  # type: ignore[attr-defined]
    assert f"code={stored.tracking_code}" in chat.sent[-1]  # type: ignore[attr-defined]
    state = store.states["telegram:42"]
    assert (state.report_id, state.tracking_code) == (
        stored.report_id,  # type: ignore[attr-defined]
        stored.tracking_code,  # type: ignore[attr-defined]
    )
