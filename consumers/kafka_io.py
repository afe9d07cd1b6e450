"""Kafka plumbing shared by the consumers: what they publish before committing, and how a
message nobody can use becomes a dead letter with its reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from schemas.audit import DeadLetter
from schemas.common import utcnow
from schemas.validation import validation_reason

PUBLISH_TIMEOUT_S = 30.0

__all__ = [
    "PUBLISH_TIMEOUT_S",
    "Outgoing",
    "RecordLike",
    "dead_letter_for",
    "publish",
    "rewind",
    "to_json",
    "validation_reason",
]


class RecordLike(Protocol):
    """The parts of a kafka-python ConsumerRecord the consumers use (tests pass their own)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True)
class Outgoing:
    """One message to publish before the source offset may be committed."""

    topic: str
    key: bytes | None
    value: bytes


def dead_letter_for(record: RecordLike, topic: str, stage: str, reason: str) -> Outgoing:
    """Wrap a message nobody could process, with where it came from and why it was set aside."""
    key = record.key.decode("utf-8", errors="replace") if record.key is not None else None
    letter = DeadLetter(
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=key,
        stage=stage,
        reason=reason,
        at=utcnow(),
        payload=(record.value or b"").decode("utf-8", errors="replace"),
    )
    return Outgoing(topic, record.key, to_json(letter))


def to_json(model: BaseModel) -> bytes:
    return model.model_dump_json().encode("utf-8")


def publish(producer: Any, outgoing: list[Outgoing]) -> None:
    """Send and wait until the broker has acknowledged every message (acks=all)."""
    futures = [producer.send(o.topic, key=o.key, value=o.value) for o in outgoing]
    for future in futures:
        future.get(timeout=PUBLISH_TIMEOUT_S)


def rewind(consumer: Any, pending: dict[Any, int]) -> None:
    """Seek back over records that were fetched but not committed, so they are read again."""
    if not pending:
        return
    assigned = consumer.assignment()
    for tp, offset in pending.items():
        if tp in assigned:
            consumer.seek(tp, offset)
