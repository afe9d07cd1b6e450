"""The Kubernetes manifests, rendered per overlay and checked offline, in two layers.

1. Schemas: every core kind against Kubernetes' own OpenAPI schemas (kubernetes-validate,
   strict: unknown fields fail), every custom resource against the JSON Schema made from its
   operator's CRD (deploy/kubernetes/schemas/, written by deploy/tools/make-crds). A kind with
   neither fails: nothing passes unchecked.
2. What schemas cannot see: labels that must agree across objects, requests against limits,
   probes against declared ports, the pod hardening, autoscaling bounds against the partition
   count, the KafkaTopics against `escalate topics manifest`, no Secret in git.

Each rule is also shown to fail: the last tests break one thing in a copy of the rendered
output and expect the layer meant for it to refuse the copy. The API server's own checks
(a real dry-run) are tests/deploy/server/, outside `make test`.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

from escalate.topics_admin import TopicLayout, topic_manifests

Doc = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
SCHEMAS = KUBERNETES / "schemas"
OVERLAYS = sorted(p.parent.name for p in (KUBERNETES / "overlays").glob("*/kustomization.yaml"))
#: the Kubernetes minor version the manifests target (the server dry-run runs v1.32 too)
KUBERNETES_VERSION = "1.32"
#: kustomize as embedded in kubectl 1.32: the fallback build renders what kubectl would
KUSTOMIZE_VERSION = "v5.5.0"
TOOLS = Path(os.environ.get("ESCALATE_TOOLS", Path.home() / ".cache" / "escalate" / "tools"))

PART_OF = "app.kubernetes.io/part-of"
COMPONENT = "app.kubernetes.io/component"
CONFIG_MAP = "escalate-config"
#: the consumer groups the autoscalers may watch, and the topics each reads, as the code names
#: them: the faust app id (stream_processors/app.py) and the notifier's two lanes
#: (consumers/notifier/worker.py), all behind ESCALATE_APP_ID
GROUP_TOPICS = {
    "{app}-processors": {"reports.submitted.v1", "incidents.classified.v1"},
    "{app}-notifier": {"notifications.requested.v1"},
    "{app}-notifier-urgent": {"notifications.urgent.v1"},
}


# ---- rendering ----------------------------------------------------------------------------


def kustomize_command() -> list[str]:
    """`kubectl kustomize` where kubectl is installed; else kustomize itself, built once from
    the Go module proxy into the tools cache (cold: ~90 s of CPU, 6 min on a busy 2-core
    machine, 300 MB of module and build cache; the same output as kubectl's)."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    binary = TOOLS / "bin" / "kustomize"
    if not binary.exists():
        if shutil.which("go") is None:
            pytest.fail("rendering needs kubectl, or go to build kustomize: neither is on PATH")
        binary.parent.mkdir(parents=True, exist_ok=True)
        # One build at a time when several test processes start together.
        with open(TOOLS / "kustomize.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not binary.exists():
                env = {
                    **os.environ,
                    "GOBIN": str(binary.parent),
                    "GOPATH": str(TOOLS / "go"),
                    "GOCACHE": str(TOOLS / "go" / "cache"),
                }
                subprocess.run(
                    ["go", "install", f"sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}"],
                    env=env,
                    check=True,
                    timeout=900,
                )
    return [str(binary), "build"]


@cache
def _rendered(overlay: str) -> tuple[Doc, ...]:
    done = subprocess.run(
        [*kustomize_command(), str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def render(overlay: str) -> list[Doc]:
    """The overlay as kustomize renders it; a fresh copy each time, free to be broken."""
    return copy.deepcopy(list(_rendered(overlay)))


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ---- layer 1: schemas ---------------------------------------------------------------------


def _name(doc: Doc) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


@cache
def _core_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    """What `kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)` checks, built
    once per kind: that function reads and resolves the whole definitions file on every call,
    about 30 ms a document."""
    from kubernetes_validate.utils import all_versions, major_minor, schema_contents
    from packaging.version import Version

    # As validate() does: the newest schemas not newer than the version asked for, and the
    # group's first word in the file name (apps/v1 -> apps-v1, networking.k8s.io/v1 ->
    # networking-v1).
    wanted = Version(KUBERNETES_VERSION)
    version = [v for v in all_versions() if Version(major_minor(v)) <= wanted][-1]
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    file_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = schema_contents(f"{folder}/{kind.lower()}-{file_version}.json", version)
    except FileNotFoundError:
        return None
    definitions = schema_contents(f"{folder}/_definitions.json", version)
    registry: Registry = Resource.from_contents(definitions) @ (
        Resource.from_contents(schema) @ Registry()
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


@cache
def _crd_validator(group: str, kind: str, version: str) -> jsonschema.protocols.Validator | None:
    path = SCHEMAS / group / f"{kind.lower()}_{version}.json"
    if not path.exists():
        return None
    return jsonschema.Draft7Validator(json.loads(path.read_text()))


def schema_problems(doc: Doc) -> list[str]:
    """Problems the schemas find in one document: Kubernetes' own for core kinds, the CRD's for
    custom resources; no schema at all is a problem too."""
    api_version, kind = str(doc.get("apiVersion", "")), str(doc.get("kind", ""))
    group, _, version = api_version.rpartition("/")
    # Kubernetes' own groups are "" (v1), one word (apps) or *.k8s.io. The split is by group,
    # not by asking kubernetes-validate first: it looks schemas up by the group's first word,
    # so a custom `networking.example.org/v1 Ingress` would be checked as a core Ingress.
    if "." not in group or group.endswith(".k8s.io"):
        validator = _core_validator(api_version, kind)
    else:
        validator = _crd_validator(group, kind, version)
    if validator is None:
        return [f"{_name(doc)}: no schema for {api_version} {kind} (an unknown kind)"]
    return [
        f"{_name(doc)}: {'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
        for e in validator.iter_errors(doc)
    ]


def all_schema_problems(docs: list[Doc]) -> list[str]:
    return [problem for doc in docs for problem in schema_problems(doc)]


# ---- layer 2: what the schemas cannot see -------------------------------------------------

_SUFFIXES = {
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
}


def quantity(value: object) -> Decimal:
    """A Kubernetes resource quantity ("500m", "1Gi", 2) as a number."""
    match = re.fullmatch(r"([0-9.]+(?:[eE][-+]?[0-9]+)?)([a-zA-Z]*)", str(value))
    if not match or (match[2] and match[2] not in _SUFFIXES):
        raise ValueError(f"not a quantity: {value!r}")
    return Decimal(match[1]) * _SUFFIXES.get(match[2], Decimal(1))


def _of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d.get("kind") == kind]


def _pod_spec(doc: Doc) -> Doc:
    spec: Doc = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec


def _selects(selector: Doc, labels: Doc) -> bool:
    if selector.get("matchExpressions"):
        return False  # not used here; matchLabels alone keeps every selector readable
    wanted = selector.get("matchLabels") or {}
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def _config(docs: list[Doc]) -> Doc:
    maps = [
        d
        for d in _of_kind(docs, "ConfigMap")
        if re.fullmatch(rf"{CONFIG_MAP}(-[a-z0-9]+)?", d["metadata"]["name"])
    ]
    assert len(maps) == 1, f"one ConfigMap {CONFIG_MAP} expected, found {len(maps)}"
    return dict(maps[0].get("data", {}))


#: settings that must come from a Secret, never a value in the manifest
SECRET_NAMES = re.compile(r"SECRET|TOKEN|KEY|PASSWORD|DATABASE_URL")
HARDENED = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
}


def _container_problems(doc: Doc, container: Doc, probes: bool) -> list[str]:
    where = f"{_name(doc)} container {container.get('name')}"
    problems = []
    context = container.get("securityContext") or {}
    for key, value in HARDENED.items():
        if context.get(key) != value:
            problems.append(f"{where}: securityContext.{key} is not {value}")
    if (context.get("capabilities") or {}).get("drop") != ["ALL"]:
        problems.append(f"{where}: securityContext.capabilities.drop is not [ALL]")
    if (context.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: securityContext.seccompProfile is not RuntimeDefault")
    resources = container.get("resources") or {}
    for resource in ("cpu", "memory"):
        request = (resources.get("requests") or {}).get(resource)
        limit = (resources.get("limits") or {}).get(resource)
        if request is None or limit is None:
            problems.append(f"{where}: no {resource} request and limit")
        elif quantity(request) > quantity(limit):
            problems.append(f"{where}: {resource} request {request} above its limit {limit}")
    if probes:
        ports = {p.get("name") for p in container.get("ports", [])} | {
            p.get("containerPort") for p in container.get("ports", [])
        }
        for probe in ("livenessProbe", "readinessProbe"):
            spec = container.get(probe) or {}
            action = spec.get("httpGet") or spec.get("tcpSocket")
            if action is None:
                problems.append(f"{where}: no {probe} (httpGet or tcpSocket)")
            elif action.get("port") not in ports - {None}:
                problems.append(f"{where}: {probe} on port {action.get('port')}, not declared")
    return problems


def workload_problems(docs: list[Doc]) -> list[str]:
    """Deployments and Jobs: selectors, hardening, resources, probes, settings by reference."""
    problems = []
    config_names = {d["metadata"]["name"] for d in _of_kind(docs, "ConfigMap")}
    for doc in _of_kind(docs, "Deployment") + _of_kind(docs, "Job"):
        pod = _pod_spec(doc)
        labels = doc.get("spec", {}).get("template", {}).get("metadata", {}).get("labels") or {}
        is_deployment = doc["kind"] == "Deployment"
        if is_deployment and not _selects(doc["spec"].get("selector") or {}, labels):
            problems.append(f"{_name(doc)}: selector does not match the pod template's labels")
        if labels.get(PART_OF) != "incident-escalation" or not labels.get(COMPONENT):
            problems.append(f"{_name(doc)}: pods lack the {PART_OF} and {COMPONENT} labels")
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{_name(doc)}: mounts an API token it never uses")
        mounts_by_container = {
            c.get("name"): {m.get("mountPath") for m in c.get("volumeMounts", [])}
            for c in pod.get("containers", [])
        }
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            problems += _container_problems(doc, container, probes=is_deployment)
            if not {"/var/lib/escalate", "/tmp"} <= mounts_by_container.get(
                container.get("name"), set()
            ):
                problems.append(f"{_name(doc)}: /var/lib/escalate and /tmp not both mounted")
            if is_deployment:
                refs = {
                    (e.get("configMapRef") or {}).get("name") for e in container.get("envFrom", [])
                }
                if not refs & config_names:
                    problems.append(f"{_name(doc)}: settings ConfigMap not in envFrom")
            for env in container.get("env", []):
                if "value" in env and SECRET_NAMES.search(env["name"]):
                    problems.append(f"{_name(doc)}: {env['name']} written inline, not referenced")
    return problems


def _deployment(docs: list[Doc], name: str) -> Doc | None:
    return next((d for d in _of_kind(docs, "Deployment") if d["metadata"]["name"] == name), None)


def scaling_problems(docs: list[Doc]) -> list[str]:
    """Autoscalers against their Deployments, the topics' partitions and the code's groups."""
    problems = []
    settings = _config(docs)
    namespace = _namespace(docs)
    partitions = {
        t["spec"].get("topicName", t["metadata"]["name"]): t["spec"].get("partitions", 0)
        for t in _of_kind(docs, "KafkaTopic")
    }
    prefix = settings.get("ESCALATE_TOPIC_PREFIX", "")
    app = settings.get("ESCALATE_APP_ID", "escalate")
    groups = {
        group.format(app=app): {prefix + topic for topic in topics}
        for group, topics in GROUP_TOPICS.items()
    }
    kafkas = [k["metadata"]["name"] for k in _of_kind(docs, "Kafka")]
    bootstraps = {f"{k}-kafka-bootstrap.{namespace}.svc:9092" for k in kafkas}
    for scaled in _of_kind(docs, "ScaledObject"):
        spec = scaled.get("spec", {})
        target = _deployment(docs, (spec.get("scaleTargetRef") or {}).get("name", ""))
        if target is None:
            problems.append(f"{_name(scaled)}: scales no Deployment of this overlay")
        elif "replicas" in target["spec"]:
            problems.append(f"{_name(scaled)}: its Deployment sets replicas, which KEDA owns")
        topics = set()
        for trigger in spec.get("triggers", []):
            meta = trigger.get("metadata") or {}
            if trigger.get("type") != "kafka":
                continue
            group, topic = str(meta.get("consumerGroup")), meta.get("topic")
            if topic not in groups.get(group, set()):
                problems.append(f"{_name(scaled)}: group {group} does not read topic {topic}")
            if meta.get("bootstrapServers") not in bootstraps:
                problems.append(
                    f"{_name(scaled)}: bootstrap {meta.get('bootstrapServers')} is not one of "
                    f"{sorted(bootstraps)} (KEDA runs in another namespace)"
                )
            topics.add(topic)
        if not topics:
            problems.append(f"{_name(scaled)}: no kafka trigger")
        for topic in topics:
            count = partitions.get(topic)
            if count is None:
                problems.append(f"{_name(scaled)}: topic {topic} is no KafkaTopic here")
            elif spec.get("maxReplicaCount", 100) > count:
                problems.append(
                    f"{_name(scaled)}: maxReplicaCount {spec.get('maxReplicaCount', 100)} "
                    f"above the {count} partitions of {topic}"
                )
        if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
            problems.append(f"{_name(scaled)}: minReplicaCount above maxReplicaCount")
    for hpa in _of_kind(docs, "HorizontalPodAutoscaler"):
        spec = hpa.get("spec", {})
        target = _deployment(docs, spec.get("scaleTargetRef", {}).get("name", ""))
        if target is None:
            problems.append(f"{_name(hpa)}: scales no Deployment of this overlay")
        elif "replicas" in target["spec"]:
            problems.append(f"{_name(hpa)}: its Deployment sets replicas, which the HPA owns")
        if not 1 <= spec.get("minReplicas", 1) <= spec.get("maxReplicas", 0):
            problems.append(f"{_name(hpa)}: replica bounds out of order")
    for pdb in _of_kind(docs, "PodDisruptionBudget"):
        spec = pdb.get("spec", {})
        if ("minAvailable" in spec) == ("maxUnavailable" in spec):
            problems.append(f"{_name(pdb)}: exactly one of minAvailable and maxUnavailable")
        selected = [
            d
            for d in _of_kind(docs, "Deployment")
            if _selects(spec.get("selector") or {}, _template_labels(d))
        ]
        if len(selected) != 1:
            problems.append(f"{_name(pdb)}: selects {len(selected)} Deployments, not one")
    return problems


def _template_labels(doc: Doc) -> Doc:
    return dict(doc.get("spec", {}).get("template", {}).get("metadata", {}).get("labels") or {})


def _namespace(docs: list[Doc]) -> str:
    namespaces = {d.get("metadata", {}).get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert len(namespaces) == 1, f"objects in several namespaces: {namespaces}"
    return str(namespaces.pop())


def kafka_problems(docs: list[Doc]) -> list[str]:
    """The KafkaTopics are `escalate topics manifest` for the overlay's settings, and the
    settings point at the Kafka resource's bootstrap Service."""
    settings = _config(docs)
    kafkas = _of_kind(docs, "Kafka")
    if len(kafkas) != 1:
        return [f"one Kafka resource expected, found {len(kafkas)}"]
    cluster = kafkas[0]["metadata"]["name"]
    problems = []
    if settings.get("ESCALATE_KAFKA_BOOTSTRAP_SERVERS") != f"{cluster}-kafka-bootstrap:9092":
        problems.append(f"ESCALATE_KAFKA_BOOTSTRAP_SERVERS is not {cluster}'s bootstrap Service")
    min_insync = settings.get("ESCALATE_TOPIC_MIN_INSYNC_REPLICAS")
    layout = TopicLayout(
        partitions=int(settings.get("ESCALATE_TOPIC_PARTITIONS", 6)),
        replication=int(settings.get("ESCALATE_TOPIC_REPLICATION", 1)),
        min_insync_replicas=int(min_insync) if min_insync else None,
    )
    wanted = {
        t["metadata"]["name"]: t
        for t in topic_manifests(layout, settings.get("ESCALATE_TOPIC_PREFIX", ""), cluster)
    }
    rendered = {t["metadata"]["name"]: t for t in _of_kind(docs, "KafkaTopic")}
    for name in sorted(wanted.keys() - rendered.keys()):
        problems.append(f"KafkaTopic/{name}: missing (see `escalate topics manifest`)")
    for name in sorted(rendered.keys() - wanted.keys()):
        problems.append(f"KafkaTopic/{name}: not a topic of schemas/topics.py")
    for name in sorted(wanted.keys() & rendered.keys()):
        have, want = rendered[name], wanted[name]
        if have.get("apiVersion") != want["apiVersion"] or have.get("spec") != want["spec"]:
            problems.append(
                f"KafkaTopic/{name}: {have.get('spec')} is not `escalate topics manifest`'s "
                f"{want['spec']} for this overlay's settings"
            )
        labels = have.get("metadata", {}).get("labels") or {}
        if labels.get("strimzi.io/cluster") != cluster:
            problems.append(f"KafkaTopic/{name}: not labelled for the Kafka cluster {cluster}")
    return problems


def exposure_problems(docs: list[Doc]) -> list[str]:
    """No secret in git; the Ingress reaches the intake, at the host the mails link to."""
    problems = [f"{_name(d)}: a Secret in the manifests" for d in _of_kind(docs, "Secret")]
    services = {s["metadata"]["name"]: s for s in _of_kind(docs, "Service")}
    public = urlsplit(_config(docs).get("ESCALATE_PUBLIC_URL", "")).hostname
    for ingress in _of_kind(docs, "Ingress"):
        for rule in ingress["spec"].get("rules", []):
            if rule.get("host") != public:
                problems.append(
                    f"{_name(ingress)}: host {rule.get('host')}, links in mails go to {public}"
                )
            for path in rule.get("http", {}).get("paths", []):
                backend = path.get("backend", {}).get("service", {})
                service = services.get(backend.get("name"))
                ports = (service or {}).get("spec", {}).get("ports", [])
                if backend.get("port", {}).get("name") not in {p.get("name") for p in ports}:
                    problems.append(f"{_name(ingress)}: {path.get('path')} has no Service port")
    for service in services.values():
        selector = service["spec"].get("selector") or {}
        if not any(
            all(_template_labels(d).get(k) == v for k, v in selector.items())
            for d in _of_kind(docs, "Deployment")
        ):
            problems.append(f"{_name(service)}: selects no pods")
    return problems


DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def name_problems(docs: list[Doc]) -> list[str]:
    """Names the API server would refuse (the schemas take any string): a DNS subdomain for
    most objects, a DNS label for those that become host names."""
    problems = []
    for doc in docs:
        name = str(doc.get("metadata", {}).get("name", ""))
        label_only = doc.get("kind") in ("Service", "Namespace")
        if not (DNS_LABEL if label_only else DNS_SUBDOMAIN).fullmatch(name):
            problems.append(f"{_name(doc)}: not a valid name for a {doc.get('kind')}")
    return problems


def own_problems(docs: list[Doc]) -> list[str]:
    return (
        name_problems(docs)
        + workload_problems(docs)
        + scaling_problems(docs)
        + kafka_problems(docs)
        + exposure_problems(docs)
    )


# ---- the manifests as committed -----------------------------------------------------------


def test_every_overlay_is_found() -> None:
    assert "city" in OVERLAYS


def test_core_schemas_are_kubernetes_validate() -> None:
    """The cached validators judge as kubernetes-validate itself does (on a sample: it takes
    30 ms a document)."""
    import kubernetes_validate

    deployment = _find(render("city"), "Deployment", "intake")
    assert schema_problems(deployment) == []
    kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    _pod_spec(deployment)["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/"
    assert schema_problems(deployment) != []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    unknown = {"apiVersion": "apps/v1", "kind": "Deploymint", "metadata": {"name": "x"}}
    assert "unknown kind" in schema_problems(unknown)[0]
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(unknown, KUBERNETES_VERSION, strict=True)


def test_every_document_passes_its_schema(overlay: str) -> None:
    assert all_schema_problems(render(overlay)) == []


def test_what_schemas_miss_holds(overlay: str) -> None:
    assert own_problems(render(overlay)) == []


def test_every_component_runs_once(overlay: str) -> None:
    docs = render(overlay)
    deployments = {d["metadata"]["name"]: d for d in _of_kind(docs, "Deployment")}
    assert set(deployments) == {"intake", "processors", "grouper", "escalator", "notifier", "audit"}
    for name, doc in deployments.items():
        (container,) = _pod_spec(doc)["containers"]
        assert container["args"] == [name]
    (job,) = _of_kind(docs, "Job")
    assert _pod_spec(job)["containers"][0]["args"] == ["migrate"]
    images = {
        c["image"]
        for d in _of_kind(docs, "Deployment") + _of_kind(docs, "Job")
        for c in _pod_spec(d)["containers"]
    }
    assert len(images) == 1, images


def test_city_uses_its_registry() -> None:
    docs = render("city")
    for doc in _of_kind(docs, "Deployment") + _of_kind(docs, "Job"):
        for container in _pod_spec(doc)["containers"]:
            assert container["image"] == "registry.example.org/escalate/incident-escalation:0.1.0"


def test_worker_probes_use_the_metrics_ports() -> None:
    """The ports the code serves (escalate/components.py), not ones written here by hand."""
    from escalate.components import METRICS_OFFSET

    docs = render("city")
    port = int(_config(docs)["ESCALATE_METRICS_PORT"])
    for name, offset in METRICS_OFFSET.items():
        deployment = _deployment(docs, name)
        assert deployment is not None
        (container,) = _pod_spec(deployment)["containers"]
        assert container["ports"] == [{"name": "metrics", "containerPort": port + offset}]


def test_dashboard_configmap_is_the_dashboard() -> None:
    docs = render("city")
    dashboard = _find(docs, "ConfigMap", "escalate-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = REPO / "deploy" / "grafana" / "escalate-dashboard.json"
    assert dashboard["data"] == {source.name: source.read_text()}


def test_topics_file_is_the_generated_one() -> None:
    """kafka/topics.yaml in the base is `escalate topics manifest` output (its header says with
    which arguments); tests/unit/test_topics_manifest.py checks it byte for byte."""
    text = (KUBERNETES / "base" / "kafka" / "topics.yaml").read_text()
    assert text.startswith("# Generated from schemas/topics.py")


# ---- each check refuses what it is there for ----------------------------------------------


def _find(docs: list[Doc], kind: str, name: str) -> Doc:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _container(docs: list[Doc], name: str) -> Doc:
    container: Doc = _pod_spec(_find(docs, "Deployment", name))["containers"][0]
    return container


def _selector_mismatch(docs: list[Doc]) -> None:
    _find(docs, "Deployment", "grouper")["spec"]["selector"]["matchLabels"][COMPONENT] = "groupr"


def _partitions_zero(docs: list[Doc]) -> None:
    _find(docs, "KafkaTopic", "reports.submitted.v1")["spec"]["partitions"] = 0


def _memory_above_limit(docs: list[Doc]) -> None:
    _container(docs, "notifier")["resources"]["requests"]["memory"] = "2Gi"


def _no_security_context(docs: list[Doc]) -> None:
    del _container(docs, "audit")["securityContext"]


def _unknown_kind(docs: list[Doc]) -> None:
    docs.append(
        {
            "apiVersion": "example.org/v1",
            "kind": "KafkaConnectorish",
            "metadata": {"name": "x", "namespace": "escalate"},
        }
    )


def _misspelt_field(docs: list[Doc]) -> None:
    _container(docs, "intake")["livenessProbe"]["httpGet"]["paht"] = "/healthz"


def _misspelt_crd_field(docs: list[Doc]) -> None:
    _find(docs, "ScaledObject", "notifier")["spec"]["maxReplicas"] = 6


def _scaled_beyond_partitions(docs: list[Doc]) -> None:
    _find(docs, "ScaledObject", "processors")["spec"]["maxReplicaCount"] = 12


def _wrong_consumer_group(docs: list[Doc]) -> None:
    _find(docs, "ScaledObject", "processors")["spec"]["triggers"][0]["metadata"][
        "consumerGroup"
    ] = "escalate-processor"


def _short_bootstrap(docs: list[Doc]) -> None:
    _find(docs, "ScaledObject", "notifier")["spec"]["triggers"][0]["metadata"][
        "bootstrapServers"
    ] = "escalate-kafka-bootstrap:9092"


def _topic_off_layout(docs: list[Doc]) -> None:
    _find(docs, "KafkaTopic", "escalation.state.v1")["spec"]["partitions"] = 12


def _pdb_both(docs: list[Doc]) -> None:
    _find(docs, "PodDisruptionBudget", "intake")["spec"]["minAvailable"] = 1


def _secret_committed(docs: list[Doc]) -> None:
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "escalate-secrets", "namespace": "escalate"},
            "stringData": {"ESCALATE_SECRET_KEY": "x"},
        }
    )


def _probe_on_undeclared_port(docs: list[Doc]) -> None:
    _container(docs, "escalator")["readinessProbe"]["httpGet"]["port"] = 9405


def _no_liveness(docs: list[Doc]) -> None:
    del _container(docs, "processors")["livenessProbe"]


def _writable_root(docs: list[Doc]) -> None:
    _container(docs, "intake")["securityContext"]["readOnlyRootFilesystem"] = False


def _inline_secret(docs: list[Doc]) -> None:
    _container(docs, "audit")["env"] = [{"name": "ESCALATE_DATABASE_URL", "value": "postgres://"}]


def _replicas_under_hpa(docs: list[Doc]) -> None:
    _find(docs, "Deployment", "intake")["spec"]["replicas"] = 2


def _other_host(docs: list[Doc]) -> None:
    _find(docs, "Ingress", "intake")["spec"]["rules"][0]["host"] = "elsewhere.example.org"


def _bad_service_name(docs: list[Doc]) -> None:
    _find(docs, "Service", "intake")["metadata"]["name"] = "Intake_Svc"


def _hpa_max_zero(docs: list[Doc]) -> None:
    _find(docs, "HorizontalPodAutoscaler", "intake")["spec"]["maxReplicas"] = 0


SCHEMA, OWN = "schema", "own"
BROKEN: list[tuple[str, Callable[[list[Doc]], None], str, str]] = [
    # (case, how to break it, the layer that must refuse it, words of the problem it reports)
    ("selector not matching labels", _selector_mismatch, OWN, "selector does not match"),
    ("KafkaTopic with 0 partitions", _partitions_zero, SCHEMA, "partitions"),
    ("memory request above limit", _memory_above_limit, OWN, "memory request 2Gi above"),
    ("no securityContext", _no_security_context, OWN, "securityContext.runAsNonRoot"),
    ("unknown kind", _unknown_kind, SCHEMA, "unknown kind"),
    ("misspelt field of a core kind", _misspelt_field, SCHEMA, "paht"),
    ("misspelt field of a custom resource", _misspelt_crd_field, SCHEMA, "maxReplicas"),
    ("ScaledObject beyond the partitions", _scaled_beyond_partitions, OWN, "above the 6"),
    ("consumer group the code never uses", _wrong_consumer_group, OWN, "does not read"),
    ("bootstrap KEDA cannot resolve", _short_bootstrap, OWN, "KEDA runs in another"),
    ("KafkaTopic off the layout", _topic_off_layout, OWN, "escalate topics manifest"),
    ("PDB with both bounds", _pdb_both, OWN, "exactly one of"),
    ("a Secret in git", _secret_committed, OWN, "a Secret in the manifests"),
    ("probe on an undeclared port", _probe_on_undeclared_port, OWN, "not declared"),
    ("no liveness probe", _no_liveness, OWN, "no livenessProbe"),
    ("writable root filesystem", _writable_root, OWN, "readOnlyRootFilesystem"),
    ("a secret written inline", _inline_secret, OWN, "written inline"),
    ("replicas fighting the HPA", _replicas_under_hpa, OWN, "which the HPA owns"),
    ("Ingress host not the links' host", _other_host, OWN, "links in mails go to"),
    ("Service name no DNS label", _bad_service_name, OWN, "not a valid name"),
    ("HPA with maxReplicas 0", _hpa_max_zero, OWN, "replica bounds"),
]


@pytest.mark.parametrize(
    ("mutate", "layer", "words"),
    [pytest.param(m, layer, w, id=case) for case, m, layer, w in BROKEN],
)
def test_a_broken_copy_is_refused(
    mutate: Callable[[list[Doc]], None], layer: str, words: str
) -> None:
    docs = render("city")
    mutate(docs)
    problems = all_schema_problems(docs) if layer == SCHEMA else own_problems(docs)
    assert any(words in problem for problem in problems), problems


def test_quantities() -> None:
    assert quantity("500m") == Decimal("0.5")
    assert quantity("1Gi") == quantity("1024Mi") > quantity("1G")
    assert quantity(2) == 2
    with pytest.raises(ValueError):
        quantity("1GB")
