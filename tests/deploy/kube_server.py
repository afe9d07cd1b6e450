"""A throwaway Kubernetes API server (etcd + kube-apiserver, no nodes) for server-side dry-runs.

Only the API server runs the checks a cluster applies on admission: defaulting, the built-in
types' validation (selectors against template labels, requests against limits, PDB fields),
strict field validation, and the structural schemas of installed CRDs. Offline schema tools miss
most of these, so tests/deploy/server applies the rendered manifests here with
``kubectl apply --dry-run=server``. Nothing is scheduled: there is no kubelet or controller.

Everything binds to free loopback ports and lives in one temp dir; both processes are stopped by
pid when the ``kube_api_server`` context exits, also when start-up fails half-way, and they are
asked by the kernel to die with the test process if it is killed outright.

    with kube_api_server(apiserver=path, namespaces=["escalate"]) as kube:
        kube.kubectl("apply", "--dry-run=server", "-f", "-", input=text)
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.services.kafka import RESERVED_PORTS as KAFKA_TEST_PORTS

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "deploy" / "kubernetes" / "crds"
BUILD_SCRIPT = REPO / "deploy" / "tools" / "build-kube-apiserver"

# Ports other parts of the test suite own (test broker, fault-test cluster, ...): never hand
# one of them to etcd or the API server even if it happens to be free right now.
RESERVED_PORTS = KAFKA_TEST_PORTS


class KubeServerError(RuntimeError):
    """The server did not come up; the message carries the tail of its log."""


def build_tools() -> Path:
    """Path of a kube-apiserver binary, built (minutes, once) or found in the cache (instant);
    also installs etcd when missing. See deploy/tools/build-kube-apiserver."""
    out = subprocess.run(
        [str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True
    ).stdout.split()
    return Path(out[-1])


def free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in RESERVED_PORTS and port not in taken:
            taken.add(port)
            return port


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: if pytest is SIGKILLed, the kernel still stops etcd and the API server,
    # so no orphan keeps 350 MB and a port after a crashed run.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


@dataclass
class KubeServer:
    """A running server: its URL, an admin kubeconfig, and a kubectl bound to it."""

    url: str
    kubeconfig: Path
    workdir: Path
    kubectl_bin: str
    timings: dict[str, float] = field(default_factory=dict)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise KubeServerError(
                f"kubectl {' '.join(args)} exited with {proc.returncode}:\n{proc.stderr}"
            )
        return proc

    def dry_run(self, manifests: str) -> subprocess.CompletedProcess[str]:
        """`kubectl apply --dry-run=server` of a YAML stream; not checked, callers read it.
        kubectl's default --validate=strict makes the server refuse unknown fields too."""
        return self.kubectl(
            "apply", "--dry-run=server", "--validate=strict", "-f", "-", input=manifests,
            check=False,
        )  # fmt: skip

    def ensure_namespaces(self, names: Iterable[str]) -> None:
        """A server-side dry-run creates nothing, so namespaces the manifests put objects in
        must exist beforehand, even when the manifests also define them."""
        docs = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            for name in sorted(set(names))
        ]
        if docs:
            listing = {"apiVersion": "v1", "kind": "List", "items": docs}
            # Client-side apply, as the manifests' own Namespace will be applied later: then
            # kubectl finds its last-applied annotation and patches without a warning.
            self.kubectl("apply", "-f", "-", input=json.dumps(listing))

    def install_crds(self, crd_dir: Path = CRD_DIR) -> None:
        files = sorted(crd_dir.glob("*.yaml"))
        if not files:
            raise KubeServerError(f"no CRDs under {crd_dir}: run deploy/tools/make-crds")
        # Server-side apply: Strimzi's Kafka CRD is too large for the client-side
        # last-applied-configuration annotation (256 KB).
        args = ["apply", "--server-side", "--force-conflicts"]
        for path in files:
            args += ["-f", str(path)]
        self.kubectl(*args)
        self.kubectl("wait", "--for=condition=established", "--timeout=60s", "crd", "--all")


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes] | None, grace_s: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace_s)


