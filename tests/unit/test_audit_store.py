"""The audit store on SQLite: migrations, idempotent writes, the hash chain, timelines."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from consumers.audit import store
from consumers.audit.models import Base
from consumers.audit.worker import AuditConfig, AuditWriter
from escalate.settings import Settings
from schemas.audit import AuditEvent, AuditEventType, DeadLetter
from schemas.common import Channel, ReporterRole
from schemas.ids import event_id, incident_id_for_report
from schemas.reports import ReporterContact, ReportIn, ReportSubmitted
from tests.fakes import FakeRecord

T0 = datetime(2026, 3, 2, 13, 5, tzinfo=UTC)
SECRET_TEXT = "Có người lạ nhắn tin đòi ảnh của em và dọa tung lên mạng."


def event(
    incident: str, kind: AuditEventType, minutes: int, *, report: str = "r-1", code: str = "ESC-1"
) -> AuditEvent:
    return AuditEvent(
        event_id=event_id(incident, kind.value, str(minutes)),
        incident_id=incident,
        event=kind,
        at=T0 + timedelta(minutes=minutes),
        report_ids=[report],
        tracking_codes=[code],
        detail={"tier": "school", "step": 0, "note": "Trường THCS", "ratio": 0.5},
    )


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    url = f"sqlite:///{tmp_path}/nested/dir/escalate.db"
    store.migrate(url)
    return store.make_engine(url)


def write(engine: Engine, *events: AuditEvent) -> list[bool]:
    with Session(engine) as session, session.begin():
        return [store.record(session, e) for e in events]


def test_migrate_creates_parent_dir_and_is_repeatable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store.migrate("sqlite:///var/escalate.db")
    store.migrate("sqlite:///var/escalate.db")
    assert (tmp_path / "var" / "escalate.db").is_file()


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_replay_writes_nothing_twice(engine: Engine) -> None:
    first = event("inc-a", AuditEventType.received, 0)
    second = event("inc-a", AuditEventType.classified, 1)
    assert write(engine, first, second) == [True, True]
    assert write(engine, first, second) == [False, False]
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from audit_events")).scalar() == 2
        refs = conn.execute(text("select kind, ref, incident_id from audit_report_refs")).all()
    assert sorted(tuple(r) for r in refs) == [
        ("report_id", "r-1", "inc-a"),
        ("tracking_code", "ESC-1", "inc-a"),
    ]


def test_chain_verifies_and_links(engine: Engine) -> None:
    write(engine, *(event("inc-a", AuditEventType.notified, m) for m in range(4)))
    write(engine, event("inc-b", AuditEventType.received, 0, report="r-2", code="ESC-2"))
    with Session(engine) as session:
        assert store.verify_chain(session, "inc-a") == []
        assert store.verify_all(session) == {}
    rows = store.timeline(engine, "inc-a")
    assert rows[0]["prev_hash"] == "0" * 64
    assert [r["prev_hash"] for r in rows[1:]] == [r["hash"] for r in rows[:-1]]


def test_altered_row_is_detected(engine: Engine) -> None:
    write(engine, *(event("inc-a", AuditEventType.notified, m) for m in range(3)))
    with engine.begin() as conn:
        conn.execute(
            text("update audit_events set detail = :d where seq = 2 and incident_id = 'inc-a'"),
            {"d": json.dumps({"tier": "police", "step": 0})},
        )
    with Session(engine) as session:
        problems = store.verify_chain(session, "inc-a")
        assert len(problems) == 1
        assert "seq 2" in problems[0] and "altered" in problems[0]
        assert list(store.verify_all(session)) == ["inc-a"]


def test_altered_time_is_detected(engine: Engine) -> None:
    write(engine, *(event("inc-a", AuditEventType.notified, m) for m in range(2)))
    with engine.begin() as conn:
        conn.execute(
            text("update audit_events set at = '2026-03-01 00:00:00.000000' where seq = 1")
        )
    with Session(engine) as session:
        assert any("altered" in p for p in store.verify_chain(session, "inc-a"))


def test_deleted_row_is_detected(engine: Engine) -> None:
    write(engine, *(event("inc-a", AuditEventType.notified, m) for m in range(3)))
    with engine.begin() as conn:
        conn.execute(text("delete from audit_events where seq = 2"))
    with Session(engine) as session:
        problems = store.verify_chain(session, "inc-a")
    assert any("missing" in p for p in problems)
    assert any("prev_hash" in p for p in problems)


def test_timeline_by_incident_report_or_tracking_code(engine: Engine) -> None:
    # Written out of order: the timeline sorts by the event time.
    write(
        engine,
        event("inc-r-1", AuditEventType.notified, 5),
        event("inc-r-1", AuditEventType.received, 0),
        event("inc-r-1", AuditEventType.classified, 1),
        event("inc-r-9", AuditEventType.received, 2, report="r-9", code="ESC-9"),
    )
    by_incident = store.timeline(engine, "inc-r-1")
    assert [r["event"] for r in by_incident] == ["received", "classified", "notified"]
    assert by_incident[0]["at"] == "2026-03-02T13:05:00.000000+00:00"
    assert by_incident[0]["report_ids"] == ["r-1"]
    assert by_incident[0]["detail"]["note"] == "Trường THCS"
    assert {"at", "event", "incident_id", "report_ids", "detail", "hash"} <= set(by_incident[0])
    assert store.timeline(engine, "r-1") == by_incident
    assert store.timeline(engine, "ESC-1") == by_incident
    with Session(engine) as session:
        assert store.timeline(session, "ESC-9")[0]["incident_id"] == "inc-r-9"
    assert store.timeline(engine, "nope") == []


def test_timeline_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/escalate.db"
    settings = Settings(database_url=url)
    err = io.StringIO()
    assert store.timeline_command(settings, "r-1", io.StringIO(), err) == 1  # never migrated
    store.migrate(url)
    engine = store.make_engine(url)
    write(engine, event("inc-r-1", AuditEventType.received, 0))
    out = io.StringIO()
    assert store.timeline_command(settings, "ESC-1", out, err) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["received"]
    assert store.timeline_command(settings, "unknown", io.StringIO(), err) == 1
    report = io.StringIO()
    assert store.verify_command(settings, "r-1", report) == 0
    assert store.verify_command(settings, None, report) == 0


# ---- the audit writer's core, fed records the way kafka-python hands them over ----


def submitted(report_id: str = "r-77") -> ReportSubmitted:
    return ReportSubmitted(
        report_id=report_id,
        tracking_code="ESC-7K3M-9Q2X",
        received_at=T0,
        intake_client="web",
        report=ReportIn(
            channel=Channel.web_form,
            reporter_role=ReporterRole.student,
            school_code="THCS-BD-01",
            description=SECRET_TEXT,
            contact=ReporterContact(phone="0912345678", email="em@x.example"),
        ),
    )


def test_audit_writer_records_reports_and_events(engine: Engine) -> None:
    registry = CollectorRegistry()
    writer = AuditWriter(AuditConfig(topic_prefix="t."), engine, registry=registry)
    report = submitted()
    incident = incident_id_for_report(report.report_id)
    classified = event(incident, AuditEventType.classified, 1, report="r-77", code="ESC-7K3M-9Q2X")
    records = [
        FakeRecord("t.reports.submitted.v1", 0, 10, b"r-77", report.model_dump_json().encode()),
        FakeRecord(
            "t.audit.events.v1", 1, 3, incident.encode(), classified.model_dump_json().encode()
        ),
        FakeRecord(
            "t.audit.events.v1",
            1,
            4,
            b"k",
            json.dumps({"event_id": "x", "detail": SECRET_TEXT}).encode(),
        ),
        FakeRecord("t.audit.events.v1", 1, 5, b"k", None),
    ]
    dead = writer.handle_batch(records)
    assert [d.topic for d in dead] == ["t.deadletter.v1", "t.deadletter.v1"]
    letter = DeadLetter.model_validate_json(dead[0].value)
    assert letter.stage == "audit" and letter.offset == 4
    assert "detail" in letter.reason
    assert SECRET_TEXT not in letter.reason  # the reason names fields, never their values

    timeline = store.timeline(engine, "ESC-7K3M-9Q2X")
    assert [r["event"] for r in timeline] == ["received", "classified"]
    received = timeline[0]
    assert received["incident_id"] == incident
    assert received["detail"] == {
        "channel": "web_form",
        "reporter_role": "student",
        "school_code": "THCS-BD-01",
        "intake_client": "web",
    }
    with engine.connect() as conn:
        dump = json.dumps([list(r) for r in conn.execute(text("select * from audit_events"))])
    assert "0912345678" not in dump and "em@x.example" not in dump
    assert "tung lên mạng" not in json.dumps(timeline, ensure_ascii=False)

    # A replay of the same batch changes nothing but the duplicate counter.
    writer.handle_batch(records[:2])
    assert len(store.timeline(engine, incident)) == 2
    assert registry.get_sample_value("escalate_audit_events_total", {"event": "received"}) == 1
    assert registry.get_sample_value("escalate_audit_duplicates_total", {"event": "received"}) == 1
    assert (
        registry.get_sample_value(
            "escalate_dead_letters_total", {"stage": "audit", "reason": "unparseable"}
        )
        == 2
    )
