"""A local Apache Kafka broker, or a cluster of them, run from jars that Maven fetches once.

There is no Docker and no Kafka tarball on the machines this project runs on, only Java and
Maven. ``deploy/kafka/pom.xml`` names the broker's jars; :func:`ensure_jars` copies them into
``<kafka_home>/libs`` once, and :func:`start` runs ``kafka.Kafka`` in KRaft combined mode
(broker and controller in one JVM) as a detached process. Every per-broker path carries the
client port, so several brokers (say a dev one on 9092 and a test one on 19092) can live side
by side under the same ``kafka_home`` and share the jar cache.

``start(settings, brokers=N)`` with N > 1 runs N such JVMs as one cluster: every node is a
broker and a voter of the controller quorum, node k listens on the configured client and
controller ports plus ``2 * (k - 1)``, and internal topics get replication min(3, N) with one
replica fewer required in sync. :func:`stop_node` kills or stops one node (to test broker
loss); :func:`start` with the same N brings it back.

Layout under ``kafka_home``::

    libs/                       jars + a marker naming the Kafka version (shared)
    data-<port>/server.properties
    data-<port>/server.log      the broker's own log (log4j2, INFO)
    data-<port>/kraft/          the KRaft metadata log and topic partitions
    broker-<port>.pid           pid of the JVM we started
    broker-<port>.out           its stdout/stderr (JVM errors, warnings)
    cluster-<port>/             a cluster whose node 1 has client port <port>:
        cluster.json            its cluster id, node count and quorum (checked on restart)
        node-<k>/               node k's server.properties, server.log and kraft/
        node-<k>.pid, node-<k>.out
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from escalate.settings import Settings

KAFKA_VERSION = "4.3.1"
"""Must match ``kafka.version`` in deploy/kafka/pom.xml; it names the jar cache's marker."""

DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy" / "kafka"
POM_FILE = DEPLOY_DIR / "pom.xml"
LOG4J2_FILE = DEPLOY_DIR / "log4j2.properties"

JVM_OPTIONS: tuple[str, ...] = (
    # Small, fixed heap: the box has 2 cores and is shared with the rest of the test suite.
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)

CLUSTER_JVM_OPTIONS: tuple[str, ...] = (
    # The client JIT only, for cluster nodes and for the (short-lived) storage tool. Three
    # brokers starting at once on two shared cores spend much of their start compiling with
    # C2: measured here, C1 alone cut a 3-node start from ~30 s to ~20 s and its CPU by 40%,
    # and local test traffic does not need C2's throughput. The single broker keeps JVM_OPTIONS
    # as they were.
    "-XX:TieredStopAtLevel=1",
)

STORAGE_TOOL = "kafka.tools.StorageTool"

MARKER_PREFIX = ".complete-kafka-"

Progress = Callable[[str], None]


class KafkaLocalError(RuntimeError):
    """The local broker could not be provisioned, started or stopped."""


def _quiet(_: str) -> None:
    """Default progress sink: library callers usually do not want chatter."""


def bootstrap_address(settings: Settings) -> str:
    """The address clients use; loopback only, the broker never listens elsewhere."""
    return f"127.0.0.1:{settings.kafka_port}"


def libs_dir(settings: Settings) -> Path:
    """Where the shared jar cache lives."""
    return settings.kafka_home / "libs"


def data_dir(settings: Settings) -> Path:
    """Per-port directory: config, broker log and partition data."""
    return settings.kafka_home / f"data-{settings.kafka_port}"


def pid_file(settings: Settings) -> Path:
    """Per-port pid file, so brokers on different ports do not step on each other."""
    return settings.kafka_home / f"broker-{settings.kafka_port}.pid"


def console_log(settings: Settings) -> Path:
    """Per-port file that receives the JVM's stdout and stderr."""
    return settings.kafka_home / f"broker-{settings.kafka_port}.out"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise jar downloads and starts across processes (parallel test workers, shells)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _require_tool(name: str, hint: str) -> str:
    """Resolve an executable or fail with a message that says what to install."""
    if name == "java":
        java_home = os.environ.get("JAVA_HOME")
        if java_home and (Path(java_home) / "bin" / "java").is_file():
            return str(Path(java_home) / "bin" / "java")
    found = shutil.which(name)
    if found is None:
        raise KafkaLocalError(f"`{name}` is not on PATH; {hint}")
    return found


