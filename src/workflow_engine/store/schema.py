"""The tables as SQLAlchemy Core objects, used to build statements (the DDL itself lives in migrations).

Built once at import: statements made from these are cached by SQLAlchemy's compiled cache, which a fresh
`Table` per call would defeat.
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from workflow_engine.store.records import Status


def json_text(value: Any) -> str | None:
    """A JSON value as the TEXT `JsonText` stores (None: SQL NULL)."""
    return None if value is None else orjson.dumps(value).decode()


def status_text(value: Any) -> str | None:
    """A `Status` as the TEXT `StatusText` stores."""
    return None if value is None else str(value)


class JsonText(sa.types.TypeDecorator[Any]):
    """A JSON value kept as TEXT serialised with orjson: portable across dialects and fast. None is SQL NULL."""

    impl = sa.Text
    cache_ok = True
    # The bind conversion on every dialect, for SQL run on the driver (store/batch.py) without SQLAlchemy's
    # processor wrapping it.
    driver_value = staticmethod(json_text)

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return json_text(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else orjson.loads(value)


class StatusText(sa.types.TypeDecorator[Status]):
    """An execution `Status` kept as its TEXT value (no CHECK constraint, so a new status needs no migration)."""

    impl = sa.Text
    cache_ok = True
    driver_value = staticmethod(status_text)  # as JsonText's

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return status_text(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Status | None:
        return None if value is None else Status(value)


Time = sa.Double  # Unix seconds

metadata = sa.MetaData()

executions = sa.Table(
    "executions",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("workflow", sa.Text, nullable=False),
    sa.Column("trigger", sa.Text, nullable=False),
    sa.Column("input", JsonText),
    sa.Column("status", StatusText, nullable=False),
    sa.Column("config_version", sa.BigInteger),
    sa.Column("output", JsonText),
    sa.Column("error", JsonText),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("started_at", Time),
    sa.Column("finished_at", Time),
    sa.Column("updated_at", Time, nullable=False),
    sa.Column("owner", sa.Text),
    sa.Column("lease_expires_at", Time),
    sa.Column("idempotency_key", sa.Text),
    sa.Column("parent_id", sa.Text),
    sa.Column("wake_at", Time),
    sa.Column("wait_topic", sa.Text),
    sa.Column("wait_state", JsonText),
    sa.Column("durable", sa.Boolean, nullable=False),
)

# PostgreSQL also has a `seq` identity column that orders checkpoints; SQLite orders by rowid instead.
steps = sa.Table(
    "steps",
    metadata,
    sa.Column("execution_id", sa.Text, primary_key=True),
    sa.Column("step_key", sa.Text, primary_key=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("output", JsonText),
    sa.Column("error", JsonText),
    sa.Column("started_at", Time, nullable=False),
    sa.Column("finished_at", Time, nullable=False),
    sa.Column("extra", JsonText, nullable=False),
)

schedule_ticks = sa.Table(
    "schedule_ticks",
    metadata,
    sa.Column("workflow", sa.Text, primary_key=True),
    sa.Column("tick", Time, primary_key=True),
)

configs = sa.Table(
    "configs",
    metadata,
    sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("digest", sa.Text, nullable=False, unique=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("created_at", Time, nullable=False),
)

components = sa.Table(
    "components",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("digest", sa.Text, nullable=False),
    sa.Column("updated_at", Time, nullable=False),
)

schema_version = sa.Table(
    "workflow_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", Time, nullable=False),
)

EXECUTION_FIELDS = frozenset(executions.c.keys())
