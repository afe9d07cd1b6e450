"""Alembic migrations of the audit schema (a package so that installs ship them)."""