def _java() -> str:
    """The java binary, checked to be new enough for a Kafka 4.x broker (17+)."""
    java = _require_tool(
        "java", "install a Java 17+ runtime (Debian: apt-get install default-jre-headless)"
    )
    proc = subprocess.run(
        [java, "-version"], capture_output=True, text=True, check=False, timeout=60
    )
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if match:
        major = int(match.group(1))
        if major == 1 and match.group(2):
            major = int(match.group(2))
        if major < 17:
            raise KafkaLocalError(f"Kafka {KAFKA_VERSION} needs Java 17+, but {java} is {major}")
    return java


def _jars_ready(libs: Path) -> bool:
    """True when a complete copy for this Kafka version is cached."""
    return (libs / f"{MARKER_PREFIX}{KAFKA_VERSION}").is_file()


def ensure_jars(settings: Settings, *, progress: Progress = _quiet) -> Path:
    """Make sure ``<kafka_home>/libs`` holds the broker's classpath; download it only once.

    Maven copies into a scratch directory that is renamed into place and then marked, so an
    interrupted download is never mistaken for a complete one.
    """
    libs = libs_dir(settings)
    if _jars_ready(libs):
        return libs
    with _file_lock(settings.kafka_home / ".libs.lock"):
        if _jars_ready(libs):
            return libs
        mvn = _require_tool("mvn", "install Maven (Debian: apt-get install maven)")
        if not POM_FILE.is_file():
            raise KafkaLocalError(f"{POM_FILE} is missing; run from a checkout of the project")
        scratch = settings.kafka_home / f"libs.partial-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        progress(f"downloading Kafka {KAFKA_VERSION} jars with Maven into {libs}")
        started = time.monotonic()
        cmd = [
            mvn,
            "-q",
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(POM_FILE),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={scratch}",
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
        )
        if proc.returncode != 0 or not any(scratch.glob("kafka_2.13-*.jar")):
            shutil.rmtree(scratch, ignore_errors=True)
            output = (proc.stdout + proc.stderr).strip().splitlines()[-30:]
            raise KafkaLocalError(
                f"mvn could not fetch the Kafka jars (exit {proc.returncode}):\n"
                + "\n".join(output)
            )
        shutil.rmtree(libs, ignore_errors=True)
        scratch.rename(libs)
        pom_digest = hashlib.sha256(POM_FILE.read_bytes()).hexdigest()
        (libs / f"{MARKER_PREFIX}{KAFKA_VERSION}").write_text(f"pom sha256 {pom_digest}\n")
        progress(f"jars ready in {time.monotonic() - started:.1f}s")
    return libs


