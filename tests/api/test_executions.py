"""Executions through the API: manual start (wait, 202, idempotency, refusals), list, detail, cancel, retry."""

from __future__ import annotations

import asyncio

import orjson

from tests.api.conftest import Blocker, api_engine, bearer, engine_yaml, poll_execution
from tests.factories import CallCounter, app_yaml, executions, running_engine, sample, serve_app

WORKFLOWS = """
hello:
  steps:
    - id: greet
      set: {greeting: "hi {{ input.name }}"}
    - id: shout
      transform: {expression: "steps.greet.output.greeting"}
boom:
  steps:
    - fail: {message: "boom", code: boom}
"""

# One step that waits for the test's Blocker to release it.
SLOW = "slow:\n  steps:\n    - id: wait\n      http: {{url: '{url}/block'}}\n"


async def test_start_and_wait_returns_the_finished_execution() -> None:
    async with api_engine(WORKFLOWS) as api:
        response = await api.post("/api/workflows/hello/executions?wait=true", json={"name": "ada"})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "success"
    assert body["workflow"] == "hello"
    assert body["trigger"] == "manual"
    assert body["input"] == {"name": "ada"}
    assert body["output"] == "hi ada"
    assert response.headers["Location"] == f"/api/executions/{body['id']}"


async def test_start_and_wait_for_a_failing_workflow_carries_its_error() -> None:
    async with api_engine(WORKFLOWS) as api:
        response = await api.post("/api/workflows/boom/executions?wait=true")
    assert response.status_code == 200
    assert response.json()["status"] == "error"
    assert response.json()["error"]["code"] == "boom"


async def test_start_without_wait_is_202_then_polled_to_its_end() -> None:
    async with api_engine(WORKFLOWS) as api:
        response = await api.post("/api/workflows/hello/executions", json={"name": "bo"})
        assert response.status_code == 202
        assert response.json()["status"] in ("queued", "running", "success")
        done = await poll_execution(api, response.json()["id"], ("success",))
    assert done["output"] == "hi bo"


async def test_an_empty_body_is_a_null_input_and_bad_json_is_400() -> None:
    async with api_engine("echo:\n  steps:\n    - set: {got: '{{ input }}'}\n") as api:
        empty = await api.post("/api/workflows/echo/executions?wait=true")
        bad = await api.post("/api/workflows/echo/executions", content=b"{nope",
                             headers={"Content-Type": "application/json"})
    assert empty.json()["input"] is None
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_json"


async def test_a_wait_that_runs_out_answers_202_with_the_running_execution() -> None:
    blocker = Blocker()
    async with serve_app(blocker.app()) as url, api_engine(SLOW.format(url=url)) as api:
        response = await api.post("/api/workflows/slow/executions?wait=true&timeout=0.2")
        blocker.release()
        await poll_execution(api, response.json()["id"], ("success",))
    assert response.status_code == 202
    assert response.json()["status"] == "running"


async def test_a_repeated_idempotency_key_returns_the_first_execution() -> None:
    async with api_engine(WORKFLOWS) as api:
        key = {"Idempotency-Key": "order-42"}
        first = await api.post("/api/workflows/hello/executions?wait=true", json={"name": "a"}, headers=key)
        again = await api.post("/api/workflows/hello/executions?wait=true", json={"name": "b"}, headers=key)
        other = await api.post("/api/workflows/hello/executions?wait=true", json={"name": "c"},
                               headers={"Idempotency-Key": "order-43"})
        listed = (await api.get("/api/executions", params={"workflow": "hello"})).json()["items"]
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["output"] == "hi a"
    assert again.json()["idempotency_key"] == "order-42"
    assert other.json()["id"] != first.json()["id"]
    assert len(listed) == 2


