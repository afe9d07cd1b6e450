"""The audit trail in SQL: append events to a per-incident hash chain, verify it, read it back.

Each incident's events form a chain: ``hash = sha256(prev_hash + canonical JSON of the row)``,
starting from ``GENESIS_HASH``. Editing a stored row, or deleting or reordering one in the
middle, breaks the chain and ``verify_chain`` says where. (Cutting events off the end of a chain
leaves a valid shorter chain; copying the latest hashes elsewhere guards against that.)
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from consumers.audit.models import GENESIS_HASH, AuditRow, ReportRef
from escalate.settings import Settings
from schemas.audit import AuditEvent
from schemas.common import utcnow

PACKAGE_DIR = Path(__file__).resolve().parent
ALEMBIC_INI = PACKAGE_DIR / "alembic.ini"


# ---- engines and schema ----


def _ensure_sqlite_dir(database_url: str) -> None:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def make_engine(database_url: str) -> Engine:
    """An engine for the audit database; creates the directory of a SQLite file if needed."""
    _ensure_sqlite_dir(database_url)
    if make_url(database_url).get_backend_name() == "sqlite":
        # Several threads (writer, CLI, web) may share a file; wait for locks rather than fail.
        return create_engine(database_url, connect_args={"timeout": 30})
    return create_engine(database_url, pool_pre_ping=True)


def alembic_config() -> Config:
    """The Alembic config shipped inside the package, wherever the package is installed."""
    return Config(str(ALEMBIC_INI))


def migrate(database: str | Engine) -> None:
    """Bring the schema to the latest revision (``alembic upgrade head``); safe to repeat."""
    engine = make_engine(database) if isinstance(database, str) else database
    try:
        config = alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        if isinstance(database, str):
            engine.dispose()


# ---- the hash chain ----


def canonical_json(value: Any) -> str:
    """One spelling per value: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime) -> str:
    return _utc(value).isoformat(timespec="microseconds")


def hashed_fields(row: AuditRow) -> dict[str, Any]:
    """Everything about a row the chain vouches for (all but id, prev_hash and hash)."""
    return {
        "event_id": row.event_id,
        "incident_id": row.incident_id,
        "seq": row.seq,
        "event": row.event,
        "at": _iso(row.at),
        "report_ids": row.report_ids,
        "tracking_codes": row.tracking_codes,
        "detail": row.detail,
        "recorded_at": _iso(row.recorded_at),
    }


def chain_hash(prev_hash: str, row: AuditRow) -> str:
    payload = prev_hash + canonical_json(hashed_fields(row))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# ---- writing ----


def _add_ref(session: Session, kind: str, ref: str, incident_id: str) -> None:
    exists = session.scalar(
        select(ReportRef.id).where(
            ReportRef.kind == kind, ReportRef.ref == ref, ReportRef.incident_id == incident_id
        )
    )
    if exists is None:
        session.add(ReportRef(kind=kind, ref=ref, incident_id=incident_id))


def record(session: Session, event: AuditEvent) -> bool:
    """Append ``event`` to its incident's chain; False (and no write) if it is already stored.

    Runs inside the caller's transaction. Two writers extending the same chain at once make
    the later commit fail on (incident_id, seq); the caller retries the transaction.
    """
    if session.scalar(select(AuditRow.id).where(AuditRow.event_id == event.event_id)):
        return False
    data = event.model_dump(mode="json")
    head = session.execute(
        select(AuditRow.seq, AuditRow.hash)
        .where(AuditRow.incident_id == event.incident_id)
        .order_by(AuditRow.seq.desc())
        .limit(1)
    ).first()
    seq, prev_hash = (head[0] + 1, head[1]) if head is not None else (1, GENESIS_HASH)
    row = AuditRow(
        event_id=event.event_id,
        incident_id=event.incident_id,
        seq=seq,
        event=event.event.value,
        at=_utc(event.at),
        report_ids=data["report_ids"],
        tracking_codes=data["tracking_codes"],
        detail=data["detail"],
        recorded_at=utcnow(),
        prev_hash=prev_hash,
    )
    row.hash = chain_hash(prev_hash, row)
    session.add(row)
    for report_id in event.report_ids:
        _add_ref(session, "report_id", report_id, event.incident_id)
    for code in event.tracking_codes:
        _add_ref(session, "tracking_code", code, event.incident_id)
    session.flush()
    return True


# ---- checking ----