@dataclass(frozen=True)
class _Node:
    """One broker+controller JVM: its identity, ports and files.

    The single broker and each node of a cluster are described the same way, so starting,
    probing and stopping share one code path; only the file layout differs (see the module
    docstring).
    """

    node_id: int
    """KRaft ``node.id``: 1 for the single broker, 1..N in a cluster."""
    port: int
    controller_port: int
    data_dir: Path
    pid_file: Path
    console_log: Path
    cluster: bool = False
    """One of several nodes (names itself by node id in messages, gets CLUSTER_JVM_OPTIONS)."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def label(self) -> str:
        return (
            f"node {self.node_id} ({self.address})"
            if self.cluster
            else f"the broker ({self.address})"
        )


def _single_node(settings: Settings) -> _Node:
    """The classic single broker: files named after its port, directly under ``kafka_home``."""
    return _Node(
        node_id=1,
        port=settings.kafka_port,
        controller_port=settings.kafka_controller_port,
        data_dir=data_dir(settings),
        pid_file=pid_file(settings),
        console_log=console_log(settings),
    )


def cluster_dir(settings: Settings, home: Path | None = None) -> Path:
    """Where the nodes of the cluster whose first broker listens on ``kafka_port`` live.

    ``home`` defaults to ``settings.kafka_home``; tests pass a directory of their own. The jar
    cache always stays in ``settings.kafka_home/libs``.
    """
    return (home or settings.kafka_home) / f"cluster-{settings.kafka_port}"


def node_ports(settings: Settings, node_id: int) -> tuple[int, int]:
    """(client port, controller port) of cluster node ``node_id`` (1-based).

    Node 1 takes the configured pair, node k adds ``2 * (k - 1)`` to both: with the defaults
    9092/9093 that is 9092/9093, 9094/9095, 9096/9097, so a cluster is a block of adjacent
    ports and its first node is where a single broker would be.
    """
    step = 2 * (node_id - 1)
    return settings.kafka_port + step, settings.kafka_controller_port + step


def _cluster_node(settings: Settings, node_id: int, home: Path | None) -> _Node:
    root = cluster_dir(settings, home)
    port, controller = node_ports(settings, node_id)
    return _Node(
        node_id=node_id,
        port=port,
        controller_port=controller,
        data_dir=root / f"node-{node_id}",
        pid_file=root / f"node-{node_id}.pid",
        console_log=root / f"node-{node_id}.out",
        cluster=True,
    )


def _cluster_nodes(settings: Settings, brokers: int, home: Path | None) -> list[_Node]:
    """The N nodes of a cluster, after checking that their 2N ports are valid and distinct."""
    if brokers < 1:
        raise KafkaLocalError(f"a cluster needs at least one broker, not {brokers}")
    nodes = [_cluster_node(settings, k, home) for k in range(1, brokers + 1)]
    owners: dict[int, str] = {}
    for node in nodes:
        for port, kind in ((node.port, "client"), (node.controller_port, "controller")):
            role = f"the {kind} port of node {node.node_id}"
            if not 0 < port < 65536:
                raise KafkaLocalError(f"{role} would be {port}, outside 1-65535")
            if port in owners:
                raise KafkaLocalError(
                    f"port {port} would be both {owners[port]} and {role}: node k uses "
                    f"client port {settings.kafka_port}+2(k-1) and controller port "
                    f"{settings.kafka_controller_port}+2(k-1); pick a controller port that "
                    "is not an even offset from the client port (e.g. client port + 1)"
                )
            owners[port] = role
    return nodes


def bootstrap_addresses(settings: Settings, brokers: int = 1) -> str:
    """What clients should be given: every broker of the layout, comma-separated."""
    if brokers == 1:
        return bootstrap_address(settings)
    return ",".join(node.address for node in _cluster_nodes(settings, brokers, None))


def replication_for(brokers: int) -> tuple[int, int]:
    """(replication factor, min in-sync replicas) for internal topics on N brokers.

    Three copies at most (the usual production choice) and one fewer in sync: on 3 brokers a
    committed offset or transaction survives the loss of any one broker and writes continue.
    On 2 brokers min ISR 1 keeps the cluster writable with one broker down.
    """
    replicas = min(3, brokers)
    return replicas, max(1, replicas - 1)


def _server_properties(node: _Node, voters: list[_Node]) -> str:
    """KRaft combined mode (every node is broker and controller), tuned for tests.

    The quorum is static (``controller.quorum.voters``), formatted without ``--standalone``.
    A dynamic quorum (``controller.quorum.bootstrap.servers``, KIP-853) would need either one
    node formatted ``--standalone`` and the others added as voters at runtime with
    ``kafka-metadata-quorum add-controller`` (a tool not on this classpath, and a slow extra
    step), or ``--initial-controllers`` with every node's directory id worked out in advance.
    Changing the set of controllers at runtime is the one thing a static quorum cannot do,
    and a local cluster never does it; static is also what the single broker always used.
    """
    cluster = len(voters) > 1
    replicas, min_isr = replication_for(len(voters))
    quorum = ",".join(f"{v.node_id}@127.0.0.1:{v.controller_port}" for v in voters)
    lines = [
        "# Written by escalate.kafka_local on every start; edits here are overwritten.",
        "process.roles=broker,controller",
        f"node.id={node.node_id}",
        f"controller.quorum.voters={quorum}",
        f"listeners=PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{node.port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={node.data_dir / 'kraft'}",
        "num.partitions=3",
        "auto.create.topics.enable=true",
        f"default.replication.factor={replicas}",
        f"min.insync.replicas={min_isr}",
        f"offsets.topic.replication.factor={replicas}",
        # Fewer internal partitions than the default 50: quicker first group join on 2 cores.
        "offsets.topic.num.partitions=10",
        f"transaction.state.log.replication.factor={replicas}",
        f"transaction.state.log.min.isr={min_isr}",
        "transaction.state.log.num.partitions=10",
        f"share.coordinator.state.topic.replication.factor={replicas}",
        f"share.coordinator.state.topic.min.isr={min_isr}",
        "group.initial.rebalance.delay.ms=0",
        "num.network.threads=2",
        "num.io.threads=4",
        # The cleaner's buffer comes out of the small heap; 128 MiB (default) is too greedy.
        "log.cleaner.dedupe.buffer.size=33554432",
    ]
    if cluster:
        lines += [
            # A killed broker is fenced, and its partitions get new leaders, once it missed
            # heartbeats for this long (default 9 s). 6 s shortens the stall clients see
            # after a crash yet tolerates the pauses of three JVMs sharing two busy cores.
            "broker.session.timeout.ms=6000",
            "broker.heartbeat.interval.ms=1000",
        ]
    return "\n".join(lines) + "\n"


def _jvm_command(node: _Node, java: str, libs: Path, main: str) -> list[str]:
    """The java command line shared by the storage tool and the broker itself."""
    tuned = main == STORAGE_TOOL or node.cluster
    return [
        java,
        *JVM_OPTIONS,
        *(CLUSTER_JVM_OPTIONS if tuned else ()),
        f"-Dkafka.logs.dir={node.data_dir}",
        f"-Dlog4j2.configurationFile={node.data_dir / 'log4j2.properties'}",
        "-cp",
        f"{libs}/*",
        main,
    ]


def _new_cluster_id() -> str:
    """A Kafka-style UUID (URL-safe base64, no padding), without a JVM launch for random-uuid."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka's own generator avoids these as well
            return text


