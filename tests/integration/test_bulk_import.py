"""`escalate import` against a live intake and the real broker (issue 12): a 1,000-line CSV
imported twice gives 1,000 reports; bad lines are refused one by one with their reasons; a
file the importer cannot read is refused as a whole with the line at fault."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.reports import ReportSubmitted
from schemas.topics import REPORTS_SUBMITTED
from tests.integration.test_report_status import read_to_end
from tests.services.http import serve
from tests.services.intake import intake_app

pytestmark = pytest.mark.kafka

API_KEY = "import-test-key"
LINES = 1000


@pytest.fixture
def intake_url(kafka_bootstrap: str, isolation: str) -> Iterator[str]:
    with (
        intake_app(kafka_bootstrap, f"{isolation}.", {API_KEY: "hotline"}) as made,
        serve(made.app) as url,
    ):
        yield url


def escalate_import(url: str, path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "escalate.cli", "import", str(path)),
            *("--url", url, "--api-key", API_KEY),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def stored(bootstrap: str, isolation: str) -> list[ReportSubmitted]:
    return [
        ReportSubmitted.model_validate_json(v)
        for v in read_to_end(bootstrap, REPORTS_SUBMITTED.name(f"{isolation}."))
    ]


def hotline_log(path: Path, lines: int) -> None:
    """A hotline log as a spreadsheet saves it: a byte-order mark, Vietnamese text."""
    with path.open("w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["reporter_role", "school_code", "description", "immediate_danger", "contact_phone"]
        )
        for n in range(lines):
            writer.writerow(
                [
                    "parent",
                    f"HN-BD-THCS-{n % 40:03d}",
                    f"Cuộc gọi số {n}: người lạ nhắn tin cho học sinh, đòi gặp riêng",
                    "có" if n % 100 == 0 else "không",
                    "0900 000 000",
                ]
            )


def test_a_thousand_line_csv_imported_twice_gives_a_thousand_reports(
    kafka_bootstrap: str, isolation: str, intake_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "hotline.csv"
    hotline_log(log, LINES)
    first = escalate_import(intake_url, log)
    assert first.returncode == 0, first.stderr[-2000:]
    outcomes = [json.loads(line) for line in first.stdout.splitlines()]
    assert [o["line"] for o in outcomes] == list(range(2, LINES + 2))  # file lines, in order
    assert f"{LINES} line(s): {LINES} accepted, 0 refused" in first.stderr

    again = escalate_import(intake_url, log)
    assert again.returncode == 0, again.stderr[-2000:]
    repeated = [json.loads(line) for line in again.stdout.splitlines()]
    assert all(o["imported_before"] for o in repeated)
    assert [o["tracking_code"] for o in repeated] == [o["tracking_code"] for o in outcomes]
    assert f"{LINES} accepted, {LINES} of them imported before" in again.stderr

    reports = stored(kafka_bootstrap, isolation)
    assert len(reports) == LINES
    assert {r.report.channel for r in reports} == {"bulk_import"}
    assert sum(r.report.immediate_danger for r in reports) == LINES // 100
    assert {r.intake_client for r in reports} == {"hotline"}


def test_bad_lines_are_refused_each_with_its_reason_and_the_rest_imported(
    kafka_bootstrap: str, isolation: str, intake_url: str, tmp_path: Path
) -> None:
    good = {"channel": "hotline", "reporter_role": "teacher", "school_code": "HN-BD-THCS-001"}
    lines = [
        json.dumps({**good, "description": "Lộ mật khẩu lớp học trực tuyến"}, ensure_ascii=False),
        "{not json",
        json.dumps({**good, "description": "ngắn"}, ensure_ascii=False),  # too short
        "",
        json.dumps({"report": {**good, "description": "Người lạ vào lớp học và quấy rối"}}),
        "[1, 2]",
    ]
    path = tmp_path / "reports.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = escalate_import(intake_url, path)
    assert result.returncode == 1
    outcomes = {o["line"]: o for o in map(json.loads, result.stdout.splitlines())}
    assert set(outcomes) == {1, 2, 3, 5, 6}  # the empty line is no report
    assert outcomes[1]["tracking_code"] and outcomes[5]["tracking_code"]
    assert outcomes[2]["error"].startswith("not JSON")
    assert outcomes[3]["status"] == 422
    assert [f["field"] for f in outcomes[3]["fields"]] == ["description"]
    assert "not a JSON object" in outcomes[6]["error"]
    assert "5 line(s): 2 accepted, 3 refused" in result.stderr
    assert len(stored(kafka_bootstrap, isolation)) == 2


def test_a_csv_with_an_unknown_column_is_refused_before_anything_is_sent(
    kafka_bootstrap: str, isolation: str, intake_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "typo.csv"
    path.write_text(
        "reporter_role,school_code,desciption\nparent,HN-BD-THCS-001,Người lạ vào lớp\n",
        encoding="utf-8",
    )
    result = escalate_import(intake_url, path)
    assert result.returncode == 2
    assert "line 1: unknown column(s) 'desciption'" in result.stderr
    assert result.stdout == ""
    # A wrong --url: one clear error, not a refusal per line.
    nowhere = escalate_import("http://127.0.0.1:9", path)
    assert nowhere.returncode == 2
    assert "cannot reach the intake at http://127.0.0.1:9" in nowhere.stderr
    assert stored(kafka_bootstrap, isolation) == []


def test_send_is_the_same_command_with_a_progress_bar_on_a_terminal(
    kafka_bootstrap: str, isolation: str, intake_url: str, tmp_path: Path
) -> None:
    """`escalate send` (the older name) imports too; on a terminal the bar shows on stderr,
    while stdout keeps one outcome per line for a script to read."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    log = tmp_path / "hotline.csv"
    hotline_log(log, 5)
    controller, terminal = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, and tqdm draws nothing in no width.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "escalate.cli", "send", str(log)),
                *("--url", intake_url, "--api-key", API_KEY),
            ],
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
            timeout=300,
        )
        os.close(terminal)
        drawn = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal's other end is closed: all is read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(controller)
    assert done.returncode == 0, drawn.decode("utf-8", "replace")
    assert len(done.stdout.strip().splitlines()) == 5
    assert "5/5" in drawn.decode("utf-8", "replace")  # tqdm's count: the bar reached the end
    assert len(stored(kafka_bootstrap, isolation)) == 5
