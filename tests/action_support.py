"""Helpers for the action-link and authority-API tests: known incident states, and reading
the actions topic back exactly to its end (no waiting for a timeout to prove 'nothing')."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from kafka import KafkaConsumer, KafkaProducer

from consumers.kafka_io import topic_partitions
from schemas.actions import IncidentAction
from schemas.common import Category, Channel, ReporterRole, Severity, Tier
from schemas.escalation import Acknowledgement, EscalationState, TierState
from schemas.incidents import Decision, IncidentClassified
from schemas.reports import ReportIn

SECRET = "test-secret-for-action-links"
SCHOOL = "HN-BD-THCS-001"
SCHOOL_NAME = "Trường THCS Ba Đình"
DESCRIPTION = (
    "Trong giờ học trực tuyến, một người lạ vào lớp 8A và nhắn riêng cho các em, "
    "đòi gửi ảnh riêng tư."
)
CONTACT_NAME = "Nguyễn Thị Bình"
CONTACT_PHONE = "0912 345 678"
RECEIVED = datetime(2026, 3, 2, 13, 5, tzinfo=UTC)  # 20:05 in Hanoi


@dataclass
class FakeIncidents:
    """An incident view with the states a test chose."""

    states: dict[str, EscalationState] = field(default_factory=dict)
    is_ready: bool = True

    def get(self, incident_id: str) -> EscalationState | None:
        return self.states.get(incident_id)

    def ready(self) -> bool:
        return self.is_ready


def make_state(
    incident_id: str, *, acknowledged_by: Tier | None = None, resolved: bool = False
) -> EscalationState:
    incident = IncidentClassified(
        incident_id=incident_id,
        report_ids=["r-1"],
        tracking_codes=["ESC-AAAA-BBBB"],
        school_code=SCHOOL,
        received_at=RECEIVED,
        classified_at=RECEIVED + timedelta(seconds=2),
        decision=Decision(
            severity=Severity.critical,
            category=Category.sexual_exploitation,
            rules_version="test",
        ),
        report=ReportIn.model_validate(
            {
                "channel": Channel.web_form,
                "reporter_role": ReporterRole.parent,
                "school_code": SCHOOL,
                "description": DESCRIPTION,
                "contact": {"name": CONTACT_NAME, "phone": CONTACT_PHONE},
            }
        ),
    )
    tiers = {
        Tier.school: TierState(notified_at_step=0),
        Tier.district_office: TierState(notified_at_step=0),
        Tier.city_office: TierState(notified_at_step=None),
    }
    if acknowledged_by is not None:
        tiers[acknowledged_by] = TierState(
            notified_at_step=0,
            acknowledged=Acknowledgement(
                by="bgh@school.example", at=RECEIVED + timedelta(minutes=30), via="link"
            ),
        )
    return EscalationState(
        incident_id=incident_id,
        incident=incident,
        severity=Severity.critical,
        category=Category.sexual_exploitation,
        step=0,
        next_due=RECEIVED + timedelta(hours=2),
        tiers=tiers,
        resolved=(
            Acknowledgement(by="police-system", at=RECEIVED + timedelta(hours=1), via="api")
            if resolved
            else None
        ),
        resolved_tier=Tier.police if resolved else None,
        updated_at=RECEIVED + timedelta(minutes=30),
    )


def read_actions(bootstrap: str, topic: str) -> list[IncidentAction]:
    """Every committed action on the topic, read up to the end offsets of this moment.

    The intake answers only after the broker's ack, so what a request wrote is there when
    the response is: reading to the end is exact, and an empty result proves 'nothing'."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    try:
        partitions = topic_partitions(consumer, topic)
        assert partitions, f"topic {topic} does not exist"
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        found: list[IncidentAction] = []
        deadline = time.monotonic() + 20
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            assert time.monotonic() < deadline, "could not read the actions topic to its end"
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    action = IncidentAction.model_validate_json(record.value)
                    assert record.key == action.incident_id.encode("utf-8")
                    found.append(action)
        return found
    finally:
        consumer.close()


def publish_state(bootstrap: str, topic: str, state: EscalationState) -> None:
    """Write a state as the escalator does: inside a committed transaction."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"test-escalator-{state.incident_id}",
        enable_idempotence=True,
        acks="all",
    )
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(
            topic,
            key=state.incident_id.encode("utf-8"),
            value=state.model_dump_json().encode("utf-8"),
        )
        producer.commit_transaction()
    finally:
        producer.close(timeout=10)
