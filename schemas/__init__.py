"""Event contracts between pipeline stages: the only thing stages share."""
