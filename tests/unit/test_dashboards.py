"""The Grafana dashboard and the Prometheus rules only query metrics and labels the code defines.

A renamed metric or label would otherwise leave an empty panel, or an alert that can never
fire, and nobody would notice until the day it mattered. The metric names come from the
code itself: each component's metrics class is instantiated on a fresh registry, and the
source is scanned so that a metric outside those classes is noticed too.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from consumers.audit.worker import AuditMetrics
from consumers.dead_letters import DeadLetterMetrics
from consumers.kafka_io import LoopMetrics
from consumers.notifier.worker import NotifierMetrics
from escalate.components import METRICS_OFFSET
from escalate.liveness import LivenessMetrics
from escalate.settings import Settings
from producers.intake.app import IntakeMetrics
from stream_processors.app import ProcessorMetrics
from stream_processors.escalation.worker import EscalatorMetrics
from stream_processors.grouping.worker import GrouperMetrics
from tests.conftest import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "escalate-dashboard.json"
PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
SOURCE_DIRS = ("escalate", "producers", "stream_processors", "consumers")
METRIC_CLASSES = ("Counter", "Gauge", "Histogram", "Summary", "Info", "Enum")

# Labels Prometheus attaches at scrape time (deploy/prometheus/prometheus.yml), not the code.
TARGET_LABELS = frozenset({"job", "instance", "component"})
# Series Prometheus makes itself for every target.
SCRAPE_SERIES: dict[str, frozenset[str]] = {"up": TARGET_LABELS}
PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "offset", "bool", "inf", "nan", "atan2", "start", "end"}
)
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
IDENTIFIER = re.compile(r"(?<![\w$.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def sample_names(family: str, kind: str) -> list[str]:
    """The series names prometheus_client exposes for one metric family."""
    suffixes = {
        "counter": ["_total", "_created"],
        "gauge": [""],
        "histogram": ["_bucket", "_count", "_sum", "_created"],
        "summary": ["", "_count", "_sum", "_created"],
        "info": ["_info"],
        "stateset": [""],
    }[kind]
    return [family + s for s in suffixes]


def registry_families() -> dict[str, str]:
    """Family name to type, as the running components register them."""
    registry = CollectorRegistry()
    IntakeMetrics(registry)
    ProcessorMetrics(registry)
    NotifierMetrics(registry)
    AuditMetrics(registry)
    DeadLetterMetrics(registry)
    LoopMetrics(registry)
    EscalatorMetrics(registry)
    GrouperMetrics(registry)
    LivenessMetrics(registry)
    return {family.name: family.type for family in registry.collect()}


def source_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """Family name to (type, label names), read from every metric constructor in the source."""
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for top in SOURCE_DIRS:
        for path in sorted((REPO / top).rglob("*.py")):
            tree = ast.parse(path.read_text("utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if name not in METRIC_CLASSES or not node.args:
                    continue
                first = node.args[0]
                if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                    continue
                labels_node: ast.expr | None = node.args[2] if len(node.args) > 2 else None
                for kw in node.keywords:
                    if kw.arg == "labelnames":
                        labels_node = kw.value
                labels: frozenset[str] = frozenset()
                if isinstance(labels_node, ast.List | ast.Tuple):
                    labels = frozenset(
                        e.value
                        for e in labels_node.elts
                        if isinstance(e, ast.Constant) and isinstance(e.value, str)
                    )
                family = first.value
                if name == "Counter":
                    family = family.removesuffix("_total")
                found[family] = (name.lower(), labels)
    return found


@dataclass(frozen=True)
class Catalogue:
    """Every series name a query may use, with the labels it can carry."""

    labels: dict[str, frozenset[str]]


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    families = registry_families()
    in_source = source_metrics()
    assert set(in_source) == set(families), (
        "metrics defined in the source but not registered by the metric classes this test "
        "instantiates (or the reverse); add the new class to registry_families(): "
        f"{sorted(set(in_source) ^ set(families))}"
    )
    labels: dict[str, frozenset[str]] = dict(SCRAPE_SERIES)
    for family, kind in families.items():
        own = in_source[family][1] | TARGET_LABELS
        for sample in sample_names(family, kind):
            labels[sample] = own | {"le"} if sample.endswith("_bucket") else own
    return Catalogue(labels)


@dataclass
class Parsed:
    metrics: set[str]
    matcher_labels: dict[str, set[str]]
    grouping_labels: set[str]


def parse_promql(expr: str) -> Parsed:
    """Pull metric names and label names out of a PromQL expression (a lexer, not a parser).

    Good enough for the expressions in this repository: strings, Grafana variables, ranges
    and label lists are cut out first, so what is left are functions (followed by '('),
    keywords and metric names.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "", text)
    grouping: set[str] = set()
    for match in GROUPING.finditer(text):
        grouping.update(x.strip() for x in match.group(2).split(",") if x.strip())
    text = GROUPING.sub(" ", text)
    matchers: dict[str, set[str]] = {}
    for match in SELECTOR.finditer(text):
        name = match.group(1) or ""
        matchers.setdefault(name, set()).update(MATCHER_LABEL.findall(match.group(2)))
    text = SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    metrics = {
        m.group(1)
        for m in IDENTIFIER.finditer(text)
        if not m.group(2) and m.group(1).lower() not in PROMQL_KEYWORDS
    }
    metrics.update(name for name in matchers if name)
    return Parsed(metrics, matchers, grouping)


