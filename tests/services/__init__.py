"""Real services for integration tests: a local Kafka broker and a throwaway PostgreSQL.

Each helper honours an environment variable first (``ESCALATE_KAFKA_BOOTSTRAP_SERVERS``,
``ESCALATE_TEST_POSTGRES_URL``) so CI or a developer can point the tests at servers they run
themselves; otherwise it starts a private one and stops it when the process exits.
"""
