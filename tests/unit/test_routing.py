"""The routing core: who is told, with what, under the default policy and directory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from escalate.settings import DEFAULT_CONFIG_DIR
from schemas.common import Category, Severity, Tier
from schemas.directory import Directory
from schemas.incidents import Decision, IncidentClassified
from schemas.policy import Policy
from schemas.reports import ReportIn
from schemas.yaml_loader import load_yaml_model
from stream_processors.routing.core import plan_notifications
from stream_processors.routing.directory_index import DirectoryIndex

POLICY = load_yaml_model(DEFAULT_CONFIG_DIR / "policy.yaml", Policy)
INDEX = DirectoryIndex(load_yaml_model(DEFAULT_CONFIG_DIR / "directory.yaml", Directory))
NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def incident(severity: Severity, school: str = "HN-BD-THCS-001") -> IncidentClassified:
    return IncidentClassified(
        incident_id="inc-1",
        report_ids=["r-1"],
        tracking_codes=["ESC-AAAA-BBBB"],
        school_code=school,
        received_at=NOW,
        classified_at=NOW,
        decision=Decision(
            severity=severity, category=Category.other, reasons=["x"], rules_version="v1"
        ),
        report=ReportIn(
            channel="app",
            reporter_role="parent",
            school_code=school,
            description="Something happened in class.",
            contact={"name": "A Parent", "phone": "0900 000 000"},
        ),
    )


def emails_by_tier(sev: Severity, school: str = "HN-BD-THCS-001") -> dict[Tier, set[str]]:
    plan = plan_notifications(incident(sev, school), POLICY, INDEX, now=NOW)
    out: dict[Tier, set[str]] = {}
    for n in plan.notifications:
        out.setdefault(n.recipient.tier, set()).add(n.recipient.email)
    return out


def test_critical_reaches_every_tier_including_district_and_city_police() -> None:
    got = emails_by_tier(Severity.critical)
    assert got == {
        Tier.school: {"bgh@thcs-pct.badinh.example"},
        Tier.district_office: {"pgd@badinh.hanoi.example"},
        Tier.city_office: {"chanh-van-phong@sogd.hanoi.example"},
        Tier.police: {"truc-ban@ca.badinh.hanoi.example", "pa05-truc-ban@congan.hanoi.example"},
    }


@pytest.mark.parametrize(
    ("severity", "tiers"),
    [
        (Severity.high, {Tier.school, Tier.district_office}),
        (Severity.medium, {Tier.school}),
        (Severity.low, {Tier.school}),
    ],
)
def test_lower_severities_follow_the_policy(severity: Severity, tiers: set[Tier]) -> None:
    assert set(emails_by_tier(severity)) == tiers


def test_school_tier_never_gets_the_reporter_contact() -> None:
    plan = plan_notifications(incident(Severity.critical), POLICY, INDEX, now=NOW)
    for n in plan.notifications:
        if n.recipient.tier is Tier.school:
            assert n.contact is None
        else:
            assert n.contact is not None and n.contact.phone == "0900 000 000"


def test_school_is_never_shown_contact_even_if_policy_lists_it() -> None:
    policy = POLICY.model_copy(update={"contact_visible_to": list(Tier)})
    plan = plan_notifications(incident(Severity.low), policy, INDEX, now=NOW)
    assert all(n.contact is None for n in plan.notifications)


def test_unknown_school_goes_to_the_city_intake_desk_flagged() -> None:
    plan = plan_notifications(incident(Severity.medium, "HN-NOPE-1"), POLICY, INDEX, now=NOW)
    assert [n.recipient.email for n in plan.notifications] == ["tiep-nhan@sogd.hanoi.example"]
    assert all(n.unknown_school for n in plan.notifications)
    assert plan.audit.detail["unknown_school"] is True


def test_unknown_school_critical_still_reaches_city_office_and_city_police() -> None:
    got = emails_by_tier(Severity.critical, "HN-NOPE-1")
    assert got[Tier.police] == {"pa05-truc-ban@congan.hanoi.example"}
    assert {"tiep-nhan@sogd.hanoi.example", "chanh-van-phong@sogd.hanoi.example"} <= got[
        Tier.city_office
    ]


def test_ids_are_deterministic_and_deadline_follows_policy() -> None:
    first = plan_notifications(incident(Severity.high), POLICY, INDEX, now=NOW)
    again = plan_notifications(incident(Severity.high), POLICY, INDEX, now=NOW)
    assert [n.notification_id for n in first.notifications] == [
        n.notification_id for n in again.notifications
    ]
    assert first.audit.event_id == again.audit.event_id
    assert all(n.ack_due_at == NOW + timedelta(hours=1) for n in first.notifications)
    later = plan_notifications(incident(Severity.high), POLICY, INDEX, now=NOW, step=1)
    assert {n.notification_id for n in later.notifications}.isdisjoint(
        n.notification_id for n in first.notifications
    )


def test_audit_detail_holds_no_report_text_or_contact() -> None:
    plan = plan_notifications(incident(Severity.critical), POLICY, INDEX, now=NOW)
    flat = plan.audit.model_dump_json()
    assert "Something happened" not in flat and "0900 000 000" not in flat


# ---- webhooks beside the mail ------------------------------------------------------------------


def with_webhooks() -> DirectoryIndex:
    """The shipped directory with systems for the Ba Đình office (two addresses) and police."""
    raw = load_yaml_model(DEFAULT_CONFIG_DIR / "directory.yaml", Directory).model_dump(mode="json")
    district = next(d for d in raw["districts"] if d["code"] == "HN-BD")
    district["office"]["emails"].append("pho-phong@badinh.hanoi.example")
    district["office"]["webhooks"] = [
        {"url": "https://pgd.badinh.example/hooks", "secret_env": "BD_OFFICE_HOOK"}
    ]
    district["police"]["webhooks"] = [
        {"url": "https://ca.badinh.example/in", "secret_env": "BD_POLICE_HOOK"}
    ]
    district["police"]["telegram_chat_ids"] = [-1001234567890]
    return DirectoryIndex(Directory.model_validate(raw))


def hooks_by_email(severity: Severity, policy: Policy = POLICY) -> dict[str, list[str]]:
    plan = plan_notifications(incident(severity), policy, with_webhooks(), now=NOW)
    return {
        n.recipient.email: [str(w.url) for w in n.recipient.webhooks] for n in plan.notifications
    }


def test_each_organisations_systems_ride_on_one_of_its_requests() -> None:
    hooks = hooks_by_email(Severity.critical)
    assert hooks["pgd@badinh.hanoi.example"] == ["https://pgd.badinh.example/hooks"]
    assert hooks["pho-phong@badinh.hanoi.example"] == []  # told once, not once per address
    assert hooks["truc-ban@ca.badinh.hanoi.example"] == ["https://ca.badinh.example/in"]
    assert hooks["pa05-truc-ban@congan.hanoi.example"] == []  # the city police has none
    assert hooks["bgh@thcs-pct.badinh.example"] == []


def test_the_policy_says_which_severities_use_webhooks() -> None:
    only_critical = POLICY.model_copy(update={"webhook_severities": [Severity.critical]})
    assert any(hooks_by_email(Severity.critical, only_critical).values())
    assert not any(hooks_by_email(Severity.high, only_critical).values())
    assert any(hooks_by_email(Severity.high).values())  # the default: every severity


def test_duty_chats_are_alerted_for_critical_and_high_by_default() -> None:
    def chats(severity: Severity, policy: Policy = POLICY) -> dict[str, list[int]]:
        plan = plan_notifications(incident(severity), policy, with_webhooks(), now=NOW)
        return {n.recipient.email: n.recipient.telegram_chat_ids for n in plan.notifications}

    critical = chats(Severity.critical)
    assert critical["truc-ban@ca.badinh.hanoi.example"] == [-1001234567890]
    assert sum(map(len, critical.values())) == 1  # one alert per chat, not per address
    quiet = POLICY.model_copy(update={"telegram_severities": [Severity.low]})
    assert "truc-ban@ca.badinh.hanoi.example" in chats(Severity.critical, quiet)
    assert not any(chats(Severity.critical, quiet).values())
