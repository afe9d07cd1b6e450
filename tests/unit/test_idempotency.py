"""Idempotency-Key bookkeeping (producers/intake/idempotency.py): pure parts, no broker."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from producers.intake.idempotency import (
    ClaimBook,
    InFlight,
    InvalidKey,
    Outcome,
    Remembered,
    claim_for,
    decide,
    parse_key,
    report_id_for,
    tracking_code_for,
)
from producers.intake.incidents import StatusIndex, normalise_tracking_code
from schemas.reports import ReportIn, ReportSubmitted
from tests.fakes import T0

BASE = {"channel": "app", "reporter_role": "teacher", "school_code": "HN-BD-THCS-001"}
REPORT = ReportIn.model_validate({**BASE, "description": "Người lạ vào lớp học trực tuyến."})
OTHER = ReportIn.model_validate({**BASE, "description": "Mật khẩu lớp bị lộ."})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("k" * 256, "longer than 255"),
        ("khóa-1", "printable ASCII"),
        ("a\tb", "printable ASCII"),
    ],
)
def test_an_unusable_key_is_refused_with_the_reason(raw: str, reason: str) -> None:
    with pytest.raises(InvalidKey, match=reason):
        parse_key(raw)


def test_no_header_means_no_key_and_a_usable_one_is_kept_as_sent() -> None:
    assert parse_key(None) is None
    assert parse_key(" 5b0c-retry ") == "5b0c-retry"
    assert parse_key("k" * 255) == "k" * 255


def test_claims_are_per_client_and_per_report() -> None:
    a = claim_for("school-app", "key-1", REPORT)
    assert a == claim_for("school-app", "key-1", REPORT)
    assert a.key_id != claim_for("hotline", "key-1", REPORT).key_id  # apps do not collide
    assert a.key_id != claim_for("school-app", "key-2", REPORT).key_id
    different = claim_for("school-app", "key-1", OTHER)
    assert (different.key_id, different.request_sha256 != a.request_sha256) == (a.key_id, True)
    assert "key-1" not in a.model_dump_json()  # digests only


def test_a_keyed_report_has_the_same_ids_each_time_and_the_code_needs_the_secret() -> None:
    claim = claim_for("school-app", "key-1", REPORT)
    assert report_id_for(claim) == report_id_for(claim_for("school-app", "key-1", OTHER))
    code = tracking_code_for(claim, b"secret-1")
    assert code == tracking_code_for(claim, b"secret-1")
    assert code != tracking_code_for(claim, b"secret-2")
    assert normalise_tracking_code(code) == code  # the shape reporters and the page know


def test_same_key_and_report_replays_a_different_report_conflicts() -> None:
    claim = claim_for("app", "k", REPORT)
    assert decide(claim, None) is Outcome.new
    stored = Remembered("r1", "ESC-AAAA-BBBB", claim.request_sha256, T0)
    assert decide(claim, stored) is Outcome.replayed
    assert decide(claim_for("app", "k", OTHER), stored) is Outcome.conflict


def test_the_book_forgets_after_the_window_and_keeps_the_first_write_of_a_key() -> None:
    book = ClaimBook(window=timedelta(hours=24), max_claims=3)
    first = Remembered("r1", "ESC-AAAA-AAAA", "h", T0)
    book.remember("k1", first)
    book.remember("k1", Remembered("r1", "ESC-AAAA-AAAA", "h", T0 + timedelta(seconds=2)))
    assert book.find("k1", T0 + timedelta(hours=23)) == first
    assert book.find("k1", T0 + timedelta(hours=24, seconds=1)) is None
    assert len(book) == 0  # aged-out claims are dropped, not only hidden


def test_the_book_is_bounded_oldest_first() -> None:
    book = ClaimBook(window=timedelta(hours=24), max_claims=2)
    for n in range(3):
        book.remember(f"k{n}", Remembered(f"r{n}", "ESC-AAAA-AAAA", "h", T0 + timedelta(n)))
    assert len(book) == 2
    assert book.find("k0", T0) is None


def test_the_status_index_learns_claims_from_the_reports_it_reads() -> None:
    index = StatusIndex()
    claim = claim_for("app", "k", REPORT)
    submitted = ReportSubmitted(
        report_id=report_id_for(claim),
        tracking_code="ESC-7K3M-9Q2X",
        received_at=T0,
        intake_client="app",
        report=REPORT,
        idempotency=claim,
    )
    index.note_submitted(submitted)
    found = index.claims.find(claim.key_id, T0 + timedelta(minutes=1))
    assert found == Remembered(submitted.report_id, "ESC-7K3M-9Q2X", claim.request_sha256, T0)
    assert index.find_code("ESC-7K3M-9Q2X") is not None


def test_requests_with_one_key_take_turns_and_others_do_not_wait() -> None:
    async def scenario() -> list[str]:
        in_flight = InFlight()
        order: list[str] = []
        first_inside = asyncio.Event()
        release = asyncio.Event()

        async def first() -> str:
            order.append("first in")
            first_inside.set()
            await release.wait()
            order.append("first out")
            return "first"

        async def second() -> str:
            order.append("second in")
            return "second"

        async def other_key() -> str:
            order.append("other key")
            return "other"

        a = asyncio.create_task(in_flight.one_at_a_time("k", first))
        await first_inside.wait()
        b = asyncio.create_task(in_flight.one_at_a_time("k", second))
        c = asyncio.create_task(in_flight.one_at_a_time("j", other_key))
        await c
        await asyncio.sleep(0.01)
        assert "second in" not in order  # still behind the first
        release.set()
        assert await asyncio.gather(a, b) == ["first", "second"]
        assert len(in_flight) == 0  # nothing kept once every request is done
        return order

    assert asyncio.run(scenario()) == ["first in", "other key", "first out", "second in"]
