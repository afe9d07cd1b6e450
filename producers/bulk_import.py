"""Bulk import: reports collected offline (a hotline log, a school's spreadsheet) into the intake.

Every line goes through the intake's HTTP API, so it meets the same validation and the same
guarantee as any other channel: accepted means stored in Kafka. Each line is sent with an
``Idempotency-Key`` made from its content, so importing a file again (after an interruption, or
by mistake) stores nothing twice; two identical lines are one report. Each line's outcome goes
to ``out`` as one JSON object (the tracking code, or the reasons for refusal), and a summary
follows on ``err``, so nothing is skipped silently.

Formats: JSON lines (one report, or ``{"report": ...}``, per line) and CSV with a header row
naming ``ReportIn`` fields (``contact_name``, ``contact_phone``, ``contact_email`` for the
contact; ``evidence_urls`` separated by spaces or new lines). A CSV without a ``channel`` column
imports as ``bulk_import``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO

from schemas.reports import ReportIn

#: answers worth another try with the same key: the intake said "not stored, retry"
RETRY_STATUSES = {429, 502, 503, 504}
ATTEMPTS = 4

_CONTACT_COLUMNS = {"contact_name": "name", "contact_phone": "phone", "contact_email": "email"}
_REPORT_FIELDS = set(ReportIn.model_fields) - {"contact"}
CSV_COLUMNS = sorted(_REPORT_FIELDS | set(_CONTACT_COLUMNS))
_TRUE = {"true", "yes", "1", "x", "có", "co"}
_FALSE = {"false", "no", "0", "", "không", "khong"}


class FileError(ValueError):
    """The file as a whole cannot be imported (e.g. an unknown CSV column)."""


@dataclass(frozen=True)
class Line:
    """One report to import, or why its line could not even be read."""

    number: int
    report: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class Summary:
    lines: int = 0
    accepted: int = 0
    already: int = 0
    refused: int = 0
    by_status: dict[str, int] = field(default_factory=dict)

    def text(self) -> str:
        parts = [f"{self.lines} line(s): {self.accepted} accepted"]
        if self.already:
            parts.append(f"{self.already} of them imported before")
        parts.append(f"{self.refused} refused")
        return ", ".join(parts)


def import_key(report: dict[str, Any]) -> str:
    """The line's content, canonically: the same report is the same key in any file."""
    canonical = json.dumps(report, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return "import-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def json_lines(stream: Iterable[str]) -> Iterator[Line]:
    for number, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Line(number, error=f"not JSON: {exc}")
            continue
        if isinstance(obj, dict) and isinstance(obj.get("report"), dict):
            obj = obj["report"]
        if not isinstance(obj, dict):
            yield Line(number, error="not a JSON object describing one report")
            continue
        yield Line(number, report=obj)


def csv_rows(stream: Iterable[str]) -> Iterator[Line]:
    reader = csv.DictReader(stream)
    columns = [c.strip() for c in reader.fieldnames or []]
    unknown = [c for c in columns if c not in CSV_COLUMNS]
    if unknown or not columns:
        raise FileError(
            f"line 1: unknown column(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(CSV_COLUMNS)}"
            if unknown
            else "line 1: no header row"
        )
    reader.fieldnames = columns
    for row in reader:
        number = reader.line_num
        try:
            yield Line(number, report=_from_row(row))
        except ValueError as exc:
            yield Line(number, error=str(exc))


def _from_row(row: dict[str, str | None]) -> dict[str, Any]:
    if None in row:  # DictReader's key for cells beyond the header
        raise ValueError("more cells than the header has columns")
    cells = {k: (v or "").strip() for k, v in row.items() if k is not None}
    report: dict[str, Any] = {"channel": "bulk_import"}
    contact: dict[str, str] = {}
    for column, value in cells.items():
        if not value and column != "immediate_danger":
            continue
        if column in _CONTACT_COLUMNS:
            contact[_CONTACT_COLUMNS[column]] = value
        elif column == "immediate_danger":
            word = value.lower()
            if word not in _TRUE | _FALSE:
                raise ValueError(f"immediate_danger: {value!r} is neither yes nor no")
            report[column] = word in _TRUE
        elif column == "evidence_urls":
            report[column] = value.split()
        else:
            report[column] = value
    if contact:
        report["contact"] = contact
    return report


def read_lines(stream: TextIO, fmt: str) -> Iterator[Line]:
    return csv_rows(stream) if fmt == "csv" else json_lines(stream)


def format_of(path: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    return "csv" if path.lower().endswith(".csv") else "jsonl"


def unreachable(url: str) -> str | None:
    """Why the intake cannot be used, or None: asked once before any line is sent, so a wrong
    ``--url`` is one clear error instead of a refusal per line."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/healthz", timeout=10):
            return None
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code} to /healthz"
    except (urllib.error.URLError, OSError) as exc:
        return f"cannot reach the intake at {url}: {getattr(exc, 'reason', exc)}"


def _post(
    url: str, api_key: str, payload: dict[str, Any], key: str
) -> tuple[int, dict[str, Any], bool]:
    request = urllib.request.Request(
        f"{url.rstrip('/')}/v1/reports",
        data=json.dumps(payload, ensure_ascii=False).encode("utf-8"),
        headers={
            "Content-Type": "application/json; charset=utf-8",
            "X-API-Key": api_key,
            "Idempotency-Key": key,
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            replayed = resp.headers.get("Idempotent-Replayed") == "true"
            return resp.status, json.loads(resp.read()), replayed
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            body = {"error": str(exc.reason)}
        return exc.code, body, False


def send_one(
    line: Line, url: str, api_key: str, pause_s: float = 1.0
) -> tuple[Line, int | None, dict[str, Any], bool]:
    """Post one line, again after a pause when the intake says it could not store it."""
    if line.report is None:
        return line, None, {"error": line.error}, False
    key = import_key(line.report)
    for attempt in range(ATTEMPTS):
        try:
            status, body, replayed = _post(url, api_key, line.report, key)
        except (urllib.error.URLError, OSError) as exc:
            status, body, replayed = 0, {"error": f"intake unreachable: {exc}"}, False
        if status not in RETRY_STATUSES | {0} or attempt == ATTEMPTS - 1:
            break
        time.sleep(pause_s * 2**attempt)  # the same key makes the retry safe
    return line, status or None, body, replayed


def import_lines(
    lines: Iterable[Line],
    url: str,
    api_key: str,
    out: TextIO,
    progress: Any = None,
    workers: int = 4,
) -> Summary:
    """Every line posted (``workers`` at a time), its outcome written in line order."""
    summary = Summary()
    with ThreadPoolExecutor(workers) as pool:
        for line, status, body, replayed in pool.map(
            lambda item: send_one(item, url, api_key), lines
        ):
            summary.lines += 1
            if status == 202:
                summary.accepted += 1
                summary.already += replayed
                record = {"line": line.number, **body} | (
                    {"imported_before": True} if replayed else {}
                )
            else:
                summary.refused += 1
                label = str(status) if status else "unread" if line.report is None else "unsent"
                summary.by_status[label] = summary.by_status.get(label, 0) + 1
                record = {"line": line.number, "status": status, **body}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            if progress is not None:
                progress.update(1)
    return summary
