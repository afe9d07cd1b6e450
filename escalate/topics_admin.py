"""Creates the pipeline's topics with the partition counts the registry names."""

from __future__ import annotations

import logging

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from schemas.topics import ALL_TOPICS

log = logging.getLogger("escalate.topics")


def ensure_topics(bootstrap: str, prefix: str = "") -> list[str]:
    """Create any missing topic; returns the names that were created."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="escalate-admin")
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(
                spec.name(prefix),
                num_partitions=spec.partitions,
                replication_factor=1,
                topic_configs={"cleanup.policy": "compact"} if spec.compacted else {},
            )
            for spec in ALL_TOPICS
            if spec.name(prefix) not in existing
        ]
        created = []
        for topic in wanted:
            try:
                admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        if created:
            log.info("created topics: %s", ", ".join(created))
        return created
    finally:
        admin.close()
