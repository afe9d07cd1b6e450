"""Where each chat stands, kept on the compacted ``bots.conversations`` topic.

Every intake process follows the topic into memory (one small record per chat) and writes a
chat's new state with acks=all before it answers the platform, so a conversation survives a
restart, a kill -9 included, and can go on in any intake process.
"""

from __future__ import annotations

import logging
import threading

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from consumers.kafka_io import topic_partitions
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
        self._poll_ms = poll_ms
        self._caught_up = threading.Event()
        self._stop = threading.Event()
        self._positions: dict[TopicPartition, int] = {}
        self._thread: threading.Thread | None = None

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
        return self._caught_up.is_set()

    def wait_caught_up(self, timeout_s: float) -> bool:
        return self._caught_up.wait(timeout_s)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bot-store", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        super().close()

    def _remember(self, state: Conversation) -> None:
        with self._lock:
            known = self._states.get(state.key)
            # Reading back our own write (or an older one) must not step a chat back.
            if known is None or known.last_update <= state.last_update:
                self._states[state.key] = state

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except KafkaError as exc:
                log.warning("bot store lost the broker (%s); retrying", type(exc).__name__)
            except Exception:
                log.exception("bot store failed; retrying")
            self._stop.wait(2.0)

    def _follow(self) -> None:
        consumer = KafkaConsumer(
            bootstrap_servers=self._bootstrap.split(","),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=self._client_id,
        )
        try:
            partitions = topic_partitions(consumer, self._topic)
            if not partitions:
                return
            consumer.assign(partitions)
            for tp in partitions:
                if tp in self._positions:
                    consumer.seek(tp, self._positions[tp])
                else:
                    consumer.seek_to_beginning(tp)
            targets = consumer.end_offsets(partitions)
            while not self._stop.is_set():
                for tp, records in consumer.poll(timeout_ms=self._poll_ms).items():
                    for record in records:
                        self._apply(record.key, record.value, record.offset)
                        self._positions[tp] = record.offset + 1
                if not self._caught_up.is_set() and all(
                    consumer.position(tp) >= end for tp, end in targets.items()
                ):
                    log.info("bot store caught up: %d conversations", len(self._states))
                    self._caught_up.set()
        finally:
            consumer.close()

    def _apply(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        if value is None:
            if key is not None:
                with self._lock:
                    self._states.pop(key.decode("utf-8", "replace"), None)
            return
        try:
            state = Conversation.model_validate_json(value)
        except ValidationError as exc:
            # The offset and the count only: the value may hold what a child wrote.
            log.warning(
                "conversation at offset %d skipped: %d problem(s)", offset, len(exc.errors())
            )
            return
        self._remember(state)
