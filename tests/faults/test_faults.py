"""The fault suite (``make test-faults``): one fault per case in the middle of a steady stream of
reports through the whole pipeline, and the figures of what came out (``harness.Figures``,
appended to var/faults/results.jsonl; ``python -m tests.faults.report`` makes the table of
docs/RELIABILITY.md from them).

The bar in every case: no accepted report lost, no mail sent twice under two Message-IDs, no
audit row missing, ``escalate audit verify`` passing. A mail repeated under the same
Message-ID (a relay took it and the notifier died before committing) is allowed and counted.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kafka import KafkaProducer

from escalate.settings import DEFAULT_CONFIG_DIR
from schemas.topics import ALL_TOPICS, DEAD_LETTER
from tests.faults.harness import Expectations, Figures, Pipeline, Stream, figures, pipeline
from tests.services import postgres
from tests.services.kafka import cluster_for_tests

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(900)]

REPORTS = 200
SECONDS = 20.0
FAULT_AT = 6.0  # seconds into the stream


def police_addresses() -> frozenset[str]:
    directory = yaml.safe_load((DEFAULT_CONFIG_DIR / "directory.yaml").read_text("utf-8"))
    found = set(directory["police"]["emails"])
    for district in directory["districts"]:
        found |= set(district["police"]["emails"])
    return frozenset(found)


@dataclass
class Case:
    """What to break (returns when it is repaired, as ``time.time()``), and how to run."""

    name: str
    fault: Callable[[Pipeline], float]
    processors: int = 1
    database: str = "sqlite"
    refused: frozenset[str] = frozenset()


def kill_and_restart(name: str, down_s: float = 5.0) -> Callable[[Pipeline], float]:
    def fault(run: Pipeline) -> float:
        time.sleep(FAULT_AT)
        run.kill(name)
        time.sleep(down_s)
        run.start(name)
        return time.time()

    return fault


def kill_one_of_two(run: Pipeline) -> float:
    time.sleep(FAULT_AT)
    run.kill("processors-1")  # not restarted: the other worker takes its partitions
    return time.time()


def relay_down(seconds: float) -> Callable[[Pipeline], float]:
    def fault(run: Pipeline) -> float:
        time.sleep(FAULT_AT)
        run.relay.down()
        time.sleep(seconds)
        run.relay.up()
        return time.time()

    return fault


def relay_refusing(run: Pipeline) -> float:
    """451 to every mail for 30 s (a relay that is overloaded), while the police mailboxes
    are refused with 550 throughout (a typo in the directory, say)."""
    time.sleep(FAULT_AT)
    run.relay.sink.transient_until = time.monotonic() + 30
    time.sleep(30)
    return time.time()


def database_down(run: Pipeline) -> float:
    time.sleep(FAULT_AT)
    postgres.pause()
    time.sleep(30)
    postgres.resume()
    return time.time()


def poison_everywhere(run: Pipeline) -> float:
    time.sleep(FAULT_AT)
    prefix = run.env["ESCALATE_TOPIC_PREFIX"]
    producer = KafkaProducer(bootstrap_servers=run.env["ESCALATE_KAFKA_BOOTSTRAP_SERVERS"])
    try:
        for spec in ALL_TOPICS:
            if spec is DEAD_LETTER:
                continue
            for poison in (b"\xff\xfe not json", b'{"schema_version": 1}', b"[]"):
                producer.send(spec.name(prefix), key=b"poison", value=poison)
        producer.flush(30)
    finally:
        producer.close()
    return time.time()


CASES = [
    Case("kill -9 intake, back after 5 s", kill_and_restart("intake")),
    Case("kill -9 processors, back after 5 s", kill_and_restart("processors")),
    Case("kill -9 grouper, back after 5 s", kill_and_restart("grouper")),
    Case("kill -9 escalator, back after 5 s", kill_and_restart("escalator")),
    Case("kill -9 notifier, back after 5 s", kill_and_restart("notifier")),
    Case("kill -9 audit writer, back after 5 s", kill_and_restart("audit")),
    Case("two processors, kill -9 one", kill_one_of_two, processors=2),
    Case("SMTP relay down 60 s", relay_down(60)),
    Case(
        "SMTP 451 for 30 s; police mailboxes 550",
        relay_refusing,
        refused=police_addresses(),
    ),
    Case("audit database (PostgreSQL) down 30 s", database_down, database="postgres"),
    Case("poison messages on every topic", poison_everywhere),
]


@pytest.fixture(scope="module")
def expectations() -> Expectations:
    return Expectations()


def run_case(
    case: Case,
    bootstrap: str,
    isolation: str,
    database_url: str,
    tmp_path: Path,
    expectations: Expectations,
) -> Figures:
    with pipeline(bootstrap, isolation, database_url, tmp_path, processors=case.processors) as run:
        run.relay.sink.refuse = case.refused
        stream = Stream(run.base_url, case.name, REPORTS, SECONDS)
        stream.start()
        repaired_at = case.fault(run)
        stream.join(timeout_s=180)
        found = figures(case.name, run, stream, expectations, repaired_at, case.refused)
        found.record()
        troubles = run.components.troubles()
        stacks = run.components.stacks() if found.lost else ""
    assert found.accepted >= REPORTS * 0.9, (found, troubles)
    assert (found.lost, found.duplicates, found.audit_missing) == (0, 0, 0), (
        found,
        troubles,
        stacks,
    )
    assert found.audit_verified, found
    if case.refused:
        assert found.failed_recorded > 0, found
    return found


@contextlib.contextmanager
def database_for(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "postgres":
        url = postgres.postgres_for_tests()
        yield url
    else:
        yield f"sqlite:///{tmp_path}/audit.db"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(
    case: Case,
    kafka_bootstrap: str,
    isolation: str,
    tmp_path: Path,
    expectations: Expectations,
) -> None:
    with database_for(case.database, tmp_path) as url:
        if case.database == "postgres":
            url = fresh_schema(url, isolation)
        run_case(case, kafka_bootstrap, isolation, url, tmp_path, expectations)


def fresh_schema(url: str, isolation: str) -> str:
    """A database of its own in the shared test cluster, so earlier cases' rows do not count."""
    import psycopg
    from psycopg import sql

    name = f"faults_{isolation}".lower()
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    base, _, _ = plain.rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return url.rpartition("/")[0] + f"/{name}"


def test_broker_stopped_for_20_s(
    isolation: str, tmp_path: Path, expectations: Expectations
) -> None:
    """The pipeline's only broker stops (SIGTERM) for 20 s: the intake answers 503 meanwhile,
    never 202 for a report it did not store; the clients retry; nothing accepted is lost.

    The restart often leaves a stage's transaction hanging on its group's offsets partition
    (docs/RELIABILITY.md); the stage's liveness check must find and abort it for the case to
    deliver everything in time."""
    with cluster_for_tests(tmp_path / "broker", brokers=1) as cluster:

        def stop_broker(run: Pipeline) -> float:
            time.sleep(FAULT_AT)
            cluster.stop()  # SIGTERM, a controlled shutdown
            assert not any(n["running"] for n in cluster.status()["nodes"])
            time.sleep(20)
            cluster.restart()
            return time.time()

        case = Case("broker stopped 20 s", stop_broker)
        found = run_case(
            case,
            cluster.bootstrap,
            isolation,
            f"sqlite:///{tmp_path}/audit.db",
            tmp_path,
            expectations,
        )
        assert (
            found.answers.get("503", 0)
            + sum(v for k, v in found.answers.items() if not k.isdigit())
            > 0
        ), f"the broker's absence was never noticed: {found.answers}"
