"""Where each chat stands, kept on the compacted ``bots.conversations`` topic.

Every intake process follows the topic into memory (one small record per chat) and writes a
chat's new state with acks=all before it answers the platform, so a conversation survives a
restart, a kill -9 included, and can go on in any intake process.
"""

from __future__ import annotations

import logging
import threading

from kafka.errors import KafkaError
from pydantic import ValidationError

from producers.intake.follower import TopicFollower
from producers.intake.publisher import PublishError, _ConfirmedWriter
from schemas.bots import Conversation
from schemas.topics import BOTS_CONVERSATIONS

log = logging.getLogger("escalate.bots")


class ConversationStore(_ConfirmedWriter):
    """``get`` answers from memory; ``put`` returns once the broker has the new state."""

    _client_id = "escalate-intake-bots"

    def __init__(
        self, bootstrap: str, topic_prefix: str = "", timeout_s: float = 10.0, poll_ms: int = 500
    ) -> None:
        super().__init__(bootstrap, BOTS_CONVERSATIONS.name(topic_prefix), timeout_s)
        self._states: dict[str, Conversation] = {}
        self._lock = threading.Lock()
        self._follower = TopicFollower(
            bootstrap, [self._topic], self._apply, "bot-conversations", poll_ms
        )

    def get(self, key: str) -> Conversation | None:
        with self._lock:
            return self._states.get(key)

    async def put(self, state: Conversation) -> None:
        try:
            await self._confirm_async(
                state.key.encode("utf-8"), state.model_dump_json().encode("utf-8")
            )
        except KafkaError as exc:
            raise PublishError(f"conversation not stored: {type(exc).__name__}") from exc
        self._remember(state)

    def caught_up(self) -> bool:
        """True once what was on the topic at start has been read: only then is a chat's
        state known, and only then may a message be answered."""
        return self._follower.caught_up()

    def wait_caught_up(self, timeout_s: float) -> bool:
        return self._follower.wait_caught_up(timeout_s)

    def start(self) -> None:
        self._follower.start()

    def close(self) -> None:
        self._follower.close()
        super().close()

    def _remember(self, state: Conversation) -> None:
        with self._lock:
            known = self._states.get(state.key)
            # Reading back our own write (or an older one) must not step a chat back.
            if known is None or known.last_update <= state.last_update:
                self._states[state.key] = state

    def _apply(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int, offset: int
    ) -> None:
        if value is None:
            if key is not None:
                with self._lock:
                    self._states.pop(key.decode("utf-8", "replace"), None)
            return
        try:
            state = Conversation.model_validate_json(value)
        except ValidationError as exc:
            # The position and the count only: the value may hold what a child wrote.
            log.warning(
                "conversation at %s/%d offset %d skipped: %d problem(s)",
                topic,
                partition,
                offset,
                exc.error_count(),
            )
            return
        self._remember(state)
