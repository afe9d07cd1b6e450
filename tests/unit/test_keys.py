"""API keys kept as SHA-256 digests (producers/intake/keys.py), plain ones still accepted."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from escalate.settings import Settings, parse_api_keys, parse_authority_keys
from producers.intake.app import create_app
from producers.intake.keys import KeyRing, digest_of, hashed, new_key
from schemas.common import Tier
from tests.fakes import FakeReportPublisher

REPORT = {
    "channel": "app",
    "reporter_role": "teacher",
    "school_code": "HN-BD-THCS-001",
    "description": "Có người lạ vào lớp học trực tuyến.",
}


def test_a_ring_finds_plain_and_hashed_keys_and_nothing_else() -> None:
    secret = new_key()
    ring = KeyRing({hashed(secret): "school-app", "plain-key": "old-app"})
    assert ring.find(secret) == "school-app"
    assert ring.find("plain-key") == "old-app"
    assert ring.find(hashed(secret)) is None  # the stored form is not a key
    assert ring.find("") is None and ring.find(None) is None
    assert ring.find(secret[:-1]) is None
    assert ring.plain == ["old-app"]


@pytest.mark.parametrize("bad", ["sha256:abc", "sha256:" + "g" * 64, "sha256:"])
def test_a_malformed_hashed_key_is_refused_with_its_entry_named(bad: str) -> None:
    with pytest.raises(ValueError, match="64 hexadecimal"):
        digest_of(bad)
    with pytest.raises(ValueError, match=r"'school-app'.*64 hexadecimal"):
        parse_api_keys(f"school-app={bad}")
    with pytest.raises(ValueError, match=r"'police'.*64 hexadecimal"):
        parse_authority_keys(f"police=police:{bad}")


def test_the_intake_takes_a_key_configured_only_by_its_hash() -> None:
    secret = new_key()
    settings = Settings(intake_api_keys=f"school-app={hashed(secret)}")
    publisher = FakeReportPublisher()
    app = create_app(publisher, KeyRing(settings.api_keys), CollectorRegistry())  # type: ignore[arg-type]
    with TestClient(app) as client:
        ok = client.post("/v1/reports", json=REPORT, headers={"X-API-Key": secret})
        assert ok.status_code == 202, ok.text
        refused = client.post("/v1/reports", json=REPORT, headers={"X-API-Key": hashed(secret)})
        assert refused.status_code == 401
    assert [r.intake_client for r in publisher.published] == ["school-app"]  # type: ignore[attr-defined]


def test_authority_keys_may_be_hashed_too() -> None:
    secret = new_key()
    keys = parse_authority_keys(f"police-system=police:{hashed(secret)}")
    assert KeyRing(keys).find(secret) == ("police-system", Tier.police)


def test_key_new_prints_a_key_and_the_entry_that_lets_exactly_it_in() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "escalate.cli", "key", "new", "police-system", "--tier", "police"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    key = out.splitlines()[0].rsplit(": ", 1)[1]
    entry = out.splitlines()[1].rsplit(": ", 1)[1]
    assert entry.startswith("police-system=police:sha256:") and key not in entry
    assert KeyRing(parse_authority_keys(entry)).find(key) == ("police-system", Tier.police)


def test_one_api_client_is_limited_and_told_when_to_come_back() -> None:
    publisher = FakeReportPublisher()
    app = create_app(
        publisher,  # type: ignore[arg-type]
        {"key-a": "app-a", "key-b": "app-b"},
        CollectorRegistry(),
        client_rate="3/minute",
    )
    with TestClient(app) as client:
        answers = [
            client.post("/v1/reports", json=REPORT, headers={"X-API-Key": "key-a"})
            for _ in range(4)
        ]
        other = client.post("/v1/reports", json=REPORT, headers={"X-API-Key": "key-b"})
    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    assert int(answers[-1].headers["Retry-After"]) >= 1
    assert answers[-1].json()["retry"] is True
    assert other.status_code == 202  # another client is not held back by the first
    assert len(publisher.published) == 4
