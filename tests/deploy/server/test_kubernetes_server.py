"""The Kubernetes manifests as a real API server judges them (issue 14).

Every overlay (and the base) is rendered with `kubectl kustomize` and applied with
`kubectl apply --dry-run=server` to a local kube-apiserver that has the operators' CRDs
installed: the server runs the built-in types' validation, strict field validation and the
CRDs' structural schemas, which offline schema checks (tests/deploy/test_kubernetes.py) mostly
cannot. Then broken copies, each one rendered document changed in one way, must be refused
with the server's reason for that change, and only for that document.

Cold, the first run builds kube-apiserver from the Go proxy (minutes, see
deploy/tools/build-kube-apiserver); afterwards the server starts in seconds.
"""

from __future__ import annotations

import copy
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.kube_server import KubeServer, build_tools, kube_api_server

# The first test's setup may build kube-apiserver from source: 19 min measured on a busy 2-core
# machine. Every kubectl call and the wait for /readyz have their own, shorter limits.
pytestmark = pytest.mark.timeout(2400)

REPO = Path(__file__).resolve().parents[3]
KUBE_DIR = REPO / "deploy" / "kubernetes"
TARGETS = sorted(
    [KUBE_DIR / "base", *(p.parent for p in (KUBE_DIR / "overlays").glob("*/kustomization.yaml"))]
)
TARGET_IDS = [str(p.relative_to(KUBE_DIR)) for p in TARGETS]

Doc = dict[str, Any]


