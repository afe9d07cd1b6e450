"""Human triage end to end on the real broker: a report the rules put at other/low goes to the
city office's intake desk; the reviewer follows the mailed link, raises it to critical, and the
offices and the police hear of it within seconds; the audit trail keeps the old and new values.

This runs the rules alone (no model file), as a deployment without the learned second opinion
does; with the shipped model, the same report is raised at once (tests/integration/
test_second_opinion.py).

The components run as separate processes (processors, escalator, notifier, intake, audit), as
in tests/integration/test_escalation.py, whose pipeline this reuses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from escalate.settings import DEFAULT_CONFIG_DIR
from schemas.common import Tier
from tests.integration.test_escalation import (
    ADDRESSES,
    LINK,
    _answers,
    actions_on_topic,
    by_kind,
    start_pipeline,
)
from tests.services.pipeline import wait_for

pytestmark = pytest.mark.kafka

DIRECTORY = yaml.safe_load((DEFAULT_CONFIG_DIR / "directory.yaml").read_text("utf-8"))
DESK = set(DIRECTORY["city_office"]["intake_desk_emails"])
# Grooming in words no rule knows (checked with `escalate classify`: other/low, needs_review).
UNSURE = "Em học sinh lớp 7 kể có người hay nhắn tin rủ em lên phòng riêng nói chuyện ban đêm."


def timeline(env: dict[str, str], incident: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "escalate.cli", "audit", "timeline", incident],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        return []
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_a_low_report_is_triaged_raised_and_rerouted_within_seconds(
    kafka_bootstrap: str, isolation: str, tmp_path: Path
) -> None:
    database = {"ESCALATE_DATABASE_URL": f"sqlite:///{tmp_path / 'audit.db'}"}
    rules_alone = {"ESCALATE_MODEL_FILE": ""}
    with start_pipeline(
        kafka_bootstrap, isolation, tmp_path, "20s", intake=True, env=rules_alone
    ) as pipeline:
        pipeline.components.env.update(database)
        pipeline.components.start("audit")
        wait_for(lambda: _answers(pipeline.base_url), what="the intake")
        incident = pipeline.report(UNSURE)
        school = ADDRESSES[Tier.school]

        # The school gets its first notice as for any low report; the desk gets the review.
        wait_for(
            lambda: (
                by_kind(pipeline.sink.about(incident)).get(("first_notice", 0)) == school
                and by_kind(pipeline.sink.about(incident)).get(("review", 0)) == DESK
            ),
            what="the first notice and the review mail",
        )
        mail = next(m for m in pipeline.sink.about(incident) if m.kind == "review")
        assert "Cần xem xét / Review needed" in str(mail.msg["Subject"])
        found = LINK.search(mail.body())
        assert found, mail.body()
        link = found.group(1)

        # The reviewer opens the page: the report, the decision and the form; nothing recorded.
        page = wait_for(
            lambda: (lambda r: r if 'data-severity="low"' in r.text else None)(
                httpx.get(link, timeout=10)
            ),
            timeout_s=30,
            what="the review page with the incident's state",
        )
        assert page.status_code == 200
        assert 'id="review"' in page.text and "no rule matched" in page.text
        assert UNSURE in page.text
        assert actions_on_topic(pipeline) == []
        nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
        assert nonce

        answer = httpx.post(
            link,
            data={
                "action": "reclassify",
                "nonce": nonce.group(1),
                "severity": "critical",
                "category": "sexual_exploitation",
            },
            headers={"Origin": pipeline.base_url},
            timeout=10,
        )
        assert answer.status_code == 303, answer.text
        reviewed_at = time.time()

        # Everyone a critical incident calls for and who was not told yet, as one new step.
        untold = ADDRESSES[Tier.district_office] | ADDRESSES[Tier.city_office]
        untold |= ADDRESSES[Tier.police]
        wait_for(
            lambda: by_kind(pipeline.sink.about(incident)).get(("first_notice", 1)) == untold,
            timeout_s=30,
            what="the offices and the police told after the raise",
        )
        raised = [m for m in pipeline.sink.about(incident) if m.step == 1]
        assert max(m.at for m in raised) - reviewed_at < 15
        police = next(m for m in raised if set(m.to) & ADDRESSES[Tier.police])
        assert "sexual_exploitation" in police.body() or "critical" in police.body().lower()
        # The school was told at step 0 and is not told twice.
        assert not school & {a for m in raised for a in m.to}

        events = wait_for(
            lambda: (
                lambda found: found if any(e["event"] == "reclassified" for e in found) else None
            )(timeline(database, incident)),
            timeout_s=60,
            what="the reclassification in the audit trail",
        )
        [change] = [e for e in events if e["event"] == "reclassified"]
        detail = change["detail"]
        assert (detail["old_severity"], detail["old_category"]) == ("low", "other")
        assert (detail["new_severity"], detail["new_category"]) == (
            "critical",
            "sexual_exploitation",
        )
        assert detail["tier"] == "city_office" and detail["recipient"] in DESK
        assert detail["via"] == "link" and detail["change"] == "raised"
        assert UNSURE not in json.dumps(events, ensure_ascii=False)

        # The page now shows the reviewed classification and who made it.
        status = wait_for(
            lambda: (lambda t: t if 'id="reviewed"' in t else None)(
                httpx.get(link, timeout=10).text
            ),
            timeout_s=30,
            what="the page to show the review",
        )
        assert '<option value="critical" selected>' in status
