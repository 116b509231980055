"""The `http` trigger's response `cache`: hits answer without an execution, per key, within the TTL, 2xx only,
bounded; every hit is a response of its own (the route's middleware headers do not pile up on it)."""

from __future__ import annotations

import asyncio

import httpx

from tests.factories import executions, running_engine, wait_until
from workflow_engine.engine.engine import Engine
from workflow_engine.modules.http.server import HttpServer

APP = """version: 1
name: app
engine: {shutdown_grace: 2s, park_after: 1h}
modules:
  - name: web
    type: http.server
    config: {address: "127.0.0.1:0"}
workflows:
  price:
    trigger:
      http: {server: web, method: GET, path: /price, cache: {ttl: TTL, key: "{{ input.query.sku }}", max_entries: 2}}
    steps:
      - if: "{{ input.query.sku == 'none' }}"
        then: [{fail: {message: "no such sku", code: unknown_sku, status: 404}}]
      - respond:
          body: {sku: "{{ input.query.sku }}", at: "{{ timestamp() }}"}
          headers:
            Set-Cookie: "{{ 'session=' ~ execution.id if input.query.sku == 'cookie' else none }}"
            Cache-Control: "{{ 'private, max-age=60' if input.query.sku == 'mine' else none }}"
"""


def client(engine: Engine) -> httpx.AsyncClient:
    server = engine.modules["web"]
    assert isinstance(server, HttpServer)
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}")


def runs(engine: Engine) -> float:
    return executions(engine.metrics, "price", "success") + executions(engine.metrics, "price", "error")


async def ran(engine: Engine, count: int) -> None:
    """The executions the route started so far are `count` (an execution is counted just after it answered)."""
    await wait_until(lambda: runs(engine) >= count, f"{count} executions ran")
    await asyncio.sleep(0.1)  # and no more than that
    assert runs(engine) == count


async def test_hits_answer_from_the_cache_each_with_its_own_request_id_and_headers_once() -> None:
    async with running_engine(APP.replace("TTL", "60s")) as engine, client(engine) as http:
        answers = [await http.get("/price", params={"sku": "apple"}) for _ in range(4)]
        await ran(engine, 1)
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1  # the first execution's answer, its `at` included
    assert len({a.headers["x-execution-id"] for a in answers}) == 1
    request_ids = [a.headers.get_list("x-request-id") for a in answers]
    assert all(len(ids) == 1 for ids in request_ids)
    assert len({ids[0] for ids in request_ids}) == 4  # each request's own id, not the first one's
    for answer in answers:
        for name in ("x-frame-options", "x-content-type-options", "content-security-policy", "cache-control",
                     "content-type", "content-length"):
            assert len(answer.headers.get_list(name)) == 1, (name, answer.headers)


async def test_each_key_has_its_own_entry_and_the_least_recent_goes_first() -> None:
    async with running_engine(APP.replace("TTL", "60s")) as engine, client(engine) as http:
        for sku in ("a", "b", "a", "b"):
            await http.get("/price", params={"sku": sku})
        await ran(engine, 2)
        await http.get("/price", params={"sku": "c"})  # max_entries 2: `a`, least recently used, goes
        await http.get("/price", params={"sku": "b"})
        await ran(engine, 3)
        await http.get("/price", params={"sku": "a"})
        await ran(engine, 4)


async def test_an_entry_expires_after_its_ttl_and_errors_are_not_cached() -> None:
    async with running_engine(APP.replace("TTL", "300ms")) as engine, client(engine) as http:
        first = await http.get("/price", params={"sku": "pear"})
        await asyncio.sleep(0.5)
        second = await http.get("/price", params={"sku": "pear"})
        await ran(engine, 2)
        assert first.headers["x-execution-id"] != second.headers["x-execution-id"]
        refused = [await http.get("/price", params={"sku": "none"}) for _ in range(2)]
        assert [r.status_code for r in refused] == [404, 404]
        await ran(engine, 4)


async def test_answers_setting_a_cookie_or_marked_private_are_not_shared() -> None:
    async with running_engine(APP.replace("TTL", "60s")) as engine, client(engine) as http:
        cookies = [await http.get("/price", params={"sku": "cookie"}) for _ in range(2)]
        private = [await http.get("/price", params={"sku": "mine"}) for _ in range(2)]
        await ran(engine, 4)
    sessions = [a.headers["set-cookie"] for a in cookies]
    assert sessions[0] != sessions[1]  # each caller its own session, never the first caller's
    assert private[0].headers["x-execution-id"] != private[1].headers["x-execution-id"]
