"""Reading request bodies with a size bound, and JSON bodies that may be any JSON value."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from workflow_engine.errors import WorkflowEngineError


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body; 413 when it is larger than `limit` bytes (checked while reading, not after)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes, what: str) -> Any:
    """`raw` as JSON (empty means null); 400 naming `what` when it is not valid JSON."""
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise WorkflowEngineError(f"{what} is not valid JSON: {err}", code="invalid_json", http_status=400) from err


def _too_large(limit: int) -> WorkflowEngineError:
    return WorkflowEngineError(f"request body is larger than {limit} bytes", code="too_large", http_status=413)
