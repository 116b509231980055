"""Fixtures of the trigger tests: `store_url` (an empty SQLite file and PostgreSQL schema, as the store tests
use) for the tests that must hold on both dialects."""

from tests.store.conftest import store_url  # a fixture, found by name

__all__ = ["store_url"]
