"""Reading request bodies with a size bound, and JSON bodies that may be any JSON value."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request

from workflow_engine.errors import WorkflowEngineError

# How long a client may take to send a body when the app does not say (`engine.management.body_timeout`).
BODY_TIMEOUT = 30.0


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body; 413 when it is larger than `limit` bytes (checked while reading, not after); 408 when
    it has not all arrived within the app's `body_timeout` (a client that stalls holds nothing for long)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    timeout: float = getattr(request.app.state, "body_timeout", BODY_TIMEOUT)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise WorkflowEngineError(f"request body not received within {timeout:g}s", code="body_timeout",
                                  http_status=408) from None
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
