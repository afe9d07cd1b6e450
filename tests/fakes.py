"""Test doubles shared by the test modules, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.incidents import Decision, IncidentClassified
from schemas.reports import ReportIn

T0 = datetime(2026, 11, 28, 22, 0, tzinfo=UTC)
SCHOOL_CODE = "HN-BD-THCS-001"


def make_incident(
    decision: Decision,
    *,
    description: str = "Một nhóm bạn đăng ảnh chế giễu em lên nhóm lớp.",
    danger: bool = False,
    received_at: datetime = T0,
    incident_id: str = "inc-1",
) -> IncidentClassified:
    """A classified incident of one parent's report at a school in the default directory."""
    return IncidentClassified(
        incident_id=incident_id,
        report_ids=["r-1"],
        tracking_codes=["ESC-AAAA-BBBB"],
        school_code=SCHOOL_CODE,
        received_at=received_at,
        classified_at=received_at,
        decision=decision,
        report=ReportIn(
            channel="app",
            reporter_role="parent",
            school_code=SCHOOL_CODE,
            description=description,
            immediate_danger=danger,
            contact={"name": "Phụ huynh", "phone": "0900 000 000"},
        ),
    )


@dataclass(frozen=True)
class FakeRecord:
    """A stand-in for kafka-python's ConsumerRecord with the fields the consumers read."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


# ---- fault injection: a stage that raises on one marked message, for the poison tests ----

POISON_CLASSIFY_SCHOOL = "HN-POISON-CLASSIFY"
POISON_ROUTE_SCHOOL = "HN-POISON-ROUTE"


def faulty_processors() -> int:
    """``escalate run processors`` with cores that raise on the marked schools.

    No value the contracts accept makes the real cores raise any more (the property tests hold
    them to that), so the tests plant the fault themselves to show what the agents do with one.
    """
    from typing import Any

    from escalate.cli import main
    from stream_processors import app

    real_open, real_plan = app.open_incident, app.plan_notifications

    def open_incident(submitted: Any, *args: Any, **kwargs: Any) -> Any:
        if submitted.report.school_code == POISON_CLASSIFY_SCHOOL:
            raise OverflowError("planted fault")
        return real_open(submitted, *args, **kwargs)

    def plan_notifications(incident: Any, *args: Any, **kwargs: Any) -> Any:
        if incident.school_code == POISON_ROUTE_SCHOOL:
            raise OverflowError("planted fault")
        return real_plan(incident, *args, **kwargs)

    app.open_incident = open_incident  # type: ignore[assignment]
    app.plan_notifications = plan_notifications  # type: ignore[assignment]
    return main(["run", "processors"])