async def test_an_unknown_workflow_is_404_and_leaves_no_metric_series() -> None:
    async with api_engine(WORKFLOWS) as api:
        response = await api.post("/api/workflows/nope/executions")
        metrics = api.engine.metrics
    assert response.status_code == 404
    assert response.json()["error"] == {"code": "unknown_workflow", "message": "no workflow named 'nope'"}
    assert sample(metrics, "trigger_events_total", workflow_type="nope", trigger="manual") == 0


async def test_a_full_queue_is_503_with_retry_after() -> None:
    blocker = Blocker()
    workflows = "slow:\n  concurrency: 1\n  queue_size: 0\n  steps:\n    - http: {url: '%s/block'}\n"
    async with serve_app(blocker.app()) as url, api_engine(workflows % url) as api:
        first = await api.post("/api/workflows/slow/executions")
        await asyncio.wait_for(blocker.arrived.wait(), 10)
        refused = await api.post("/api/workflows/slow/executions")
        blocker.release()
        await poll_execution(api, first.json()["id"], ("success",))
    assert first.status_code == 202
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["Retry-After"]) >= 1


async def test_list_filters_and_pages_through_every_execution_exactly_once() -> None:
    async with api_engine(WORKFLOWS) as api:
        started = [(await api.post("/api/workflows/hello/executions?wait=true", json={"name": str(i)})).json()["id"]
                   for i in range(7)]
        failed = [(await api.post("/api/workflows/boom/executions?wait=true")).json()["id"] for _ in range(2)]
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, str | int] = {"workflow": "hello", "limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = (await api.get("/api/executions", params=params)).json()
            pages += 1
            seen += [item["id"] for item in page["items"]]
            assert all(item["workflow"] == "hello" for item in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        errors = (await api.get("/api/executions", params={"status": "error"})).json()
        everything = (await api.get("/api/executions", params={"limit": 500})).json()
    assert sorted(seen) == sorted(started)
    assert len(seen) == len(set(seen))
    assert pages == 3
    assert seen == sorted(seen, reverse=True)  # newest first (UUIDv7 ids sort by creation)
    assert sorted(item["id"] for item in errors["items"]) == sorted(failed)
    assert len(everything["items"]) == 9
    assert everything["next_cursor"] is None


async def test_bad_list_parameters_are_json_4xx() -> None:
    async with api_engine(WORKFLOWS) as api:
        status = await api.get("/api/executions", params={"status": "exploded"})
        zero = await api.get("/api/executions", params={"limit": 0})
        huge = await api.get("/api/executions", params={"limit": 100_000})
        words = await api.get("/api/executions", params={"limit": "many"})
        cursor = await api.get("/api/executions", params={"cursor": "not-a-cursor"})
    for response in (status, zero, huge, words):
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "invalid_request"
    assert status.json()["error"]["message"].startswith("query.status:")
    assert cursor.status_code == 400
    assert cursor.json()["error"]["code"] == "invalid_cursor"


async def test_detail_has_the_step_checkpoints() -> None:
    async with api_engine(WORKFLOWS) as api:
        execution_id = (await api.post("/api/workflows/hello/executions?wait=true", json={"name": "z"})).json()["id"]
        detail = await api.get(f"/api/executions/{execution_id}")
        missing = await api.get("/api/executions/01900000-0000-7000-8000-000000000000")
        odd = await api.get("/api/executions/%00%01")
    assert detail.status_code == 200
    body = detail.json()
    assert body["status"] == "success"
    assert [(s["step"], s["status"]) for s in body["steps"]] == [("greet", "success"), ("shout", "success")]
    assert body["steps"][0]["output"] == {"greeting": "hi z"}
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert odd.status_code == 404


async def test_cancel_a_running_execution() -> None:
    blocker = Blocker()
    async with serve_app(blocker.app()) as url, api_engine(SLOW.format(url=url)) as api:
        execution_id = (await api.post("/api/workflows/slow/executions")).json()["id"]
        await asyncio.wait_for(blocker.arrived.wait(), 10)
        running = (await api.get(f"/api/executions/{execution_id}")).json()
        cancelled = await api.post(f"/api/executions/{execution_id}/cancel")
        again = await api.post(f"/api/executions/{execution_id}/cancel")
        stored = await api.get(f"/api/executions/{execution_id}")
        unknown = await api.post("/api/executions/01900000-0000-7000-8000-000000000000/cancel")
        blocker.release()
    # Who holds a running execution, and until when (the runbook's stuck-execution check); nobody once it ended.
    assert running["status"] == "running"
    assert running["owner"]
    assert running["lease_expires_at"] > running["created_at"]
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert again.json()["status"] == "cancelled"
    assert stored.json()["status"] == "cancelled"
    assert stored.json()["owner"] is None
    assert unknown.status_code == 404


async def test_retry_runs_a_failed_execution_again_from_its_failed_step() -> None:
    upstream = CallCounter(failures=1)
    workflows = """
flaky:
  steps:
    - id: first
      set: {n: 1}
    - id: call
      http: {url: '%s/call'}
"""
    async with serve_app(upstream.app()) as url, api_engine(workflows % url) as api:
        failed = (await api.post("/api/workflows/flaky/executions?wait=true")).json()
        retried = await api.post(f"/api/executions/{failed['id']}/retry")
        done = await poll_execution(api, failed["id"], ("success", "error"))
        again = await api.post(f"/api/executions/{failed['id']}/retry")
        viewer = await api.post(f"/api/executions/{failed['id']}/retry", "viewer")
    assert failed["status"] == "error"
    assert retried.status_code == 202
    assert retried.json()["id"] == failed["id"]
    assert done["status"] == "success"
    assert done["attempt"] == 2
    assert {s["step"]: s["status"] for s in done["steps"]} == {"first": "success", "call": "success"}
    assert upstream.calls == 2
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "conflict"
    assert viewer.status_code == 403


async def test_api_requests_are_counted_by_route_template() -> None:
    async with api_engine(WORKFLOWS) as api:
        execution_id = (await api.post("/api/workflows/hello/executions?wait=true")).json()["id"]
        await api.get(f"/api/executions/{execution_id}")
        await api.get("/api/executions/01900000-0000-7000-8000-000000000000")
        metrics = api.engine.metrics
    labels = {"server": "management", "method": "GET", "path": "/api/executions/{execution_id}"}
    assert sample(metrics, "http_requests_total", **labels, status_code="200") == 1
    assert sample(metrics, "http_requests_total", **labels, status_code="404") == 1
    started = {"server": "management", "method": "POST", "path": "/api/workflows/{name}/executions",
               "status_code": "200"}
    assert sample(metrics, "http_requests_total", **started) == 1




async def test_an_unreachable_store_answers_503_not_500() -> None:
    async with api_engine(WORKFLOWS) as api:
        await api.engine.store.close()  # as if the database went away under the running engine
        response = await api.get("/api/executions")
        await api.engine.store.open()
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "store_error"


async def test_a_body_that_does_not_arrive_in_time_is_408_and_holds_nothing() -> None:
    """A client that sends its headers and part of a body, then stalls: answered 408 `body_timeout` once
    `engine.management.body_timeout` has passed, and the connection is closed; no execution started."""
    engine_config = engine_yaml().replace("{shutdown_grace", "{management: {body_timeout: 200ms}, shutdown_grace", 1)
    async with running_engine(app_yaml("w:\n  steps:\n    - set: {a: 1}", engine=engine_config)) as engine:
        assert engine.management is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", engine.management.port)
        token = bearer("operator")["Authorization"]
        writer.write(f"POST /api/workflows/w/executions HTTP/1.1\r\nHost: test\r\nAuthorization: {token}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"partial\": ".encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=5)  # all of it: the server closes the connection
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), head
        assert orjson.loads(body)["error"]["code"] == "body_timeout"
        assert executions(engine.metrics, "w", "success") == 0