def _prepare(node: _Node, voters: list[_Node]) -> None:
    """Write the node's config and logging setup into its data directory."""
    node.data_dir.mkdir(parents=True, exist_ok=True)
    node.config_file.write_text(_server_properties(node, voters))
    if not LOG4J2_FILE.is_file():
        raise KafkaLocalError(f"{LOG4J2_FILE} is missing; run from a checkout of the project")
    # A copy, so the running broker does not depend on the checkout it was started from.
    shutil.copyfile(LOG4J2_FILE, node.data_dir / "log4j2.properties")


def _format_storage(
    nodes: list[_Node], cluster_id: str, java: str, libs: Path, progress: Progress
) -> None:
    """Format each node's KRaft log dir that is not formatted yet, all with one cluster id.

    The storage tool is a JVM start of a few seconds each, so the nodes are formatted side by
    side. ``-g`` makes an already formatted dir a no-op.
    """
    running: list[tuple[_Node, subprocess.Popen[str]]] = []
    for node in nodes:
        if (node.data_dir / "kraft" / "meta.properties").is_file():
            continue
        progress(f"formatting KRaft storage in {node.data_dir / 'kraft'}")
        cmd = [
            *_jvm_command(node, java, libs, STORAGE_TOOL),
            "format",
            "-t",
            cluster_id,
            "-c",
            str(node.config_file),
            "-g",
        ]
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        running.append((node, proc))
    failures = []
    for node, proc in running:
        try:
            output, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        if proc.returncode != 0:
            failures.append(f"{node.data_dir} (exit {proc.returncode}):\n{output.strip()}")
    if failures:
        raise KafkaLocalError("kafka-storage format failed for " + "\n".join(failures))