def verify_chain(session: Session, incident_id: str) -> list[str]:
    """Problems found in one incident's chain; an empty list means it is intact (or empty)."""
    rows = session.scalars(
        select(AuditRow).where(AuditRow.incident_id == incident_id).order_by(AuditRow.seq)
    ).all()
    problems: list[str] = []
    prev_hash = GENESIS_HASH
    expected_seq = 1
    for row in rows:
        where = f"{incident_id} seq {row.seq} (row {row.id}, event {row.event_id})"
        if row.seq != expected_seq:
            problems.append(f"{where}: expected seq {expected_seq}; an event is missing")
        if row.prev_hash != prev_hash:
            problems.append(f"{where}: prev_hash does not match the previous event's hash")
        if chain_hash(row.prev_hash, row) != row.hash:
            problems.append(f"{where}: contents do not match the stored hash (altered)")
        prev_hash = row.hash
        expected_seq = row.seq + 1
    return problems


def verify_all(session: Session) -> dict[str, list[str]]:
    """Every incident whose chain has problems, with the problems."""
    incident_ids = session.scalars(
        select(AuditRow.incident_id).distinct().order_by(AuditRow.incident_id)
    ).all()
    report = {iid: verify_chain(session, iid) for iid in incident_ids}
    return {iid: problems for iid, problems in report.items() if problems}


# ---- reading ----


def incidents_for(session: Session, ref: str) -> list[str]:
    """Incident ids that ``ref`` names: an incident id itself, a report id or a tracking code."""
    found: set[str] = set(
        session.scalars(select(ReportRef.incident_id).where(ReportRef.ref == ref)).all()
    )
    if session.scalar(select(AuditRow.id).where(AuditRow.incident_id == ref).limit(1)):
        found.add(ref)
    return sorted(found)


def row_as_dict(row: AuditRow) -> dict[str, Any]:
    return {
        "at": _iso(row.at),
        "event": row.event,
        "incident_id": row.incident_id,
        "event_id": row.event_id,
        "seq": row.seq,
        "report_ids": row.report_ids,
        "tracking_codes": row.tracking_codes,
        "detail": row.detail,
        "recorded_at": _iso(row.recorded_at),
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }


def _timeline(session: Session, ref: str) -> list[dict[str, Any]]:
    incident_ids: Sequence[str] = incidents_for(session, ref)
    if not incident_ids:
        return []
    rows = session.scalars(
        select(AuditRow)
        .where(AuditRow.incident_id.in_(incident_ids))
        .order_by(AuditRow.at, AuditRow.id)
    ).all()
    return [row_as_dict(row) for row in rows]


def timeline(engine_or_session: Engine | Session, ref: str) -> list[dict[str, Any]]:
    """All events of the incident(s) ``ref`` names, oldest first (by ``at``, then row id)."""
    if isinstance(engine_or_session, Session):
        return _timeline(engine_or_session, ref)
    with Session(engine_or_session) as session:
        return _timeline(session, ref)


def timeline_command(settings: Settings, ref: str, out: TextIO, err: TextIO | None = None) -> int:
    """``escalate audit timeline ID``: one JSON line per event; 1 when nothing is found."""
    err = err if err is not None else sys.stderr
    engine = make_engine(settings.database_url)
    try:
        events = timeline(engine, ref)
    except SQLAlchemyError as exc:
        # Most often the database has never been migrated (nothing was ever recorded).
        err.write(f"cannot read the audit trail: {type(exc).__name__}\n")
        return 1
    finally:
        engine.dispose()
    if not events:
        err.write(f"no audit events found for {ref!r}\n")
        return 1
    for item in events:
        out.write(json.dumps(item, ensure_ascii=False) + "\n")
    return 0


def verify_command(settings: Settings, ref: str | None, out: TextIO) -> int:
    """Check one incident's chain (or all when ``ref`` is None); 1 when any problem is found."""
    engine = make_engine(settings.database_url)
    try:
        with Session(engine) as session:
            if ref is None:
                report = verify_all(session)
            else:
                report = {iid: verify_chain(session, iid) for iid in incidents_for(session, ref)}
                if not report:
                    out.write(f"no audit events found for {ref!r}\n")
                    return 1
    finally:
        engine.dispose()
    bad = False
    for iid, problems in sorted(report.items()):
        for problem in problems:
            bad = True
            out.write(f"TAMPERED {problem}\n")
        if not problems:
            out.write(f"ok {iid}\n")
    if ref is None and not bad:
        out.write("ok: every chain verified\n")
    return 1 if bad else 0
