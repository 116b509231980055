"""Execution store: one abstract `Store` with thin SQLite and PostgreSQL dialects."""
