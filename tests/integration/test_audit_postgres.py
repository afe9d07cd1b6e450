"""The audit store on PostgreSQL: migrations, chain, timelines, racing writers, refused rows."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, make_url, text
from sqlalchemy.orm import Session

from consumers.audit import store
from consumers.audit.models import Base
from consumers.audit.worker import AuditConfig, AuditWriter
from escalate.settings import Settings
from schemas.audit import AuditEvent, AuditEventType, DeadLetter
from schemas.ids import event_id
from tests.fakes import FakeRecord

pytestmark = pytest.mark.postgres

T0 = datetime(2026, 3, 2, 20, 5, tzinfo=timezone(timedelta(hours=7)))


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """A URL whose connections live in a fresh schema, so tests never see each other's rows."""
    schema = f"audit_{uuid.uuid4().hex[:10]}"
    base = make_url(postgres_url)
    plain = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    options = quote(f"-csearch_path={schema}")
    sep = "&" if "?" in postgres_url else "?"
    try:
        yield f"{base.render_as_string(hide_password=False)}{sep}options={options}"
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    store.migrate(pg_url)
    engine = store.make_engine(pg_url)
    yield engine
    engine.dispose()


def event(incident: str, kind: AuditEventType, minutes: int, report: str = "r-1") -> AuditEvent:
    return AuditEvent(
        event_id=event_id(incident, kind.value, str(minutes)),
        incident_id=incident,
        event=kind,
        at=T0 + timedelta(minutes=minutes),
        report_ids=[report],
        tracking_codes=[f"ESC-{report}"],
        detail={"tier": "police", "note": "Công an quận Ba Đình", "ratio": 0.1, "n": 3},
    )


def write(engine: Engine, *events: AuditEvent) -> list[bool]:
    with Session(engine) as session, session.begin():
        return [store.record(session, e) for e in events]


def as_record(e: AuditEvent, offset: int = 0) -> FakeRecord:
    return FakeRecord("audit.events.v1", 0, offset, None, e.model_dump_json().encode())


def test_migrations_match_models_and_repeat(pg_url: str, engine: Engine) -> None:
    store.migrate(pg_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        assert str(conn.execute(text("select current_schema()")).scalar()).startswith("audit_")


def test_record_replay_timeline_and_chain(engine: Engine) -> None:
    events = [event("inc-a", AuditEventType.notified, m) for m in (3, 1, 2)]
    assert write(engine, *events) == [True, True, True]
    assert write(engine, *events) == [False, False, False]
    write(engine, event("inc-b", AuditEventType.received, 0, report="r-2"))

    rows = store.timeline(engine, "inc-a")
    assert [r["at"] for r in rows] == [
        "2026-03-02T13:06:00.000000+00:00",
        "2026-03-02T13:07:00.000000+00:00",
        "2026-03-02T13:08:00.000000+00:00",
    ]
    assert rows[0]["detail"]["note"] == "Công an quận Ba Đình"
    assert store.timeline(engine, "r-1") == rows
    assert store.timeline(engine, "ESC-r-1") == rows
    assert [r["incident_id"] for r in store.timeline(engine, "r-2")] == ["inc-b"]
    with Session(engine) as session:
        assert store.verify_all(session) == {}

    with engine.begin() as conn:
        conn.execute(
            text("update audit_events set detail = cast(:d as json) where seq = 1"),
            {"d": json.dumps({"tier": "school"})},
        )
    with Session(engine) as session:
        problems = store.verify_all(session)
    assert list(problems) == ["inc-a", "inc-b"]
    assert all("altered" in p[0] for p in problems.values())


def test_timeline_command(pg_url: str, engine: Engine) -> None:
    write(engine, event("inc-a", AuditEventType.received, 0))
    settings = Settings(database_url=pg_url)
    out = io.StringIO()
    assert store.timeline_command(settings, "ESC-r-1", out, io.StringIO()) == 0
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["received"]
    assert store.timeline_command(settings, "nothing", io.StringIO(), io.StringIO()) == 1


def test_racing_writers_keep_one_chain(engine: Engine) -> None:
    writer = AuditWriter(AuditConfig(), engine, registry=CollectorRegistry())
    first = event("inc-race", AuditEventType.notified, 0)
    second = event("inc-race", AuditEventType.notified, 1)
    errors: list[BaseException] = []

    with Session(engine) as holder:
        holder.begin()
        assert store.record(holder, first)  # seq 1, not yet committed

        def other_writer() -> None:
            try:
                assert writer.handle_batch([as_record(second)]) == []
            except BaseException as exc:  # surfaced in the main thread
                errors.append(exc)

        thread = threading.Thread(target=other_writer)
        thread.start()
        time.sleep(0.5)  # the other writer now waits on the (incident_id, seq) index
        holder.commit()
    thread.join(timeout=30)
    assert not thread.is_alive() and errors == []
    rows = store.timeline(engine, "inc-race")
    assert [(r["seq"], r["event_id"]) for r in rows] == [
        (1, first.event_id),
        (2, second.event_id),
    ]
    with Session(engine) as session:
        assert store.verify_chain(session, "inc-race") == []


def test_rows_the_database_refuses_are_dead_lettered(engine: Engine) -> None:
    writer = AuditWriter(AuditConfig(), engine, registry=CollectorRegistry())
    good = event("inc-ok", AuditEventType.received, 0)
    too_long = event("inc-" + "x" * 300, AuditEventType.received, 1)
    dead = writer.handle_batch([as_record(good, 1), as_record(too_long, 2)])
    assert len(dead) == 1
    letter = DeadLetter.model_validate_json(dead[0].value)
    assert letter.offset == 2 and "database rejected" in letter.reason
    assert [r["event_id"] for r in store.timeline(engine, "inc-ok")] == [good.event_id]


def test_naive_and_offset_times_are_stored_as_utc(engine: Engine) -> None:
    naive = event("inc-t", AuditEventType.received, 0).model_copy(
        update={"at": datetime(2026, 3, 2, 13, 5)}
    )
    write(engine, naive)
    [row] = store.timeline(engine, "inc-t")
    assert row["at"] == "2026-03-02T13:05:00.000000+00:00"
    assert datetime.fromisoformat(row["recorded_at"]).tzinfo == UTC