def problems_in(expr: str, catalogue: Catalogue, legend: str = "") -> list[str]:
    """What in one expression does not exist in the code (empty when all is well)."""
    parsed = parse_promql(expr)
    problems = [f"unknown metric {m!r}" for m in sorted(parsed.metrics - set(catalogue.labels))]
    known = [m for m in parsed.metrics if m in catalogue.labels]
    available: set[str] = set().union(*(catalogue.labels[m] for m in known)) if known else set()
    for metric, used in parsed.matcher_labels.items():
        allowed = catalogue.labels.get(metric, available) if metric else available
        problems += [
            f"{metric or 'selector'} has no label {lab!r}" for lab in sorted(used - allowed)
        ]
    problems += [
        f"no metric here has label {lab!r}" for lab in sorted(parsed.grouping_labels - available)
    ]
    # After an aggregation only its grouping labels are left to name a series by.
    shown = parsed.grouping_labels or available
    for lab in sorted(set(LEGEND_LABEL.findall(legend)) - shown):
        problems.append(f"legend uses {lab!r}, which the result does not have")
    return problems


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text("utf-8"))
    return data


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_targets() -> list[tuple[str, dict[str, Any]]]:
    return [
        (panel["title"], target)
        for panel in all_panels(load_dashboard())
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text("utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


# --- the checker itself must be able to fail -------------------------------------------------


def test_checker_catches_a_renamed_metric_and_label(catalogue: Catalogue) -> None:
    good = 'sum by (tier) (rate(escalate_notifications_total{status="failed"}[$__rate_interval]))'
    assert problems_in(good, catalogue, "{{tier}}") == []
    assert problems_in(good.replace("notifications_total", "notification_total"), catalogue)
    assert problems_in(good.replace('status="failed"', 'outcome="failed"'), catalogue)
    assert problems_in(good.replace("by (tier)", "by (category)"), catalogue)
    assert problems_in(good, catalogue, "{{school_code}}")
    histogram = (
        "histogram_quantile(0.95,"
        " sum by (le, tier) (rate(escalate_notification_send_seconds_bucket[5m])))"
    )
    assert problems_in(histogram, catalogue, "{{tier}}") == []


def test_parser_sees_through_functions_keywords_and_offsets() -> None:
    parsed = parse_promql(
        "sum by (component) (x_total unless x_total offset 15m) > 0"
        ' or vector(0) and on (job) up{job="a b"}'
    )
    assert parsed.metrics == {"x_total", "up"}
    assert parsed.grouping_labels == {"component", "job"}
    assert parsed.matcher_labels == {"up": {"job"}}


def test_every_metric_in_the_source_is_registered(catalogue: Catalogue) -> None:
    # The fixture does the comparison; this makes its failure a test of its own.
    assert "escalate_notifications_total" in catalogue.labels


# --- the dashboard ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "target"), dashboard_targets(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_dashboard_queries_use_only_defined_metrics_and_labels(
    title: str, target: dict[str, Any], catalogue: Catalogue
) -> None:
    problems = problems_in(target["expr"], catalogue, target.get("legendFormat", ""))
    assert problems == [], f"panel {title!r}, query {target['expr']!r}: {problems}"


def test_dashboard_covers_what_operators_watch() -> None:
    used = set().union(*(parse_promql(t["expr"]).metrics for _, t in dashboard_targets()))
    wanted = {
        "escalate_intake_reports_total",
        "escalate_reports_classified_total",
        "escalate_notifications_total",
        "escalate_notification_send_seconds_bucket",
        "escalate_dead_letters_total",
        "escalate_consumer_pauses_total",
        "escalate_escalation_steps_total",
        "escalate_escalation_lateness_seconds_bucket",
        "escalate_incident_actions_total",
        "escalate_action_links_refused_total",
        "escalate_audit_events_total",
        "escalate_policy_loaded_timestamp_seconds",
        "escalate_unknown_school_total",
        "up",
    }
    assert wanted <= used, sorted(wanted - used)


def test_dashboard_structure() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & mine, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_dashboard_has_no_per_report_labels() -> None:
    """Grouping by an id or free text would put report details on screen and in Prometheus."""
    forbidden = {"report_id", "incident_id", "tracking_code", "school_code", "email", "phone"}
    for title, target in dashboard_targets():
        parsed = parse_promql(target["expr"])
        assert not parsed.grouping_labels & forbidden, title


# --- provisioning and Prometheus configuration -----------------------------------------------


def test_grafana_provisioning_files() -> None:
    ds = yaml.safe_load((PROVISIONING / "datasources" / "escalate-prometheus.yml").read_text())
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    boards = yaml.safe_load((PROVISIONING / "dashboards" / "escalate.yml").read_text())
    (provider,) = boards["providers"]
    assert provider["type"] == "file" and Path(provider["options"]["path"]).is_absolute()


def test_alert_rules_use_only_defined_metrics_and_labels(catalogue: Catalogue) -> None:
    rules = alert_rules()
    assert rules
    for rule in rules:
        problems = problems_in(rule["expr"], catalogue)
        assert problems == [], f"alert {rule['alert']}: {problems}"
        parsed = parse_promql(rule["expr"])
        in_text = " ".join(rule.get("annotations", {}).values())
        kept = parsed.grouping_labels or catalogue.labels["up"]
        for label in re.findall(r"\$labels\.(\w+)", in_text):
            assert label in kept, (
                f"alert {rule['alert']} annotation uses {label}, which its expression drops"
            )


def test_scrape_targets_match_the_component_ports() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text("utf-8"))
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "escalate"
    ports: dict[str, int] = {}
    for static in job["static_configs"]:
        (target,) = static["targets"]
        ports[static["labels"]["component"]] = int(target.rsplit(":", 1)[1])
    assert set(ports) == {"intake", *METRICS_OFFSET}
    assert ports["intake"] == Settings.model_fields["http_port"].default
    bases = {ports[name] - offset for name, offset in METRICS_OFFSET.items()}
    assert bases == {9400}, "processors, notifier and audit must be ESCALATE_METRICS_PORT + 1..3"
