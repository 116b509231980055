"""The store named by a URL: `sqlite:///PATH`, `sqlite:///:memory:` or `postgresql://user@host:port/db?...`."""

from __future__ import annotations

import time
from collections.abc import Callable

from workflow_engine.store.base import Store
from workflow_engine.store.connect import parse_store_url
from workflow_engine.store.sql import SqlStore


def open_store_from_url(url: str, *, clock: Callable[[], float] = time.time) -> Store:
    """The store for `url`, not opened yet (call `await store.open()`); an unknown scheme is a StoreError.

    PostgreSQL URLs also take `schema=NAME` (created if missing, then the search path), `pool_size=N`,
    `sslmode=` and `application_name=`; other query parameters go to asyncpg as they are.
    """
    return SqlStore(parse_store_url(url), clock=clock)
