"""Test doubles shared by the test modules, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.incidents import Decision, GroupMatch, IncidentClassified, IncidentUpdate, MatchKind
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


def make_update(
    decision: Decision,
    n: int,
    *,
    at: datetime = T0,
    incident_id: str = "inc-1",
    description: str = "Em cũng thấy người lạ vào lớp học trực tuyến và nói bậy.",
    danger: bool = False,
) -> IncidentUpdate:
    """The n-th later report joining ``incident_id`` (matched by its meeting link)."""
    return IncidentUpdate(
        incident_id=incident_id,
        report_id=f"r-later-{n}",
        tracking_code=f"ESC-LATE-{n:04d}",
        school_code=SCHOOL_CODE,
        received_at=at,
        grouped_at=at,
        match=GroupMatch(kind=MatchKind.link, label="zoom"),
        decision=decision,
        report=ReportIn(
            channel="web_form",
            reporter_role="student",
            school_code=SCHOOL_CODE,
            description=description,
            immediate_danger=danger,
            contact={"name": f"Học sinh {n}", "phone": "0911 111 111"},
        ),
    )


# ---- the reporters' status page: a view that knows tracking codes, a publisher that records ----


class FakeReportView:
    """The real in-memory index (``StatusIndex``) with a readiness switch, as the status routes
    see an ``IncidentView``; it also serves the action pages (``get``)."""

    def __init__(self, ready: bool = True) -> None:
        from producers.intake.incidents import StatusIndex

        self.index = StatusIndex()
        self.is_ready = ready

    def get(self, incident_id: str) -> object:
        return self.index.get(incident_id)

    def ready(self) -> bool:
        return self.is_ready

    def find_code(self, code: str) -> object:
        return self.index.find_code(code)

    def note_submitted(self, submitted: object) -> None:
        self.index.note_submitted(submitted)

    def find_claim(self, key_id: str, now: datetime) -> object:
        return self.index.claims.find(key_id, now)


class FakeReportPublisher:
    """Keeps what would have been published; ``fail`` makes it refuse like a broker that is away."""

    def __init__(self) -> None:
        self.published: list[object] = []
        self.fail = False

    def publish(
        self,
        report: object,
        intake_client: str,
        follow_up_of: str | None = None,
        claim: object = None,
    ) -> object:
        import uuid

        from producers.intake.publisher import PublishError
        from schemas.ids import new_tracking_code
        from schemas.reports import ReportSubmitted

        if self.fail:
            raise PublishError("the broker did not confirm the write: KafkaTimeoutError")
        submitted = ReportSubmitted(
            report_id=str(uuid.uuid4()),
            tracking_code=new_tracking_code(),
            received_at=datetime.now(UTC),
            intake_client=intake_client,
            report=report,
            follow_up_of=follow_up_of,
            idempotency=claim,
        )
        self.published.append(submitted)
        return submitted

    async def publish_async(
        self,
        report: object,
        intake_client: str,
        follow_up_of: str | None = None,
        claim: object = None,
    ) -> object:
        return self.publish(report, intake_client, follow_up_of, claim)

    def ready(self) -> bool:
        return not self.fail
