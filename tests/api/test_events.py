"""`/api/events`: lifecycle events as server-sent events, filters, slow clients, unsubscribe on disconnect."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests.api.conftest import Api, Blocker, api_engine, bearer
from tests.factories import WAIT_LIMIT, serve_app, wait_until
from workflow_engine.engine.control import EventFeed

WORKFLOWS = """
hello:
  steps:
    - id: greet
      set: {greeting: hi}
other:
  steps:
    - set: {a: 1}
"""


async def read_events(lines: AsyncIterator[str], until: str, execution_id: str | None = None) -> list[dict[str, Any]]:
    """Parse SSE messages until one with topic `until` (for `execution_id`, when given) arrived."""
    events: list[dict[str, Any]] = []
    message: dict[str, Any] = {}
    async with asyncio.timeout(WAIT_LIMIT):
        async for line in lines:
            if line.startswith("event: "):
                message["event"] = line[len("event: "):]
            elif line.startswith("id: "):
                message["id"] = line[len("id: "):]
            elif line.startswith("data: "):
                message["data"] = json.loads(line[len("data: "):])
            elif not line and message:
                events.append(message)
                data = message.get("data", {}).get("data", {})
                if message.get("event") == until and execution_id in (None, data.get("execution_id")):
                    return events
                message = {}
    raise AssertionError(f"stream ended before {until}: {events}")


async def connected(response: httpx.Response) -> AsyncIterator[str]:
    """Wait for the stream's opening comment (the subscription exists from then on); the rest of its lines."""
    lines = response.aiter_lines()
    async with asyncio.timeout(WAIT_LIMIT):
        async for line in lines:
            if line == ": connected":
                return lines
    raise AssertionError("the stream ended before it was connected")


async def start(api: Api, workflow: str) -> str:
    execution_id: str = (await api.post(f"/api/workflows/{workflow}/executions")).json()["id"]
    return execution_id


async def test_events_stream_an_executions_lifecycle() -> None:
    async with api_engine(WORKFLOWS) as api, api.http.stream("GET", "/api/events",
                                                             headers=bearer("viewer")) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = await connected(response)
        execution_id = await start(api, "hello")
        events = await read_events(lines, "workflow.completed", execution_id)
    mine = [e for e in events if e["data"]["data"]["execution_id"] == execution_id]
    assert [e["event"] for e in mine] == ["workflow.started", "step.started", "step.completed", "workflow.completed"]
    assert mine[0]["data"]["topic"] == "workflow.started"
    assert mine[1]["data"]["data"]["step"] == "greet"
    assert mine[-1]["data"]["data"]["status"] == "success"
    assert all(e["id"] for e in mine)


async def test_events_can_be_filtered_by_workflow_and_execution() -> None:
    async with api_engine(WORKFLOWS) as api, api.http.stream("GET", "/api/events", params={"workflow": "hello"},
                               headers=bearer("viewer")) as response:
        lines = await connected(response)
        await start(api, "other")
        hello_id = await start(api, "hello")
        events = await read_events(lines, "workflow.completed", hello_id)
    assert {e["data"]["data"]["workflow"] for e in events} == {"hello"}


async def test_the_subscription_ends_when_the_client_disconnects() -> None:
    async with api_engine(WORKFLOWS) as api:
        bus = api.engine.bus

        def api_subscribers() -> int:
            return sum(1 for s in bus.subscriptions if s.name == "api-events")

        async with api.http.stream("GET", "/api/events", headers=bearer("viewer")) as response:
            await connected(response)
            assert api_subscribers() == 1
        await wait_until(lambda: api_subscribers() == 0, "the event stream unsubscribed")


async def test_events_need_a_token_and_a_valid_filter() -> None:
    async with api_engine(WORKFLOWS) as api:
        anonymous = await api.http.get("/api/events")
        bad_filter = await api.get("/api/events", params={"workflow": "Not A Name"})
    assert anonymous.status_code == 401
    assert bad_filter.status_code == 422


async def test_a_client_that_falls_a_whole_buffer_behind_is_cut_off() -> None:
    async with api_engine(WORKFLOWS) as api:
        feed = EventFeed(api.engine.bus, 2)
        try:
            for i in range(3):
                await api.engine.bus.publish("workflow.started", {"execution_id": str(i), "workflow": "hello"})
            await api.engine.bus.publish("orders.created", {"ignored": True})
            await wait_until(lambda: feed.overflowed, "the feed overflowed")
            assert feed.queue.qsize() == 2
        finally:
            feed.close()
        assert all(s.name != "api-events" for s in api.engine.bus.subscriptions)


async def test_streams_end_when_the_engine_shuts_down_and_new_ones_are_refused() -> None:
    blocker = Blocker()  # holds an execution, so the engine stays draining while the test looks
    slow = "slow:\n  steps:\n    - http: {url: '%s/block'}\n"
    async with serve_app(blocker.app()) as url, api_engine(slow % url) as api:
        async with api.http.stream("GET", "/api/events", headers=bearer("viewer")) as response:
            lines = await connected(response)
            await start(api, "slow")
            await asyncio.wait_for(blocker.arrived.wait(), WAIT_LIMIT)
            api.engine.request_stop()
            async with asyncio.timeout(WAIT_LIMIT):
                async for _ in lines:
                    pass  # the stream ends by itself once the engine drains
        refused = await api.get("/api/events")
        blocker.release()
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "draining"
