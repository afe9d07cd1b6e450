"""Reviewed reports as a labelled corpus: what people decided becomes the classifier's test set.

Each line is ``{"report": {...}, "expect": {"severity", "category"}}``, the format
``escalate classify --evaluate`` reads; the label is the reviewer's severity and category. Only
what classifying needs is kept: the reporter's contact details, evidence links and the time of
the event never leave the pipeline this way.

The states are read from the compacted ``escalation.state.v1`` (read_committed, every
partition, up to the end offsets of the moment the export starts), so the latest committed
state of each incident counts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any, TextIO

from pydantic import ValidationError

from consumers.kafka_io import topic_partitions
from schemas.escalation import EscalationState
from schemas.topics import ESCALATION_STATE

#: Fields of a report the classifier reads; everything else stays out of the corpus.
CORPUS_FIELDS = {
    "channel",
    "reporter_role",
    "school_code",
    "description",
    "immediate_danger",
    "category_hint",
}
READ_TIMEOUT_S = 120.0


def labelled_row(state: EscalationState) -> dict[str, Any] | None:
    """The corpus row of one reviewed incident; None when it was not reviewed."""
    review = state.review
    if (
        review is None
        or review.reviewed_at is None
        or state.incident is None
        or state.severity is None
        or state.category is None
    ):
        return None
    report = state.incident.report.model_dump(mode="json", include=CORPUS_FIELDS)
    if report.get("category_hint") is None:
        report.pop("category_hint", None)
    return {
        "report": report,
        "expect": {"severity": state.severity.value, "category": state.category.value},
    }


def write_corpus(states: Iterable[EscalationState], out: TextIO) -> int:
    """Write the reviewed incidents, oldest review first; returns how many."""
    reviewed = [s for s in states if labelled_row(s) is not None]
    reviewed.sort(key=lambda s: (s.review.reviewed_at if s.review else None, s.incident_id))
    for state in reviewed:
        out.write(json.dumps(labelled_row(state), ensure_ascii=False) + "\n")
    return len(reviewed)


def read_states(bootstrap: str, prefix: str) -> tuple[list[EscalationState], int]:
    """The latest committed state of every incident, and how many records were unreadable."""
    from kafka import KafkaConsumer

    topic = ESCALATION_STATE.name(prefix)
    reader = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        client_id="escalate-review-export",
    )
    states: dict[str, EscalationState] = {}
    unreadable = 0
    try:
        partitions = topic_partitions(reader, topic)
        if not partitions:
            raise SystemExit(f"topic {topic} does not exist (run `escalate topics create`)")
        reader.assign(partitions)
        reader.seek_to_beginning(*partitions)
        ends = reader.end_offsets(partitions)
        deadline = time.monotonic() + READ_TIMEOUT_S
        while any(reader.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} was not read to its end in time")
            for records in reader.poll(timeout_ms=500).values():
                for record in records:
                    if record.value is None:  # a tombstone: the incident was forgotten
                        if record.key is not None:
                            states.pop(record.key.decode("utf-8", "replace"), None)
                        continue
                    try:
                        state = EscalationState.model_validate_json(record.value)
                    except ValidationError:
                        unreadable += 1
                        continue
                    states[state.incident_id] = state
    finally:
        reader.close()
    return list(states.values()), unreadable
