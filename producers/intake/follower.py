"""The intake's read side: topics followed into memory by a background thread.

The status view (escalation states, submitted reports) and the chat bots' conversations are
both kept this way: every intake process reads the topics from the start, then on from where
it was, and says when it has caught up with what was there when it (re)connected, so that
"not known" means not known rather than "not read yet". A broker that is away is waited for,
never fatal.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from consumers.kafka_io import topic_partitions

log = logging.getLogger("escalate.intake")

#: (topic, key, value, partition, offset) of each record, in order per partition
Apply = Callable[[str, bytes | None, bytes | None, int, int], None]


class TopicFollower:
    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        apply: Apply,
        name: str,
        poll_ms: int = 500,
        retry_s: float = 2.0,
    ) -> None:
        self._bootstrap = bootstrap
        self._topics = list(topics)
        self._apply = apply
        self._name = name
        self._poll_ms = poll_ms
        self._retry_s = retry_s
        # Where to resume after losing the broker; only the follower's thread touches it.
        self._positions: dict[TopicPartition, int] = {}
        self._caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    def wait_caught_up(self, timeout_s: float) -> bool:
        return self._caught_up.wait(timeout_s)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except KafkaError as exc:
                log.warning("%s lost the broker (%s); retrying", self._name, type(exc).__name__)
            except Exception:
                log.exception("%s failed; retrying", self._name)
            self._caught_up.clear()
            self._stop.wait(self._retry_s)

    def _follow(self) -> None:
        consumer = KafkaConsumer(
            bootstrap_servers=self._bootstrap.split(","),
            group_id=None,
            enable_auto_commit=False,
            # Transactional writers (the escalator's states): what was aborted never happened.
            isolation_level="read_committed",
            # Only used when a kept position no longer exists (topic recreated).
            auto_offset_reset="earliest",
            client_id=f"escalate-intake-{self._name}",
        )
        try:
            partitions = self._partitions(consumer)
            if partitions is None:
                return
            consumer.assign(partitions)
            # After a reconnect, go on from where the follower was: reading from the start
            # again would briefly show older values over the newer ones already kept.
            for tp in partitions:
                if tp in self._positions:
                    consumer.seek(tp, self._positions[tp])
                else:
                    consumer.seek_to_beginning(tp)
            targets: dict[TopicPartition, int] = consumer.end_offsets(partitions)
            while not self._stop.is_set():
                for tp, records in consumer.poll(timeout_ms=self._poll_ms).items():
                    for record in records:
                        self._apply(
                            record.topic, record.key, record.value, record.partition, record.offset
                        )
                        self._positions[tp] = record.offset + 1
                if not self._caught_up.is_set() and all(
                    consumer.position(tp) >= end for tp, end in targets.items()
                ):
                    log.info("%s caught up", self._name)
                    self._caught_up.set()
        finally:
            consumer.close()

    def _partitions(self, consumer: KafkaConsumer) -> list[TopicPartition] | None:
        """All partitions of the followed topics, waiting while one does not exist yet."""
        while not self._stop.is_set():
            found = [topic_partitions(consumer, t, timeout_s=self._retry_s) for t in self._topics]
            if all(found):
                return [tp for partitions in found for tp in partitions]
            self._stop.wait(self._retry_s)
        return None
