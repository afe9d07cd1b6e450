"""Creates the pipeline's topics with the partition counts and replication the settings name."""

from __future__ import annotations

import logging
import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from schemas.topics import ALL_TOPICS, TopicSpec

if TYPE_CHECKING:
    from escalate.settings import Settings

log = logging.getLogger("escalate.topics")


@dataclass(frozen=True)
class TopicLayout:
    """How many partitions and replicas the pipeline's topics get when they are created.

    ``partitions`` None keeps each topic's count from the registry (``schemas/topics.py``).
    Every topic gets the same count, except those the registry keeps at one partition (the
    dead letters): the escalator and the grouper rely on their inputs and state topics having
    equal counts, so that one key lands on the same partition number of each.
    """

    partitions: int | None = None
    replication: int = 1
    #: with replication 3, 2 means an acknowledged write survives the loss of any one broker
    min_insync_replicas: int | None = None

    def partitions_of(self, spec: TopicSpec) -> int:
        if self.partitions is None or spec.partitions == 1:
            return spec.partitions
        return self.partitions


def ensure_topics(bootstrap: str, prefix: str = "", layout: TopicLayout | None = None) -> list[str]:
    """Create any missing topic; returns the names that were created.

    Existing topics are left as they are. One whose partition count differs from the layout is
    logged: adding partitions to a running pipeline moves keys to other partitions, away from
    the state the escalator and the grouper keep for them, so that is a migration, not a
    setting to flip.
    """
    layout = layout or TopicLayout()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="escalate-admin")
    try:
        existing = set(admin.list_topics())
        wanted = []
        for spec in ALL_TOPICS:
            if spec.name(prefix) in existing:
                continue
            configs: dict[str, str] = {}
            if spec.compacted:
                configs["cleanup.policy"] = "compact"
            if layout.min_insync_replicas is not None:
                configs["min.insync.replicas"] = str(layout.min_insync_replicas)
            wanted.append(
                NewTopic(
                    spec.name(prefix),
                    num_partitions=layout.partitions_of(spec),
                    replication_factor=layout.replication,
                    topic_configs=configs,
                )
            )
        created = []
        for topic in wanted:
            try:
                admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        if created:
            log.info("created topics: %s", ", ".join(created))
        _warn_on_other_counts(admin, prefix, layout, existing)
        return created
    finally:
        admin.close()


def _warn_on_other_counts(admin: Any, prefix: str, layout: TopicLayout, existing: set[str]) -> None:
    if layout.partitions is None:
        return
    names = [s.name(prefix) for s in ALL_TOPICS if s.name(prefix) in existing]
    if not names:
        return
    try:
        described = admin.describe_topics(names)
    except Exception as exc:  # a warning only; the topics are usable as they are
        log.debug("could not describe topics: %s", type(exc).__name__)
        return
    specs = {s.name(prefix): s for s in ALL_TOPICS}
    for topic in described:
        spec = specs.get(topic.get("name") or topic.get("topic") or "")
        count = len(topic.get("partitions") or [])
        if spec is not None and count and count != layout.partitions_of(spec):
            log.warning(
                "topic %s has %d partitions, the settings say %d: left as it is (changing it "
                "moves keys away from their state; see docs/SCALING.md)",
                spec.name(prefix),
                count,
                layout.partitions_of(spec),
            )


STRIMZI_API_VERSION = "kafka.strimzi.io/v1beta2"


def topic_manifests(
    layout: TopicLayout, prefix: str = "", cluster: str = "escalate"
) -> list[dict[str, Any]]:
    """The topics as Strimzi ``KafkaTopic`` resources, laid out as ``ensure_topics`` would
    create them, for a cluster whose topic operator owns them instead of ``topics create``.
    """
    if layout.min_insync_replicas is not None and layout.min_insync_replicas > layout.replication:
        # Every write with acks=all would be refused: a layout that cannot work at all.
        raise ValueError(
            f"min.insync.replicas {layout.min_insync_replicas} exceeds the "
            f"{layout.replication} replica(s)"
        )
    manifests: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for spec in ALL_TOPICS:
        topic = spec.name(prefix)
        # A resource name allows fewer characters than a topic name (no '_', no capitals);
        # spec.topicName carries the real one.
        resource = re.sub(r"[^a-z0-9.-]+", "-", topic.lower()).strip(".-")
        if resource in seen:
            raise ValueError(f"topics {seen[resource]!r} and {topic!r} map to one resource name")
        seen[resource] = topic
        config: dict[str, Any] = {}
        if spec.compacted:
            config["cleanup.policy"] = "compact"
        if layout.min_insync_replicas is not None:
            config["min.insync.replicas"] = layout.min_insync_replicas
        manifests.append(
            {
                "apiVersion": STRIMZI_API_VERSION,
                "kind": "KafkaTopic",
                "metadata": {"name": resource, "labels": {"strimzi.io/cluster": cluster}},
                "spec": {
                    "topicName": topic,
                    "partitions": layout.partitions_of(spec),
                    "replicas": layout.replication,
                    "config": config,
                },
            }
        )
    return manifests


def topic_manifests_yaml(layout: TopicLayout, prefix: str = "", cluster: str = "escalate") -> str:
    """``topic_manifests`` as a YAML stream, headed by the command that writes it again."""
    command = ["escalate topics manifest"]
    if layout.partitions is not None:
        command.append(f"--partitions {layout.partitions}")
    command.append(f"--replicas {layout.replication}")
    if layout.min_insync_replicas is not None:
        command.append(f"--min-insync {layout.min_insync_replicas}")
    command.append(f"--cluster {shlex.quote(cluster)}")
    if prefix:
        command.append(f"--prefix {shlex.quote(prefix)}")
    header = (
        "# Generated from schemas/topics.py: do not edit, run again instead:\n"
        f"#   {' '.join(command)}\n"
    )
    manifests = topic_manifests(layout, prefix, cluster)
    return header + yaml.safe_dump_all(manifests, sort_keys=False, explicit_start=True)


def layout_of(settings: Settings) -> TopicLayout:
    return TopicLayout(
        partitions=settings.topic_partitions,
        replication=settings.topic_replication,
        min_insync_replicas=settings.topic_min_insync_replicas,
    )