def _wait_ready(
    url: str, token: str, procs: dict[str, tuple[subprocess.Popen[bytes], Path]], timeout_s: float
) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # its own self-signed serving certificate
    request = urllib.request.Request(f"{url}/readyz", headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        for name, (proc, log) in procs.items():
            if proc.poll() is not None:
                raise KubeServerError(f"{name} exited with {proc.returncode}:\n{_log_tail(log)}")
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    log = procs["kube-apiserver"][1]
    raise KubeServerError(f"/readyz not ok after {timeout_s} s ({last}):\n{_log_tail(log)}")


def _etcd_command(workdir: Path, client: int, peer: int) -> list[str]:
    etcd = shutil.which("etcd")
    if etcd is None:
        raise KubeServerError("etcd not found: run deploy/tools/build-kube-apiserver")
    return [
        etcd,
        "--name=escalate-test",
        f"--data-dir={workdir / 'etcd'}",
        f"--listen-client-urls=http://127.0.0.1:{client}",
        f"--advertise-client-urls=http://127.0.0.1:{client}",
        f"--listen-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-cluster=escalate-test=http://127.0.0.1:{peer}",
        "--initial-cluster-state=new",
    ]


def _apiserver_command(apiserver: Path, workdir: Path, etcd_client: int, port: int) -> list[str]:
    return [
        str(apiserver),
        f"--etcd-servers=http://127.0.0.1:{etcd_client}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={workdir / 'certs'}",  # self-signed serving cert made at start
        f"--service-account-key-file={workdir / 'sa.pub'}",
        f"--service-account-signing-key-file={workdir / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--token-auth-file={workdir / 'tokens.csv'}",
        "--authorization-mode=AlwaysAllow",
        # Pods would otherwise wait for a service-account token controller that is not running.
        "--disable-admission-plugins=ServiceAccount",
        "--service-cluster-ip-range=10.96.0.0/16",
        # No controller-manager to keep the `kubernetes` Service endpoints; don't try either.
        "--endpoint-reconciler-type=none",
        "--enable-priority-and-fairness=false",
        "--profiling=false",
    ]


def _write_kubeconfig(path: Path, url: str, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "local", "cluster": {"server": url, "insecure-skip-tls-verify": True}}
        ],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
        "current-context": "local",
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML; kubectl reads it as is
    path.chmod(0o600)


@contextlib.contextmanager
def kube_api_server(
    apiserver: Path | None = None,
    *,
    crd_dir: Path | None = CRD_DIR,
    namespaces: Iterable[str] = ("escalate", "monitoring"),
    ready_timeout_s: float = 120,
) -> Iterator[KubeServer]:
    """Start etcd and kube-apiserver, install the CRDs and namespaces, yield, then stop both.

    ``apiserver`` defaults to the one build-kube-apiserver makes; ``crd_dir=None`` skips CRDs.
    Set ESCALATE_KUBE_KEEP=1 to keep the temp dir (logs, kubeconfig) for a post-mortem.
    """
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise KubeServerError("kubectl not found on PATH")
    if apiserver is None:
        apiserver = build_tools()
    workdir = Path(tempfile.mkdtemp(prefix="escalate-kube-"))
    etcd_proc: subprocess.Popen[bytes] | None = None
    api_proc: subprocess.Popen[bytes] | None = None
    try:
        started = time.monotonic()
        subprocess.run(
            ["openssl", "genrsa", "-out", str(workdir / "sa.key"), "2048"],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            ["openssl", "rsa", "-in", str(workdir / "sa.key"), "-pubout", "-out",
             str(workdir / "sa.pub")],
            check=True, capture_output=True,
        )  # fmt: skip
        token = secrets.token_hex(16)
        (workdir / "tokens.csv").write_text(f"{token},admin,admin,system:masters\n")

        taken: set[int] = set()
        etcd_client, etcd_peer, port = free_port(taken), free_port(taken), free_port(taken)
        etcd_log, api_log = workdir / "etcd.log", workdir / "kube-apiserver.log"
        with etcd_log.open("wb") as out:
            etcd_proc = subprocess.Popen(
                _etcd_command(workdir, etcd_client, etcd_peer),
                stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )  # fmt: skip
        with api_log.open("wb") as out:
            api_proc = subprocess.Popen(
                _apiserver_command(apiserver, workdir, etcd_client, port),
                stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )  # fmt: skip
        url = f"https://127.0.0.1:{port}"
        procs = {"etcd": (etcd_proc, etcd_log), "kube-apiserver": (api_proc, api_log)}
        _wait_ready(url, token, procs, ready_timeout_s)
        ready = time.monotonic()

        kubeconfig = workdir / "kubeconfig"
        _write_kubeconfig(kubeconfig, url, token)
        server = KubeServer(url=url, kubeconfig=kubeconfig, workdir=workdir, kubectl_bin=kubectl)
        server.timings["start_to_ready_s"] = round(ready - started, 2)
        if crd_dir is not None:
            server.install_crds(crd_dir)
        server.ensure_namespaces(namespaces)
        server.timings["crds_and_namespaces_s"] = round(time.monotonic() - ready, 2)
        yield server
    finally:
        _stop(api_proc)
        _stop(etcd_proc)
        if os.environ.get("ESCALATE_KUBE_KEEP"):
            print(f"kube_server: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