def _read_pid(node: _Node) -> int | None:
    """The pid from the pid file if that process is alive and still our broker."""
    try:
        pid = int(node.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_our_broker(pid, node) else None


def _is_our_broker(pid: int, node: _Node) -> bool:
    """Guard against pid reuse: the process must be a live kafka.Kafka on our config file."""
    _reap(pid)
    proc_dir = Path(f"/proc/{pid}")
    if not proc_dir.exists():
        if Path("/proc/self").exists():
            return False
        try:  # no procfs (not Linux): fall back to a bare liveness check
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    try:
        stat = (proc_dir / "stat").read_text()
        cmdline = (proc_dir / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[:1] == ["Z"]:
        return False
    return b"kafka.Kafka" in cmdline and str(node.config_file).encode() in cmdline


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
"""Brokers this process spawned, kept so that their exit status can be read (and reported)."""


def _reap(pid: int) -> None:
    """Collect the exit status if the broker is our own child, so it does not stay a zombie."""
    child = _CHILDREN.get(pid)
    if child is not None:
        child.poll()
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _how_it_ended(pid: int) -> str:
    """' (exit code 1)', ' (killed by SIGKILL)' for a broker we spawned; '' when unknown.

    A signal nobody here sent points at something outside (another job, the OOM killer).
    """
    child = _CHILDREN.get(pid)
    code = None if child is None else child.poll()
    if code is None:
        return ""
    if code < 0:
        try:
            return f" (killed by {signal.Signals(-code).name})"
        except ValueError:
            return f" (killed by signal {-code})"
    return f" (exit code {code})"


def _port_open(port: int, timeout_s: float = 0.5) -> bool:
    """Cheap pre-check before a full Kafka metadata round trip."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _kafka_logging_muted() -> Iterator[None]:
    """kafka-python logs every refused connection; probing a booting broker is not an error."""
    logger = logging.getLogger("kafka")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


def broker_fencing(bootstrap: str, timeout_s: float = 3.0) -> dict[int, bool] | None:
    """``{broker id: fenced?}`` as the cluster at ``bootstrap`` sees it; None if none answers.

    A broker is fenced while it has not caught up with the metadata log or has stopped
    heartbeating the controller; only unfenced brokers lead partitions or serve clients.
    """
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    addresses = [a.strip() for a in bootstrap.split(",") if a.strip()]
    local_ports = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        if host in ("127.0.0.1", "localhost") and port.isdigit():
            local_ports.append(int(port))
    if len(local_ports) == len(addresses) and not any(_port_open(p) for p in local_ports):
        return None
    timeout_ms = max(int(timeout_s * 1000), 500)
    with _kafka_logging_muted():
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=addresses,
                client_id="escalate-kafka-local-probe",
                request_timeout_ms=timeout_ms,
                bootstrap_timeout_ms=timeout_ms,
                reconnect_backoff_max_ms=500,
            )
        except (KafkaError, OSError):
            return None
        try:
            cluster = admin.describe_cluster()
        except (KafkaError, OSError):
            return None
        finally:
            admin.close()
    fencing: dict[int, bool] = {}
    for broker in cluster.get("brokers") or []:
        # DescribeCluster v2 names the flag ``is_fenced``; older responses have no flag.
        fenced = broker.get("is_fenced", broker.get("fenced", False))
        fencing[int(broker.get("broker_id", broker.get("node_id", -1)))] = bool(fenced)
    return fencing


def broker_answers(bootstrap: str, timeout_s: float = 3.0) -> bool:
    """True when a Kafka broker at ``bootstrap`` answers a metadata request and is unfenced."""
    fencing = broker_fencing(bootstrap, timeout_s)
    return fencing is not None and not all(fencing.values())


def _log_tail(node: _Node) -> str:
    """The last lines of the broker's own log and of its console, for error messages.

    The console matters for failures before log4j is up (bad classpath, out of memory). The
    log's ERROR lines come first: a broker that gave up has usually logged pages of
    configuration or shutdown steps after the line that says why.
    """
    parts: list[str] = []
    for path, lines in ((node.log_file, 40), (node.console_log, 10)):
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        if not text:
            continue
        errors = [line for line in text if "] ERROR " in line or "] FATAL " in line]
        if errors and path == node.log_file:
            parts.append(f"--- errors in {path} ---")
            parts.extend(errors[-10:])
        parts.append(f"--- last lines of {path} ---")
        parts.extend(text[-lines:])
    return "\n".join(parts) if parts else f"({node.label} wrote no log)"


def _wait_until_ready(node: _Node, pid: int, deadline: float, progress: Progress) -> str | None:
    """Poll until the single broker answers; returns an error text if it died first."""
    started = announced = time.monotonic()
    while time.monotonic() < deadline:
        if not _is_our_broker(pid, node):
            return f"the broker process exited during startup{_how_it_ended(pid)}"
        if broker_answers(node.address, timeout_s=2.0):
            return None
        if time.monotonic() - announced > 10:
            progress("still waiting for the broker to answer...")
            announced = time.monotonic()
        time.sleep(0.5)
    return f"the broker did not answer within {deadline - started:.0f}s"


def _busy_port(node: _Node) -> str | None:
    """A message naming the node's port that something else already listens on, if any."""
    who = f"node {node.node_id}" if node.cluster else "the broker"
    for port, kind, setting in (
        (node.port, "client", "ESCALATE_KAFKA_PORT / --port"),
        (node.controller_port, "controller", "ESCALATE_KAFKA_CONTROLLER_PORT / --controller-port"),
    ):
        if _port_open(port):
            return (
                f"port {port} (the {kind} port of {who}) is already in use by another process; "
                f"stop it or pick other ports ({setting})"
            )
    return None


def start(
    settings: Settings,
    *,
    brokers: int = 1,
    timeout_s: float = 120,
    fresh: bool = False,
    progress: Progress = _quiet,
    home: Path | None = None,
) -> str:
    """Start the local broker (``brokers=1``) or a local cluster of ``brokers`` nodes.

    Returns the bootstrap address (all brokers, comma-separated, for a cluster). ``fresh=True``
    wipes the data before a launch (never touches a broker that is already running), which
    tests use for a clean slate. On failure what we launched is stopped again and the error
    carries the log tail. For a cluster, nodes that are already running are kept and missing
    ones are (re)started: this is also how a node stopped with :func:`stop_node` comes back.
    ``home`` places a cluster's directory (default ``settings.kafka_home``).
    """
    if brokers == 1:
        return _start_single(settings, timeout_s=timeout_s, fresh=fresh, progress=progress)
    return _start_cluster(
        settings, brokers, timeout_s=timeout_s, fresh=fresh, progress=progress, home=home
    )


def _start_single(settings: Settings, *, timeout_s: float, fresh: bool, progress: Progress) -> str:
    node = _single_node(settings)
    bootstrap = node.address
    deadline = time.monotonic() + timeout_s
    if broker_answers(bootstrap):
        progress(f"a broker already answers on {bootstrap}")
        return bootstrap
    libs = ensure_jars(settings, progress=progress)
    with _file_lock(settings.kafka_home / f".broker-{settings.kafka_port}.lock"):
        pid = _read_pid(node)
        if pid is not None and broker_answers(bootstrap):  # started while we waited for the lock
            progress(f"broker pid {pid} already answers on {bootstrap}")
            return bootstrap
        if pid is None:
            if _port_open(node.port):
                if _wait_for_foreign(bootstrap, deadline):
                    return bootstrap
                raise KafkaLocalError(
                    f"port {node.port} is taken by something that does not answer "
                    "as a Kafka broker; pick another ESCALATE_KAFKA_PORT"
                )
            busy = _busy_port(node)
            if busy is not None:
                raise KafkaLocalError(busy)
            java = _java()
            if fresh and node.data_dir.exists():
                progress(f"wiping {node.data_dir} for a fresh broker")
                shutil.rmtree(node.data_dir)
            _prepare(node, [node])
            _format_storage([node], _new_cluster_id(), java, libs, progress)
            pid = _spawn(node, java, libs, progress)
        else:
            progress(f"broker pid {pid} is already starting; waiting for it")
        started = time.monotonic()
        problem = _wait_until_ready(node, pid, deadline, progress)
        if problem is not None:
            tail = _log_tail(node)
            _terminate(node, pid, timeout_s=15)
            raise KafkaLocalError(f"Kafka on {bootstrap}: {problem}\n{tail}")
        progress(f"broker pid {pid} answers on {bootstrap} after {time.monotonic() - started:.1f}s")
    return bootstrap


def _wait_for_foreign(bootstrap: str, deadline: float) -> bool:
    """Someone else's broker may still be booting on the port: give it a little while."""
    grace = min(deadline, time.monotonic() + 30)
    while time.monotonic() < grace:
        if broker_answers(bootstrap, timeout_s=2.0):
            return True
        time.sleep(0.5)
    return False


def _cluster_identity(root: Path, nodes: list[_Node], fresh: bool, progress: Progress) -> str:
    """The cluster id every node is formatted with, kept in ``cluster.json``.

    A cluster formatted for another set of nodes cannot simply be started with a new one (the
    static quorum and the replicas' placement live in its metadata log), so a mismatch is an
    error that points at ``--fresh`` rather than something to paper over.
    """
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)
    record = root / "cluster.json"
    if fresh and root.exists():
        progress(f"wiping {root} for a fresh cluster")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        known = json.loads(record.read_text())
    except (OSError, ValueError):
        known = None
    if isinstance(known, dict) and known.get("cluster_id"):
        if known.get("voters") != voters:
            raise KafkaLocalError(
                f"the cluster in {root} was formatted with {known.get('brokers')} node(s) "
                f"(voters {known.get('voters')}), not {len(nodes)} (voters {voters}); start it "
                "with its own node count and ports, or pass --fresh to wipe it"
            )
        return str(known["cluster_id"])
    formatted = [n for n in nodes if (n.data_dir / "kraft" / "meta.properties").exists()]
    if formatted:
        raise KafkaLocalError(
            f"{root} holds formatted nodes but no cluster.json naming their cluster id; "
            "pass --fresh to wipe it"
        )
    cluster_id = _new_cluster_id()
    record.write_text(
        json.dumps({"cluster_id": cluster_id, "brokers": len(nodes), "voters": voters}) + "\n"
    )
    return cluster_id


def _start_cluster(
    settings: Settings,
    brokers: int,
    *,
    timeout_s: float,
    fresh: bool,
    progress: Progress,
    home: Path | None,
) -> str:
    nodes = _cluster_nodes(settings, brokers, home)
    root = cluster_dir(settings, home)
    bootstrap = ",".join(n.address for n in nodes)
    deadline = time.monotonic() + timeout_s
    libs = ensure_jars(settings, progress=progress)
    # The lock lives beside the cluster directory, since --fresh removes that directory.
    with _file_lock(root.parent / f".cluster-{settings.kafka_port}.lock"):
        pids = {n.node_id: _read_pid(n) for n in nodes}
        running = [n for n in nodes if pids[n.node_id] is not None]
        if fresh and running:
            raise KafkaLocalError(
                f"cannot start {root} fresh: node(s) "
                + ", ".join(str(n.node_id) for n in running)
                + " of it are running; stop them first (`escalate kafka stop`)"
            )
        missing = [n for n in nodes if pids[n.node_id] is None]
        for node in missing:  # before anything is written: a refused start leaves no trace
            busy = _busy_port(node)
            if busy is not None:
                raise KafkaLocalError(busy)
        # Checked even when every node runs: `--brokers 2` must not pass for a 3-node cluster.
        cluster_id = _cluster_identity(root, nodes, fresh, progress)
        if missing:
            java = _java()
            for node in missing:
                _prepare(node, nodes)
            _format_storage(missing, cluster_id, java, libs, progress)
            for node in missing:
                pids[node.node_id] = _spawn(node, java, libs, progress)
        started = time.monotonic()
        problem = _wait_for_cluster(nodes, pids, deadline, progress)
        if problem is not None:
            failed, text = problem
            tails = "\n".join(_log_tail(n) for n in failed)
            for node in missing:  # only what this call launched; running nodes stay as they are
                pid = pids[node.node_id]
                if pid is not None:
                    _terminate(node, pid, timeout_s=15)
            raise KafkaLocalError(f"Kafka cluster {bootstrap}: {text}\n{tails}")
        progress(
            f"{brokers} brokers answer on {bootstrap} "
            f"({len(missing)} started, after {time.monotonic() - started:.1f}s)"
        )
    return bootstrap


def _wait_for_cluster(
    nodes: list[_Node], pids: dict[int, int | None], deadline: float, progress: Progress
) -> tuple[list[_Node], str] | None:
    """Poll until every node runs and is an unfenced broker; else (the failed nodes, why).

    Combined-mode nodes only elect a controller once a majority of them is up, which is why
    they are launched together and awaited together here.
    """
    bootstrap = ",".join(n.address for n in nodes)
    started = announced = time.monotonic()
    fencing: dict[int, bool] | None = None
    while time.monotonic() < deadline:
        dead = [n for n in nodes if not _is_our_broker(pids[n.node_id] or -1, n)]
        if dead:
            names = ", ".join(f"{n.label}{_how_it_ended(pids[n.node_id] or -1)}" for n in dead)
            return dead, f"{names} exited during startup"
        fencing = broker_fencing(bootstrap, timeout_s=2.0)
        if fencing is not None and all(fencing.get(n.node_id) is False for n in nodes):
            return None
        if time.monotonic() - announced > 10:
            waiting = [n.label for n in nodes if not fencing or fencing.get(n.node_id) is not False]
            progress(f"still waiting for {', '.join(waiting)}...")
            announced = time.monotonic()
        time.sleep(0.5)
    late = [n for n in nodes if not fencing or fencing.get(n.node_id) is not False]
    return late, (
        f"{', '.join(n.label for n in late)} did not join as unfenced brokers "
        f"within {deadline - started:.0f}s"
    )


def _spawn(node: _Node, java: str, libs: Path, progress: Progress) -> int:
    """Spawn the detached broker JVM on the node's prepared and formatted data directory."""
    cmd = [*_jvm_command(node, java, libs, "kafka.Kafka"), str(node.config_file)]
    progress(f"starting Kafka {KAFKA_VERSION} node {node.node_id} on {node.address}")
    with node.console_log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=node.data_dir,
            start_new_session=True,  # Ctrl-C in the starting shell must not reach the broker
            close_fds=True,
        )
    node.pid_file.write_text(f"{proc.pid}\n")
    _CHILDREN[proc.pid] = proc
    return proc.pid


