"""A local single-node Apache Kafka broker, run from jars that Maven fetches once.

There is no Docker and no Kafka tarball on the machines this project runs on, only Java and
Maven. ``deploy/kafka/pom.xml`` names the broker's jars; :func:`ensure_jars` copies them into
``<kafka_home>/libs`` once, and :func:`start` runs ``kafka.Kafka`` in KRaft combined mode
(broker and controller in one JVM) as a detached process. Every per-broker path carries the
client port, so several brokers (say a dev one on 9092 and a test one on 19092) can live side
by side under the same ``kafka_home`` and share the jar cache.

Layout under ``kafka_home``::

    libs/                       jars + a marker naming the Kafka version (shared)
    data-<port>/server.properties
    data-<port>/server.log      the broker's own log (log4j2, INFO)
    data-<port>/kraft/          the KRaft metadata log and topic partitions
    broker-<port>.pid           pid of the JVM we started
    broker-<port>.out           its stdout/stderr (JVM errors, warnings)
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
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

MARKER_PREFIX = ".complete-kafka-"

Progress = Callable[[str], None]


class KafkaLocalError(RuntimeError):
    """The local broker could not be provisioned, started or stopped."""


class BrokerStatus(TypedDict):
    """What :func:`status` reports about the broker on the configured port."""

    running: bool
    """A Kafka broker answers metadata requests on the port (ours or someone else's)."""
    pid: int | None
    """Pid of the broker JVM this module started, if it is alive."""
    bootstrap: str
    data_dir: str
    log_file: str


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


def _server_properties(settings: Settings) -> str:
    """KRaft combined mode for exactly one node, tuned for tests rather than durability."""
    port, cport = settings.kafka_port, settings.kafka_controller_port
    data = data_dir(settings)
    lines = [
        "# Written by escalate.kafka_local on every start; edits here are overwritten.",
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{cport}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={data / 'kraft'}",
        "num.partitions=3",
        "auto.create.topics.enable=true",
        "default.replication.factor=1",
        "min.insync.replicas=1",
        "offsets.topic.replication.factor=1",
        # Fewer internal partitions than the default 50: quicker first group join on 2 cores.
        "offsets.topic.num.partitions=10",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=10",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "num.network.threads=2",
        "num.io.threads=4",
        # The cleaner's buffer comes out of the small heap; 128 MiB (default) is too greedy.
        "log.cleaner.dedupe.buffer.size=33554432",
    ]
    return "\n".join(lines) + "\n"


def _jvm_command(settings: Settings, java: str, libs: Path, main: str) -> list[str]:
    """The java command line shared by the storage tool and the broker itself."""
    data = data_dir(settings)
    return [
        java,
        *JVM_OPTIONS,
        f"-Dkafka.logs.dir={data}",
        f"-Dlog4j2.configurationFile={data / 'log4j2.properties'}",
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


def _format_storage(settings: Settings, java: str, libs: Path, progress: Progress) -> None:
    """Format the KRaft log dir once; ``-g`` makes an already formatted dir a no-op."""
    data = data_dir(settings)
    if (data / "kraft" / "meta.properties").is_file():
        return
    progress(f"formatting KRaft storage in {data / 'kraft'}")
    cmd = [
        *_jvm_command(settings, java, libs, "kafka.tools.StorageTool"),
        "format",
        "-t",
        _new_cluster_id(),
        "-c",
        str(data / "server.properties"),
        "-g",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, timeout=300
    )
    if proc.returncode != 0:
        raise KafkaLocalError(
            f"kafka-storage format failed (exit {proc.returncode}):\n"
            + (proc.stdout + proc.stderr).strip()
        )


def _read_pid(settings: Settings) -> int | None:
    """The pid from the pid file if that process is alive and still our broker."""
    try:
        pid = int(pid_file(settings).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_our_broker(pid, settings) else None


def _is_our_broker(pid: int, settings: Settings) -> bool:
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
    config = str(data_dir(settings) / "server.properties").encode()
    return b"kafka.Kafka" in cmdline and config in cmdline


def _reap(pid: int) -> None:
    """Collect the exit status if the broker is our own child, so it does not stay a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


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


def broker_answers(bootstrap: str, timeout_s: float = 3.0) -> bool:
    """True when a Kafka broker at ``bootstrap`` answers a metadata request and is unfenced."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    host, _, port = bootstrap.rpartition(":")
    if host in ("127.0.0.1", "localhost") and not _port_open(int(port)):
        return False
    timeout_ms = max(int(timeout_s * 1000), 500)
    with _kafka_logging_muted():
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                client_id="escalate-kafka-local-probe",
                request_timeout_ms=timeout_ms,
                bootstrap_timeout_ms=timeout_ms,
                reconnect_backoff_max_ms=500,
            )
        except (KafkaError, OSError):
            return False
        try:
            cluster = admin.describe_cluster()
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()
    brokers = cluster.get("brokers") or []
    return any(not broker.get("fenced", False) for broker in brokers)


def _log_tail(settings: Settings) -> str:
    """The last lines of the broker's own log and of its console, for error messages.

    The console matters for failures before log4j is up (bad classpath, out of memory).
    """
    parts: list[str] = []
    for path, lines in ((data_dir(settings) / "server.log", 40), (console_log(settings), 10)):
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        if text:
            parts.append(f"--- last lines of {path} ---")
            parts.extend(text[-lines:])
    return "\n".join(parts) if parts else "(the broker wrote no log)"


def _wait_until_ready(
    settings: Settings, pid: int, deadline: float, progress: Progress
) -> str | None:
    """Poll until the broker answers; returns an error text if it died first."""
    bootstrap = bootstrap_address(settings)
    started = announced = time.monotonic()
    while time.monotonic() < deadline:
        if not _is_our_broker(pid, settings):
            return "the broker process exited during startup"
        if broker_answers(bootstrap, timeout_s=2.0):
            return None
        if time.monotonic() - announced > 10:
            progress("still waiting for the broker to answer...")
            announced = time.monotonic()
        time.sleep(0.5)
    return f"the broker did not answer within {deadline - started:.0f}s"


def start(
    settings: Settings,
    *,
    timeout_s: float = 120,
    fresh: bool = False,
    progress: Progress = _quiet,
) -> str:
    """Start the broker on ``settings.kafka_port`` unless one already answers there.

    Returns the bootstrap address. ``fresh=True`` wipes this port's data directory before a
    launch (never touches a broker that is already running), which tests use for a clean slate.
    On failure the broker we launched is stopped again and the error carries its log tail.
    """
    bootstrap = bootstrap_address(settings)
    deadline = time.monotonic() + timeout_s
    if broker_answers(bootstrap):
        progress(f"a broker already answers on {bootstrap}")
        return bootstrap
    libs = ensure_jars(settings, progress=progress)
    with _file_lock(settings.kafka_home / f".broker-{settings.kafka_port}.lock"):
        pid = _read_pid(settings)
        if pid is not None and broker_answers(bootstrap):  # started while we waited for the lock
            progress(f"broker pid {pid} already answers on {bootstrap}")
            return bootstrap
        if pid is None:
            if _port_open(settings.kafka_port):
                if _wait_for_foreign(bootstrap, deadline):
                    return bootstrap
                raise KafkaLocalError(
                    f"port {settings.kafka_port} is taken by something that does not answer "
                    "as a Kafka broker; pick another ESCALATE_KAFKA_PORT"
                )
            pid = _launch(settings, libs, fresh=fresh, progress=progress)
        else:
            progress(f"broker pid {pid} is already starting; waiting for it")
        started = time.monotonic()
        problem = _wait_until_ready(settings, pid, deadline, progress)
        if problem is not None:
            tail = _log_tail(settings)
            _terminate(settings, pid, timeout_s=15)
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


def _launch(settings: Settings, libs: Path, *, fresh: bool, progress: Progress) -> int:
    """Write the config, format storage if needed and spawn the detached broker JVM."""
    java = _java()
    data = data_dir(settings)
    if fresh and data.exists():
        progress(f"wiping {data} for a fresh broker")
        shutil.rmtree(data)
    data.mkdir(parents=True, exist_ok=True)
    (data / "server.properties").write_text(_server_properties(settings))
    if not LOG4J2_FILE.is_file():
        raise KafkaLocalError(f"{LOG4J2_FILE} is missing; run from a checkout of the project")
    # A copy, so the running broker does not depend on the checkout it was started from.
    shutil.copyfile(LOG4J2_FILE, data / "log4j2.properties")
    _format_storage(settings, java, libs, progress)
    cmd = [*_jvm_command(settings, java, libs, "kafka.Kafka"), str(data / "server.properties")]
    progress(f"starting Kafka {KAFKA_VERSION} on {bootstrap_address(settings)}")
    with console_log(settings).open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=data,
            start_new_session=True,  # Ctrl-C in the starting shell must not reach the broker
            close_fds=True,
        )
    pid_file(settings).write_text(f"{proc.pid}\n")
    return proc.pid


def _terminate(settings: Settings, pid: int, timeout_s: float) -> None:
    """SIGTERM for a clean controlled shutdown, SIGKILL only when it does not finish."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _is_our_broker(pid, settings):
        time.sleep(0.2)
    if _is_our_broker(pid, settings):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for _ in range(50):
            if not _is_our_broker(pid, settings):
                break
            time.sleep(0.1)
    pid_file(settings).unlink(missing_ok=True)


def stop(settings: Settings, timeout_s: float = 30, *, progress: Progress = _quiet) -> bool:
    """Stop the broker this module started on the configured port.

    Returns False (and does nothing) when none is running; a broker started some other way
    is left alone, since there is no pid file for it.
    """
    pid = _read_pid(settings)
    if pid is None:
        pid_file(settings).unlink(missing_ok=True)
        return False
    progress(f"stopping broker pid {pid} on {bootstrap_address(settings)}")
    _terminate(settings, pid, timeout_s)
    return True


def status(settings: Settings) -> BrokerStatus:
    """Whether a broker answers on the configured port, and the pid if it is ours."""
    bootstrap = bootstrap_address(settings)
    return BrokerStatus(
        running=broker_answers(bootstrap),
        pid=_read_pid(settings),
        bootstrap=bootstrap,
        data_dir=str(data_dir(settings)),
        log_file=str(data_dir(settings) / "server.log"),
    )
