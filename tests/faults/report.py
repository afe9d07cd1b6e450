"""The fault suite's figures as the markdown table of docs/RELIABILITY.md.

    .venv/bin/python -m tests.faults.report [var/faults/results.jsonl]

The latest run of each case is shown, in the order the cases first appear in the file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.faults.harness import RESULTS

COLUMNS = (
    ("case", "fault"),
    ("accepted", "accepted / sent"),
    ("complete", "every expected mail"),
    ("lost", "lost"),
    ("duplicates", "duplicates"),
    ("redelivered", "same Message-ID again"),
    ("failed_recorded", "refused for good, recorded"),
    ("audit_missing", "audit rows missing"),
    ("audit_verified", "audit verify"),
    ("recovery_s", "recovery (s)"),
    ("worst_latency_s", "worst 202 → all first notices (s)"),
    ("answers", "intake answers"),
)


def cell(row: dict[str, object], key: str) -> str:
    value = row.get(key, "—")
    if key == "accepted":
        return f"{value} / {row['sent']}"
    if key == "audit_verified":
        return "passes" if value else "FAILS"
    if key == "answers" and isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in sorted(value.items()))
    return str(value)


def table(rows: list[dict[str, object]]) -> str:
    latest: dict[str, dict[str, object]] = {}
    for row in rows:
        latest[str(row["case"])] = row
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "| " + " | ".join("---" for _ in COLUMNS) + " |",
    ]
    for row in latest.values():
        lines.append("| " + " | ".join(cell(row, key) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else RESULTS
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
