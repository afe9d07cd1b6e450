"""Consumers with side effects: notification delivery and the audit trail."""