def render(target: Path) -> str:
    proc = subprocess.run(
        ["kubectl", "kustomize", str(target)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"kubectl kustomize {target} failed:\n{proc.stderr}"
    return proc.stdout


# libyaml when present: each broken copy re-reads and re-writes the whole rendered stream.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load(stream: str) -> list[Doc]:
    return [d for d in yaml.load_all(stream, Loader=_Loader) if d]


def dump(docs: list[Doc]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False)


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    assert TARGETS, f"no kustomizations under {KUBE_DIR}"
    return {name: render(path) for name, path in zip(TARGET_IDS, TARGETS, strict=True)}


@pytest.fixture(scope="module")
def kube(rendered: dict[str, str]) -> Iterator[KubeServer]:
    t0 = time.monotonic()
    apiserver = build_tools()
    built = time.monotonic() - t0
    namespaces = {"escalate", "monitoring"}
    for stream in rendered.values():
        for doc in load(stream):
            meta = doc.get("metadata", {})
            if meta.get("namespace"):
                namespaces.add(meta["namespace"])
            if doc.get("kind") == "Namespace":
                namespaces.add(meta["name"])
    with kube_api_server(apiserver, namespaces=namespaces) as server:
        print(f"\nkube-apiserver: tools {built:.1f} s, {server.timings}")
        yield server


def _accepted(stdout: str) -> list[str]:
    """The objects a dry-run accepted: kubectl prints `kind.group/name created (server dry run)`
    for each and goes on past the refused ones."""
    return [line.split()[0] for line in stdout.splitlines() if line.endswith("(server dry run)")]


@pytest.mark.parametrize("target", TARGET_IDS)
def test_rendered_manifests_pass_a_server_side_dry_run(
    kube: KubeServer, rendered: dict[str, str], target: str
) -> None:
    docs = load(rendered[target])
    t0 = time.monotonic()
    proc = kube.dry_run(rendered[target])
    print(f"\n{target}: {len(docs)} objects, dry-run {time.monotonic() - t0:.1f} s")
    assert proc.returncode == 0, proc.stderr
    assert len(_accepted(proc.stdout)) == len(docs), proc.stdout


# --- broken copies --------------------------------------------------------------------------


@dataclass(frozen=True)
class Breakage:
    """One way of breaking one rendered document, and the server's words for refusing it."""

    name: str
    kind: str
    break_doc: Callable[[Doc], None]
    refusal: str  # regex the server's error for that object must match


def _containers(doc: Doc) -> list[Doc]:
    spec = doc["spec"]["template"]["spec"]
    containers: list[Doc] = spec["containers"]
    return containers


def _mismatch_selector(doc: Doc) -> None:
    doc["spec"]["selector"] = {"matchLabels": {"app.kubernetes.io/name": "not-the-template"}}


def _memory_request_above_limit(doc: Doc) -> None:
    # Keep the container's own limit when it has one; 1Ti is above any limit it could have.
    resources = _containers(doc)[0].setdefault("resources", {})
    resources.setdefault("limits", {}).setdefault("memory", "256Mi")
    resources.setdefault("requests", {})["memory"] = "1Ti"


def _both_pdb_bounds(doc: Doc) -> None:
    doc["spec"]["minAvailable"] = doc["spec"].get("minAvailable", 1)
    doc["spec"]["maxUnavailable"] = doc["spec"].get("maxUnavailable", 1)


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    *parents, last = path.split(".")

    def change(doc: Doc) -> None:
        node = doc
        for key in parents:
            node = node[key]
        node[last] = value

    return change


BREAKAGES = [
    Breakage(
        "selector-not-matching-template-labels",
        "Deployment",
        _mismatch_selector,
        r"`selector` does not match template `labels`",
    ),
    Breakage(
        "memory-request-above-limit",
        "Deployment",
        _memory_request_above_limit,
        r"must be less than or equal to memory limit",
    ),
    Breakage(
        "pdb-min-available-and-max-unavailable",
        "PodDisruptionBudget",
        _both_pdb_bounds,
        r"minAvailable and maxUnavailable cannot be both set",
    ),
    Breakage(
        "hpa-max-replicas-0",
        "HorizontalPodAutoscaler",
        _set("spec.maxReplicas", 0),
        r"spec\.maxReplicas: Invalid value: 0: must be greater than 0",
    ),
    Breakage(
        "kafkatopic-partitions-0",
        "KafkaTopic",
        _set("spec.partitions", 0),
        r"spec\.partitions: Invalid value: 0: spec\.partitions in body should be greater than or "
        r"equal to 1",
    ),
    Breakage(
        "scaledobject-unknown-field",
        "ScaledObject",
        # A plausible slip for pollingInterval: only strict field validation notices it.
        _set("spec.pollingIntervalSeconds", 15),
        r'unknown field "spec\.pollingIntervalSeconds"',
    ),
    Breakage(
        "unknown-kind",
        "Deployment",
        _set("kind", "Deploymnet"),
        r'no matches for kind "Deploymnet"',
    ),
]


def _broken_stream(rendered: dict[str, str], breakage: Breakage) -> tuple[str, int]:
    """The first rendering that has a document of the kind, with that one document broken;
    returns the stream and its number of documents."""
    for stream in rendered.values():
        docs = load(stream)
        for index, doc in enumerate(docs):
            if doc.get("kind") == breakage.kind:
                broken = copy.deepcopy(doc)
                breakage.break_doc(broken)
                docs[index] = broken
                return dump(docs), len(docs)
    pytest.fail(f"no rendered {breakage.kind} to break: the manifests changed, update this test")


@pytest.mark.parametrize("breakage", BREAKAGES, ids=[b.name for b in BREAKAGES])
def test_a_broken_copy_is_refused_by_the_server(
    kube: KubeServer, rendered: dict[str, str], breakage: Breakage
) -> None:
    stream, count = _broken_stream(rendered, breakage)
    proc = kube.dry_run(stream)
    assert proc.returncode != 0, f"{breakage.name} was accepted:\n{proc.stdout}"
    assert re.search(breakage.refusal, proc.stderr), proc.stderr
    # Refused for that change alone: every other document of the same stream still passes.
    assert len(_accepted(proc.stdout)) == count - 1, proc.stdout + proc.stderr
