"""`escalate topics manifest`: the topics as Strimzi KafkaTopics, laid out as `topics create`
would make them, and the committed deploy/kubernetes/base/kafka/topics.yaml as its output."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from escalate.cli import main
from escalate.topics_admin import TopicLayout, topic_manifests, topic_manifests_yaml
from schemas.topics import ALL_TOPICS, DEAD_LETTER

COMMITTED = Path(__file__).resolve().parents[2] / "deploy/kubernetes/base/kafka/topics.yaml"


@pytest.fixture(autouse=True)
def _no_topic_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # The command's defaults come from these; a developer's shell must not change the output.
    for name in (
        "ESCALATE_TOPIC_PREFIX",
        "ESCALATE_TOPIC_PARTITIONS",
        "ESCALATE_TOPIC_REPLICATION",
        "ESCALATE_TOPIC_MIN_INSYNC_REPLICAS",
    ):
        monkeypatch.delenv(name, raising=False)


def test_committed_file_is_what_its_header_command_prints(
    capfd: pytest.CaptureFixture[str],
) -> None:
    text = COMMITTED.read_text()
    command = text.splitlines()[1].removeprefix("#").strip()
    argv = shlex.split(command)
    assert argv[:3] == ["escalate", "topics", "manifest"]
    assert main(argv[1:]) == 0
    assert capfd.readouterr().out == text, (
        f"stale: run `{command} > deploy/kubernetes/base/kafka/topics.yaml`"
    )


def test_committed_file_is_the_city_layout() -> None:
    """3 brokers: replication 3 and 2 in sync, so one broker may be lost (docs/SCALING.md)."""
    expected = topic_manifests_yaml(TopicLayout(partitions=6, replication=3, min_insync_replicas=2))
    assert COMMITTED.read_text() == expected


def test_every_topic_laid_out_as_topics_create_would() -> None:
    layout = TopicLayout(partitions=6, replication=3, min_insync_replicas=2)
    manifests = topic_manifests(layout, prefix="t1.", cluster="kafka-a")
    assert [m["spec"]["topicName"] for m in manifests] == [s.name("t1.") for s in ALL_TOPICS]
    for spec, manifest in zip(ALL_TOPICS, manifests, strict=True):
        assert manifest["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert manifest["kind"] == "KafkaTopic"
        assert manifest["metadata"]["labels"] == {"strimzi.io/cluster": "kafka-a"}
        assert manifest["spec"]["partitions"] == (1 if spec is DEAD_LETTER else 6)
        assert manifest["spec"]["replicas"] == 3
        config = manifest["spec"]["config"]
        assert config["min.insync.replicas"] == 2
        assert (config.get("cleanup.policy") == "compact") is spec.compacted


def test_registry_counts_without_a_layout_count() -> None:
    manifests = topic_manifests(TopicLayout())
    assert [m["spec"]["partitions"] for m in manifests] == [s.partitions for s in ALL_TOPICS]
    assert all("min.insync.replicas" not in m["spec"]["config"] for m in manifests)


def test_resource_names_are_valid_even_when_topic_names_are_not() -> None:
    (first, *_) = topic_manifests(TopicLayout(), prefix="Hanoi_Test_")
    assert first["metadata"]["name"] == "hanoi-test-reports.submitted.v1"
    assert first["spec"]["topicName"] == "Hanoi_Test_reports.submitted.v1"


def test_output_is_yaml_of_the_manifests() -> None:
    layout = TopicLayout(partitions=3, replication=2)
    docs = list(yaml.safe_load_all(topic_manifests_yaml(layout, "p.", "c")))
    assert docs == topic_manifests(layout, "p.", "c")


def test_a_layout_that_cannot_work_is_refused(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=r"min\.insync\.replicas 3 exceeds"):
        topic_manifests(TopicLayout(replication=2, min_insync_replicas=3))
    assert main(["topics", "manifest", "--replicas", "1", "--min-insync", "2"]) == 2
    assert "exceeds" in capfd.readouterr().err
    with pytest.raises(SystemExit):
        main(["topics", "manifest", "--partitions", "0"])


def test_settings_are_the_defaults(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ESCALATE_TOPIC_PARTITIONS", "4")
    monkeypatch.setenv("ESCALATE_TOPIC_REPLICATION", "3")
    monkeypatch.setenv("ESCALATE_TOPIC_PREFIX", "x.")
    assert main(["topics", "manifest", "--replicas", "2"]) == 0
    out = capfd.readouterr().out
    assert "#   escalate topics manifest --partitions 4 --replicas 2 --cluster escalate" in out
    assert "--prefix x." in out
    docs = list(yaml.safe_load_all(out))
    assert {d["spec"]["replicas"] for d in docs} == {2}
    assert docs[0]["spec"] == {
        "topicName": "x.reports.submitted.v1",
        "partitions": 4,
        "replicas": 2,
        "config": {},
    }
