"""Properties of the contracts and the pure cores, for every value the schemas accept.

One report must never stop the pipeline: whatever passes validation, the classifier, the
classification stage and the router must each return their result (none of them documents an
error), and every contract must survive the trip through JSON that Kafka puts it through.
"""

from __future__ import annotations

import json
import unicodedata
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from escalate.settings import DEFAULT_CONFIG_DIR
from producers.intake.errors import field_reasons
from schemas.audit import AuditEvent
from schemas.common import Tier, clean_text
from schemas.directory import Directory
from schemas.incidents import Decision, IncidentClassified
from schemas.notifications import NotificationRequest
from schemas.policy import Policy
from schemas.reports import ReportIn, ReportSubmitted
from schemas.yaml_loader import load_yaml_model
from stream_processors.classification.engine import Classifier
from stream_processors.classify_stage import open_incident
from stream_processors.routing.core import plan_notifications
from stream_processors.routing.directory_index import DirectoryIndex
from tests import strategies as s

POLICY = load_yaml_model(DEFAULT_CONFIG_DIR / "policy.yaml", Policy)
INDEX = DirectoryIndex(load_yaml_model(DEFAULT_CONFIG_DIR / "directory.yaml", Directory))
CLASSIFIER = Classifier(POLICY)

# Generating reports of up to 10,000 characters is the slow part; these counts keep the whole
# file to a few seconds while still reaching the extremes the strategies favour.
QUICK = settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
THOROUGH = settings(
    max_examples=75, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

# Characters ``clean_text`` removes from every free-text field.
REMOVED = {
    *(chr(c) for c in range(0x20) if chr(c) not in "\t\n"),
    *(chr(c) for c in range(0x7F, 0xA0)),
    *(chr(c) for c in range(0x202A, 0x202F)),
    *(chr(c) for c in range(0x2066, 0x206A)),
    "\r",
}
decisions = s.models(
    Decision, {"reasons": s.lists(s.text(max_size=60), 0, 6), "rules_version": s.text(max_size=64)}
)


def _round_trips(model: BaseModel) -> None:
    again = type(model).model_validate_json(model.model_dump_json())
    assert again == model


# -- contracts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy",
    [
        s.report_ins(),
        s.reports_submitted(),
        s.incidents_classified(),
        s.notification_requests(),
        s.audit_events(),
    ],
    ids=["ReportIn", "ReportSubmitted", "IncidentClassified", "NotificationRequest", "AuditEvent"],
)
def test_every_contract_survives_json(strategy: st.SearchStrategy[BaseModel]) -> None:
    @QUICK
    @given(strategy)
    def check(model: BaseModel) -> None:
        _round_trips(model)

    check()


@THOROUGH
@given(s.report_ins())
def test_accepted_reports_are_clean(report: ReportIn) -> None:
    texts = [report.description]
    if report.contact is not None and report.contact.name is not None:
        texts.append(report.contact.name)
        assert not {"\n", "\t", "\u2028", "\u2029", "\x85"} & set(report.contact.name)
    for value in texts:
        assert not REMOVED & set(value)
        assert unicodedata.is_normalized("NFC", value)
        assert clean_text(value) == value, "cleaning must be idempotent"
    assert len(report.description) >= 5
    for url in report.evidence_urls:
        assert not REMOVED & set(str(url))
    if report.occurred_at is not None:
        assert report.occurred_at.utcoffset() is not None
    # What intake publishes must be writable as UTF-8 (a lone surrogate was not).
    report.model_dump_json().encode("utf-8")


@THOROUGH
@given(s.text(max_size=300), st.booleans())
def test_clean_text_keeps_what_was_meant(raw: str, single_line: bool) -> None:
    cleaned = clean_text(raw, single_line=single_line)
    assert clean_text(cleaned, single_line=single_line) == cleaned
    assert not REMOVED & set(cleaned)
    assert unicodedata.is_normalized("NFC", cleaned)
    if single_line:
        assert not {"\n", "\t", "\u2028", "\u2029"} & set(cleaned)
    kept = "".join(ch for ch in unicodedata.normalize("NFC", raw) if ch not in REMOVED)
    if raw.isprintable() and not single_line:
        assert cleaned == unicodedata.normalize("NFC", raw) == kept


def test_vietnamese_passes_unchanged() -> None:
    for phrase in s.VIETNAMESE:
        assert clean_text(phrase) == phrase
        assert clean_text(unicodedata.normalize("NFD", phrase)) == phrase
        assert clean_text(phrase, single_line=True) == phrase


# -- validation refuses with ValidationError and nothing else -------------------------------

# Nesting as deep as Hypothesis can still print; far deeper values get their own test below.
_deep = st.integers(1, 200).map(lambda n: json.loads("[" * n + "]" * n))
_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**4000),
    st.floats(),  # NaN and infinities included: json.loads turns 1e400 into inf
    s.text(max_size=40),
    st.sampled_from(("9999-12-31T23:59:59Z", "0001-01-01", "2024-02-30", "1e400", "-0", "\ud800")),
)
_json_values = st.recursive(
    _json_scalars | _deep,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(s.text(max_size=12), inner),
    max_leaves=10,
)
_field_names = st.sampled_from([*ReportIn.model_fields, "unexpected"])


