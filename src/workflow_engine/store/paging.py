"""Keyset pagination of executions, newest first: the opaque cursor and the statement of each filter shape.

A keyset on (created_at, id) rather than OFFSET: each page costs the same however deep it is, and rows created
while a client pages do not shift the pages it has not read yet.
"""

from __future__ import annotations

import base64
import binascii
import functools
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.sql.selectable import Select

from workflow_engine.store.base import StoreError
from workflow_engine.store.schema import executions

MAX_PAGE = 500

e = executions.c


def encode_cursor(created_at: float, execution_id: str) -> str:
    """The cursor that continues after the execution (`created_at`, `execution_id`)."""
    return base64.urlsafe_b64encode(orjson.dumps([created_at, execution_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The (created_at, id) a cursor continues after; a cursor we did not make is a 400, not a 500."""
    try:
        value = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        value = None
    match value:
        case [int() | float() as created_at, str() as execution_id] if not isinstance(created_at, bool):
            return float(created_at), execution_id
    raise StoreError(f"invalid executions cursor '{cursor}'", code="invalid_cursor", http_status=400)


def page_size(limit: int) -> int:
    """`limit` kept within 1..MAX_PAGE."""
    return max(1, min(limit, MAX_PAGE))


@functools.lru_cache(maxsize=8)
def list_statement(by_workflow: bool, by_status: bool, after: bool) -> Select[Any]:
    """The page query for one combination of filters (8 in all, each compiled once).

    Parameters: `workflow`, `status`, `after_created_at`, `after_id`, `page_limit`.
    """
    stmt = sa.select(executions)
    if by_workflow:
        stmt = stmt.where(e.workflow == sa.bindparam("workflow"))
    if by_status:
        stmt = stmt.where(e.status == sa.bindparam("status"))
    if after:
        after_key = sa.tuple_(sa.bindparam("after_created_at", type_=sa.Double()), sa.bindparam("after_id"))
        stmt = stmt.where(sa.tuple_(e.created_at, e.id) < after_key)
    return stmt.order_by(e.created_at.desc(), e.id.desc()).limit(sa.bindparam("page_limit"))
