"""`/events`: execution and step lifecycle events as server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from workflow_engine.api.deps import VIEWER, ControlDep, errors
from workflow_engine.config.models import NAME_PATTERN
from workflow_engine.engine.control import Control

router = APIRouter(tags=["events"])

KEEP_ALIVE = 15.0
# Events a client may fall behind by before it is disconnected (it reconnects and reads the store instead).
CLIENT_BUFFER = 1000
# How often a quiet stream checks whether the engine is shutting down.
POLL = 1.0


@router.get(
    "/events", response_class=StreamingResponse, dependencies=[VIEWER], responses=errors(503),
    summary="Lifecycle events (SSE)",
)
async def events(
    control: ControlDep,
    workflow: Annotated[str | None, Query(pattern=NAME_PATTERN, description="Only this workflow type.")] = None,
    execution_id: Annotated[str | None, Query(max_length=128, description="Only this execution.")] = None,
) -> StreamingResponse:
    """A `text/event-stream` of `workflow.*` and `step.*` events: `event:` is the topic, `data:` its JSON.

    Comments (`: keep-alive`) arrive every 15 s while nothing happens. A client that falls 1000 events behind
    gets a final `error` event (`slow_consumer`) and is disconnected.
    """
    control.check_streaming()
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(control, workflow, execution_id), media_type="text/event-stream",
                             headers=headers)


async def stream(control: Control, workflow: str | None, execution_id: str | None) -> AsyncIterator[bytes]:
    """SSE frames until the client goes away, falls behind, or the engine shuts down.

    The subscription is made on the first step, inside the `try`: a client gone before the stream started
    leaves nothing subscribed.
    """
    feed = control.subscribe(buffer=CLIENT_BUFFER, workflow=workflow, execution_id=execution_id)
    try:
        yield b": connected\n\n"
        quiet = 0.0
        while not control.draining:
            event = await feed.next(POLL)
            if feed.overflowed:
                data = {"code": "slow_consumer", "message": "the client fell behind; reconnect"}
                yield b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"
                return
            if event is None:
                quiet += POLL
                if quiet >= KEEP_ALIVE:
                    quiet = 0.0
                    yield b": keep-alive\n\n"
                continue
            quiet = 0.0
            yield frame(event.topic, event.id, event.data)
    finally:
        feed.close()


def frame(topic: str, event_id: str, data: object) -> bytes:
    """One SSE message."""
    payload = orjson.dumps({"topic": topic, "data": data}, default=str)
    return f"event: {topic}\nid: {event_id}\n".encode() + b"data: " + payload + b"\n\n"