@THOROUGH
@given(
    base=s.report_ins().map(lambda r: r.model_dump(mode="json")),
    changes=st.dictionaries(_field_names | s.text(max_size=12), _json_values, max_size=4),
    contact_changes=st.dictionaries(
        st.sampled_from(["name", "phone", "email", "other"]), _json_values, max_size=3
    ),
)
@example(base={}, changes={"occurred_at": float("inf")}, contact_changes={})
@example(base={}, changes={"contact": {"name": "\ud800"}}, contact_changes={})
def test_report_validation_only_ever_raises_validation_error(
    base: dict[str, Any], changes: dict[str, Any], contact_changes: dict[str, Any]
) -> None:
    data = {**base, **changes}
    if contact_changes:
        contact = data.get("contact")
        data["contact"] = {**(contact if isinstance(contact, dict) else {}), **contact_changes}
    try:
        report = ReportIn.model_validate(data)
    except ValidationError as exc:
        # Intake turns the error into reasons; that must not fail either, nor echo the input.
        reasons = field_reasons(exc)
        # (An unknown key "" is reported with field "": true, if unhelpful.)
        assert reasons and all(isinstance(r["field"], str) and r["reason"] for r in reasons)
        return
    report.model_dump_json().encode("utf-8")
    _round_trips(report)


@pytest.mark.parametrize("depth", [900, 3000])
@pytest.mark.parametrize("field", ["unexpected", "description", "contact", "evidence_urls"])
def test_deeply_nested_values_are_refused_cleanly(field: str, depth: int) -> None:
    # json.loads itself stops at about 1,000 levels on the intake (and answers 400); values
    # built otherwise (bulk import, other clients) may nest deeper.
    nested: Any = []
    for _ in range(depth):
        nested = [nested]
    data = {"channel": "app", "reporter_role": "parent", "school_code": "HN-1", field: nested}
    with pytest.raises(ValidationError) as info:
        ReportIn.model_validate(data)
    assert field in {r["field"].split(".")[0] for r in field_reasons(info.value)}


# -- the pure cores --------------------------------------------------------------------------


@THOROUGH
@given(s.report_ins())
def test_classifier_decides_every_accepted_report(report: ReportIn) -> None:
    decision = CLASSIFIER.classify(report)
    assert isinstance(decision, Decision)
    assert decision.rules_version == CLASSIFIER.version
    if report.immediate_danger:
        assert decision.severity == "critical"
    _round_trips(decision)


@QUICK
@given(s.reports_submitted(), decisions, s.any_datetimes())
def test_open_incident_accepts_every_submitted_report(
    submitted: ReportSubmitted, decision: Decision, now: datetime
) -> None:
    result = open_incident(submitted, decision, now)
    assert result.incident.report == submitted.report
    assert result.incident.decision == decision
    _round_trips(result.incident)
    _round_trips(result.audit)
    text = submitted.report.description
    if len(text) >= 20 and text not in decision.model_dump_json():
        assert text not in result.audit.model_dump_json(), "audit events never carry report text"


@THOROUGH
@given(
    s.incidents_classified(),
    s.any_datetimes(),
    st.none() | s.lists(st.sampled_from(list(Tier)), 0, 6),
    st.integers(0, 10**6),
)
def test_routing_plans_every_classified_incident(
    incident: IncidentClassified, now: datetime, tiers: list[Tier] | None, step: int
) -> None:
    plan = plan_notifications(incident, POLICY, INDEX, now=now, tiers=tiers, step=step)
    assert isinstance(plan.audit, AuditEvent)
    _round_trips(plan.audit)
    emails = [n.recipient.email.lower() for n in plan.notifications]
    assert len(emails) == len(set(emails)), "one request per recipient"
    for request in plan.notifications:
        assert isinstance(request, NotificationRequest)
        assert request.step == step and request.incident_id == incident.incident_id
        if request.recipient.tier is Tier.school:
            assert request.contact is None, "the school tier never sees the reporter's contact"
        _round_trips(request)
    wanted = tiers if tiers is not None else POLICY.severities[incident.decision.severity].notify
    if wanted:
        assert plan.notifications, "a tier that is asked for is never left without a recipient"


# -- the YAML loaders ----------------------------------------------------------------------------

YAML_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20)
)
YAML_VALUES = st.recursive(
    YAML_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def _shipped(name: str) -> Any:
    import yaml

    return yaml.safe_load((DEFAULT_CONFIG_DIR / name).read_text("utf-8"))


@pytest.mark.parametrize(
    ("name", "model"),
    [("policy.yaml", Policy), ("directory.yaml", Directory)],
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_config_files_fail_only_with_a_config_error(name: str, model: Any, data: Any) -> None:
    """Whatever an operator writes (broken YAML, a shipped file with a value replaced at any
    depth), loading gives the model or a ConfigError naming where, never another exception."""
    import yaml

    from schemas.rules import ClassificationRules
    from schemas.yaml_loader import ConfigError, parse_yaml_text

    model = model or ClassificationRules
    base = _shipped(name)
    choice = data.draw(st.sampled_from(["garbage", "mutated"]))
    if choice == "garbage":
        text = data.draw(st.text(max_size=200))
    else:
        doc = base
        path: list[Any] = []
        while isinstance(doc, dict | list) and doc and data.draw(st.booleans()):
            key = data.draw(
                st.sampled_from(list(doc) if isinstance(doc, dict) else range(len(doc)))
            )
            path.append(key)
            doc = doc[key]
        mutated = json.loads(json.dumps(base))
        target = mutated
        for key in path[:-1]:
            target = target[key]
        if path:
            target[path[-1]] = data.draw(YAML_VALUES)
        else:
            mutated = data.draw(YAML_VALUES)
        text = yaml.safe_dump(mutated, allow_unicode=True)
    try:
        parse_yaml_text(text, model, name)
    except ConfigError as exc:
        assert name in str(exc)