def _wait_gone(node: _Node, pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _is_our_broker(pid, node):
            return True
        time.sleep(0.1)
    return not _is_our_broker(pid, node)


def _terminate(node: _Node, pid: int, timeout_s: float) -> None:
    """SIGTERM for a clean controlled shutdown, SIGKILL only when it does not finish."""
    _terminate_all([(node, pid)], timeout_s)


def _terminate_all(targets: list[tuple[_Node, int]], timeout_s: float) -> None:
    """Stop several nodes at once: SIGTERM to all, then SIGKILL to whoever outlives the wait.

    All at once because a combined node's controlled shutdown needs a controller quorum; one
    by one, the last nodes of a cluster would wait for a majority that is already gone.
    """
    for _, pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for node, pid in targets:
        if not _wait_gone(node, pid, max(0.0, deadline - time.monotonic())):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(node, pid, 5)
        node.pid_file.unlink(missing_ok=True)


def _recorded_brokers(settings: Settings, home: Path | None) -> int | None:
    """How many nodes the cluster on this base port was formatted with, if there is one."""
    try:
        known = json.loads((cluster_dir(settings, home) / "cluster.json").read_text())
        return int(known["brokers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stop(
    settings: Settings,
    timeout_s: float = 30,
    *,
    progress: Progress = _quiet,
    brokers: int | None = None,
    home: Path | None = None,
) -> bool:
    """Stop what this module started on the configured port: the broker, or every node.

    ``brokers=None`` stops whichever of ours runs there, single broker or cluster. Returns
    False (and does nothing) when none is running; a broker started some other way is left
    alone, since there is no pid file for it.
    """
    targets: list[tuple[_Node, int]] = []
    candidates: list[_Node] = []
    if brokers in (None, 1):
        candidates.append(_single_node(settings))
    if brokers != 1:
        count = brokers or _recorded_brokers(settings, home) or 0
        candidates += [_cluster_node(settings, k, home) for k in range(1, count + 1)]
    for node in candidates:
        pid = _read_pid(node)
        if pid is None:
            node.pid_file.unlink(missing_ok=True)
        else:
            targets.append((node, pid))
    if not targets:
        return False
    for node, pid in targets:
        progress(f"stopping broker pid {pid} on {node.address}")
    _terminate_all(targets, timeout_s)
    return True


def stop_node(
    settings: Settings,
    node_id: int,
    *,
    hard: bool = False,
    timeout_s: float = 30,
    home: Path | None = None,
    progress: Progress = _quiet,
) -> bool:
    """Stop one node of the cluster on the configured base port; True if it was running.

    ``hard=True`` is ``kill -9``: no controlled shutdown, no leadership handed over, unflushed
    page cache left as a crash leaves it. That is what a test of broker loss wants. Start the
    node again with :func:`start` and the same ``brokers``.
    """
    node = _cluster_node(settings, node_id, home)
    pid = _read_pid(node)
    if pid is None:
        return False
    if hard:
        progress(f"killing node {node_id} (pid {pid}) on {node.address}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not _wait_gone(node, pid, 10):
            raise KafkaLocalError(f"node {node_id} (pid {pid}) survived SIGKILL")
        node.pid_file.unlink(missing_ok=True)
    else:
        progress(f"stopping node {node_id} (pid {pid}) on {node.address}")
        _terminate(node, pid, timeout_s)
    return True


class NodeStatus(TypedDict):
    """One node of :func:`status`."""

    node_id: int
    running: bool
    """Our JVM is alive and the cluster counts it as an unfenced broker."""
    pid: int | None
    bootstrap: str
    controller: str
    data_dir: str
    log_file: str


class BrokerStatus(TypedDict):
    """What :func:`status` reports about the broker (or cluster) on the configured port."""

    running: bool
    """A Kafka broker answers metadata requests on the port (ours or someone else's)."""
    pid: int | None
    """Pid of the broker JVM this module started (node 1 of a cluster), if it is alive."""
    bootstrap: str
    data_dir: str
    log_file: str
    brokers: int
    """1 for the single broker, N for a cluster."""
    nodes: list[NodeStatus]


def status(
    settings: Settings, *, brokers: int | None = None, home: Path | None = None
) -> BrokerStatus:
    """Whether a broker (or cluster) answers on the configured port, and our pids.

    ``brokers=None`` describes the cluster recorded for this base port when one of its nodes
    runs, or when the single broker is not ours and a cluster was set up here; else the single
    broker.
    """
    if brokers is None:
        recorded = _recorded_brokers(settings, home)
        brokers = 1
        if recorded and recorded > 1:
            cluster_alive = any(
                _read_pid(_cluster_node(settings, k, home)) is not None
                for k in range(1, recorded + 1)
            )
            if cluster_alive or _read_pid(_single_node(settings)) is None:
                brokers = recorded
    if brokers == 1:
        nodes = [_single_node(settings)]
        where = nodes[0].data_dir
    else:
        nodes = _cluster_nodes(settings, brokers, home)
        where = cluster_dir(settings, home)
    bootstrap = ",".join(n.address for n in nodes)
    fencing = broker_fencing(bootstrap) or {}
    node_states: list[NodeStatus] = []
    for node in nodes:
        pid = _read_pid(node)
        if brokers == 1:  # the single broker may be someone else's: no pid, still running
            alive = bool(fencing) and not all(fencing.values())
        else:
            alive = pid is not None and fencing.get(node.node_id) is False
        node_states.append(
            NodeStatus(
                node_id=node.node_id,
                running=alive,
                pid=pid,
                bootstrap=node.address,
                controller=f"127.0.0.1:{node.controller_port}",
                data_dir=str(node.data_dir),
                log_file=str(node.log_file),
            )
        )
    return BrokerStatus(
        running=bool(fencing) and not all(fencing.values()),
        pid=node_states[0]["pid"],
        bootstrap=bootstrap,
        data_dir=str(where),
        log_file=str(nodes[0].log_file),
        brokers=brokers,
        nodes=node_states,
    )
