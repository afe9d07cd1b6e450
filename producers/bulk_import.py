"""Bulk import: posts JSON-lines reports to the intake API, one line at a time.

It goes through the same HTTP validation as every other channel; each line's outcome (tracking
code or the reasons for refusal) is written out so nothing is silently skipped.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any, TextIO


def _post(url: str, api_key: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{url.rstrip('/')}/v1/reports",
        data=json.dumps(payload, ensure_ascii=False).encode("utf-8"),
        headers={"Content-Type": "application/json; charset=utf-8", "X-API-Key": api_key},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            body = {"error": exc.reason}
        return exc.code, body


def send_lines(lines: Iterable[str], url: str, api_key: str, out: TextIO) -> int:
    """Returns 1 when any line was refused, 0 when all were accepted."""
    failed = False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            out.write(json.dumps({"line": number, "error": f"not JSON: {exc}"}) + "\n")
            failed = True
            continue
        if isinstance(obj, dict) and isinstance(obj.get("report"), dict):
            obj = obj["report"]
        try:
            status, body = _post(url, api_key, obj)
        except (urllib.error.URLError, OSError) as exc:
            out.write(json.dumps({"line": number, "error": f"intake unreachable: {exc}"}) + "\n")
            failed = True
            continue
        if status == 202:
            out.write(json.dumps({"line": number, **body}) + "\n")
        else:
            failed = True
            out.write(
                json.dumps({"line": number, "status": status, **body}, ensure_ascii=False) + "\n"
            )
        out.flush()
    return 1 if failed else 0
