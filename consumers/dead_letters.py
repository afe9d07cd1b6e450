"""The one dead-letter path of every stage: how a message nobody could handle is set aside.

Processors, notifier and audit writer all build their dead letters here and count them in one
metric, ``escalate_dead_letters_total{stage, reason}``, so one alert rule and one dashboard
panel cover every stage, including stages added later. The audit writer turns each dead letter
whose incident is known into a ``dead_lettered`` event on that incident's trail.
"""

from __future__ import annotations

import logging
import traceback
from enum import StrEnum
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter

from consumers.metrics_registry import PerRegistry
from schemas.audit import DeadLetter
from schemas.common import utcnow

log = logging.getLogger("escalate.deadletter")


class Reason(StrEnum):
    """A fixed vocabulary for the metric label; the letter itself carries the full reason."""

    unparseable = "unparseable"  # the bytes do not fit the topic's contract
    failed = "failed"  # handling raised: a bug, or a value nobody foresaw
    undeliverable = "undeliverable"  # the recipient's relay refused it for good
    rejected = "rejected"  # the database refused the row


class DeadLetterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.counter = Counter(
            "escalate_dead_letters",
            "Messages sent to the dead-letter topic, by stage and reason.",
            ["stage", "reason"],
            registry=registry,
        )


metrics_for = PerRegistry(DeadLetterMetrics)


def describe_failure(exc: BaseException) -> str:
    """Type and place of an exception, without its message.

    Messages may quote the value that broke the code, and that value may be a child's report;
    the type and the innermost frame are enough to find the bug, and the payload itself is kept
    in the dead letter for whoever is allowed to read it.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" in {frames[-1].name} ({frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})"
    return f"{type(exc).__name__}{where if frames else ''}"


class SourceRecord(Protocol):
    """Where a message came from: kafka-python's ConsumerRecord has these, and so do fakes."""

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


class DeadLetters:
    """Builds, counts and logs the dead letters of one stage."""

    def __init__(self, stage: str, registry: CollectorRegistry) -> None:
        self.stage = stage
        self._counter = metrics_for(registry).counter
        for reason in Reason:  # start at zero so increase() sees the very first one
            self._counter.labels(stage=stage, reason=reason.value)

    def letter(
        self,
        *,
        topic: str,
        partition: int | None,
        offset: int | None,
        key: bytes | None,
        value: bytes | None,
        reason: Reason,
        detail: str,
        incident_id: str | None = None,
    ) -> DeadLetter:
        self._counter.labels(stage=self.stage, reason=reason.value).inc()
        # Only coordinates and the reason: never the payload.
        log.warning(
            "dead-lettered %s[%s]@%s at stage %s (%s): %s",
            topic,
            partition,
            offset,
            self.stage,
            reason.value,
            detail,
        )
        return DeadLetter(
            source_topic=topic,
            incident_id=incident_id,
            partition=partition,
            offset=offset,
            key=key.decode("utf-8", "replace") if key is not None else None,
            stage=self.stage,
            reason=f"{reason.value}: {detail}",
            at=utcnow(),
            payload=(value or b"").decode("utf-8", "replace"),
        )

    def of(
        self, record: SourceRecord, reason: Reason, detail: str, incident_id: str | None = None
    ) -> DeadLetter:
        """The dead letter for a consumed record."""
        return self.letter(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            reason=reason,
            detail=detail,
            incident_id=incident_id,
        )
