"""The learned second opinion on the real broker, with the shipped model.

A report no rule matches but the model rates critical reaches the school, the district and the
city office at once and goes to the intake desk for triage; the police hear of it only after the
reviewer confirms it on the mailed page. The audit trail records the model's version and what it
held back.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
import yaml

from escalate.settings import DEFAULT_CONFIG_DIR
from schemas.common import Tier
from stream_processors.classification.model import load
from stream_processors.classification.training import DEFAULT_MODEL
from tests.integration.test_escalation import ADDRESSES, LINK, _answers, start_pipeline
from tests.integration.test_review import timeline
from tests.services.pipeline import wait_for

pytestmark = pytest.mark.kafka

DIRECTORY = yaml.safe_load((DEFAULT_CONFIG_DIR / "directory.yaml").read_text("utf-8"))
DESK = set(DIRECTORY["city_office"]["intake_desk_emails"])
# From untuned batch 10: `escalate classify` (rules alone) says other/low; the model says
# critical and self_harm.
QUIET = (
    "Bạn em đăng lên story ảnh một vỉ thuốc đã bóc gần hết với dòng 'đủ rồi'. Dạo này bạn ấy "
    "bị điểm kém và bị bố mẹ mắng nhiều."
)


def test_a_report_only_the_model_rates_critical_reaches_the_police_only_after_review(
    kafka_bootstrap: str, isolation: str, tmp_path: Path
) -> None:
    database = {"ESCALATE_DATABASE_URL": f"sqlite:///{tmp_path / 'audit.db'}"}
    offices = ADDRESSES[Tier.school] | ADDRESSES[Tier.district_office] | ADDRESSES[Tier.city_office]
    police = ADDRESSES[Tier.police]
    with start_pipeline(kafka_bootstrap, isolation, tmp_path, "20s", intake=True) as pipeline:
        pipeline.components.env.update(database)
        pipeline.components.start("audit")
        wait_for(lambda: _answers(pipeline.base_url), what="the intake")
        incident = pipeline.report(QUIET)

        def first_notices() -> dict[int, set[str]]:
            out: dict[int, set[str]] = {}
            for mail in pipeline.sink.about(incident):
                if mail.kind == "first_notice":
                    out.setdefault(mail.step, set()).update(mail.to)
            return out

        # At once: the school and both offices as for any critical report, and the desk's review.
        wait_for(
            lambda: (
                first_notices().get(0) == offices
                and {a for m in pipeline.sink.about(incident) if m.kind == "review" for a in m.to}
                == DESK
            ),
            what="the first notices to the school and offices, and the review mail",
        )
        notice = next(m for m in pipeline.sink.about(incident) if m.kind == "first_notice")
        assert "model: critical" in notice.body()

        review = next(m for m in pipeline.sink.about(incident) if m.kind == "review")
        found = LINK.search(review.body())
        assert found, review.body()
        link = found.group(1)
        page = wait_for(
            lambda: (lambda r: r if 'id="withheld"' in r.text else None)(
                httpx.get(link, timeout=10)
            ),
            timeout_s=30,
            what="the review page saying who is held back",
        )
        assert "model: critical" in page.text and 'data-severity="critical"' in page.text
        # The police were held back, not forgotten: nothing went to them before the review.
        assert not {a for m in pipeline.sink.about(incident) for a in m.to} & police

        nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
        assert nonce
        confirmed_at = time.time()
        answer = httpx.post(
            link,
            data={
                "action": "reclassify",
                "nonce": nonce.group(1),
                "severity": "critical",
                "category": "self_harm",
            },
            headers={"Origin": pipeline.base_url},
            timeout=10,
        )
        assert answer.status_code == 303, answer.text

        wait_for(
            lambda: any(police <= told for step, told in first_notices().items() if step > 0),
            timeout_s=30,
            what="the police told after the reviewer confirmed",
        )
        to_police = [m for m in pipeline.sink.about(incident) if set(m.to) & police]
        assert min(m.at for m in to_police) >= confirmed_at
        assert {m.kind for m in to_police} == {"first_notice"}

        events = wait_for(
            lambda: (lambda got: got if any(e["event"] == "reclassified" for e in got) else None)(
                timeline(database, incident)
            ),
            timeout_s=60,
            what="the review in the audit trail",
        )
        [classified] = [e for e in events if e["event"] == "classified"]
        assert classified["detail"]["model_version"] == load(DEFAULT_MODEL).model_version
        assert classified["detail"]["second_opinion"]["raised_from"] == "low"
        assert any(r.startswith("model: critical") for r in classified["detail"]["reasons"])
        [routed] = [e for e in events if e["event"] == "routed"]
        assert routed["detail"]["withheld_until_review"] == ["police"]
        [change] = [e for e in events if e["event"] == "reclassified"]
        assert change["detail"]["change"] == "confirmed"
        assert change["detail"]["notified"] == ["police"]
        assert QUIET not in json.dumps(events, ensure_ascii=False)
