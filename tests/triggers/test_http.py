"""The `http` trigger's input: what a workflow sees of the request (read straight from the ASGI scope)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import jwt
import orjson
import pytest
from starlette.responses import Response

from tests.factories import running_engine
from workflow_engine.engine.engine import Engine
from workflow_engine.modules.http.server import HttpServer
from workflow_engine.triggers.http import JSON, json_response

HEADER = """version: 1
name: app
engine: {shutdown_grace: 2s, park_after: 1h}
modules:
  - name: web
    type: http.server
    config: {address: "127.0.0.1:0"}
workflows:
"""
APP = HEADER + """  echo:
    trigger: {http: {server: web, method: POST, path: "/items/{item}"}}
    steps:
      - respond: {body: "{{ input }}"}
"""


def client_of(engine: Engine) -> httpx.AsyncClient:
    """A client of the app's `web` server."""
    server = engine.modules["web"]
    assert isinstance(server, HttpServer)
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}")


async def test_the_workflow_input_holds_method_path_params_query_headers_and_body() -> None:
    async with running_engine(APP) as engine, client_of(engine) as client:
        answer = await client.post(
            "/items/a%20b?x=1&x=2&empty=&name=J%C3%B6rg", json={"n": 1},
            headers=[("X-Trace", "first"), ("X-Trace", "second"), ("X-Custom", "v")])
    assert answer.status_code == 200
    seen = answer.json()
    assert seen["method"] == "POST"
    assert seen["path"] == "/items/a b"
    assert seen["params"] == {"item": "a b"}
    # Repeated query parameters: the last wins; blank values are kept; percent-encoding is decoded.
    assert seen["query"] == {"x": "2", "empty": "", "name": "Jörg"}
    assert seen["query_string"] == "x=1&x=2&empty=&name=J%C3%B6rg"
    # Header names are lower-case; of repeated headers the first is kept.
    assert seen["headers"]["x-trace"] == "first"
    assert seen["headers"]["x-custom"] == "v"
    assert seen["headers"]["content-type"] == "application/json"
    assert seen["body"] == {"n": 1}


async def test_a_request_without_a_query_string_has_an_empty_query() -> None:
    async with running_engine(APP) as engine, client_of(engine) as client:
        answer = await client.post("/items/7", content=b"plain text", headers={"content-type": "text/plain"})
    assert answer.json()["query"] == {}
    assert answer.json()["query_string"] == ""
    assert answer.json()["body"] == "plain text"


SECRET = "s" * 32
GUARDED = HEADER + """  echo:
    trigger:
      http:
        server: web
        method: POST
        path: /guarded
        middleware: {auth: {api_keys: [the-api-key], jwt: {secret: SECRET, require: []}}}
    steps:
      - respond: {body: {headers: "{{ input.headers }}", auth: "{{ input.auth }}"}}
""".replace("SECRET", SECRET)


async def test_the_credential_an_auth_middleware_checked_is_not_in_the_input_but_its_claims_are() -> None:
    token = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    async with running_engine(GUARDED) as engine:
        async with client_of(engine) as client:
            by_key = await client.post("/guarded", json={}, headers={"X-API-Key": "the-api-key", "X-Other": "kept"})
            by_token = await client.post("/guarded", json={}, headers={"Authorization": f"Bearer {token}"})
        stored = [await engine.store.get_execution(a.headers["x-execution-id"]) for a in (by_key, by_token)]
    assert by_key.status_code == by_token.status_code == 200
    assert by_key.json()["headers"]["x-api-key"] == "[redacted]"
    assert by_key.json()["headers"]["x-other"] == "kept"
    assert by_key.json()["auth"] == {"api_key": True}
    assert by_token.json()["headers"]["authorization"] == "[redacted]"
    assert by_token.json()["auth"] == {"sub": "alice"}
    for record in stored:  # what the store keeps (and the API shows) of the request
        assert record is not None
        assert "the-api-key" not in str(record.input)
        assert token not in str(record.input)


ECHO_HEADER = HEADER + """  echo:
    trigger: {http: {server: web, path: /echo}}
    steps:
      - respond: {body: ok, headers: {X-Echo: "{{ input.query.v }}"}}
"""


async def test_a_header_value_with_a_line_break_fails_the_execution_with_a_json_error() -> None:
    async with running_engine(ECHO_HEADER) as engine, client_of(engine) as client:
        injected = await client.get("/echo", params={"v": "a\r\nInjected: yes"})
        plain = await client.get("/echo", params={"v": "fine"})
    assert injected.status_code == 500  # not a dropped connection, and no injected header
    assert "injected" not in injected.headers
    assert injected.json()["error"]["code"] == "invalid_header"
    assert plain.headers["x-echo"] == "fine"


KEYED = HEADER + """  refuse:
    trigger: {http: {server: web, method: POST, path: /refuse}}
    steps:
      - fail: {message: "out of stock", code: out_of_stock, status: 422}
  quick:
    durable: false
    trigger: {http: {server: web, method: POST, path: /quick}}
    steps:
      - respond: {status: 201, body: {id: "{{ execution.id }}"}, headers: {X-Kind: quick}}
"""


async def test_a_repeated_idempotency_key_gets_the_first_answer_after_a_restart(tmp_path: Path) -> None:
    """Answered from the store (another replica, or after a restart), a failed execution's 4xx status and a
    `durable: false` execution's `respond` status and headers are the ones the first caller got."""
    store_url = f"sqlite:///{tmp_path}/store.db"
    answers = []
    for _ in range(2):  # the second engine knows the executions only from the store
        async with running_engine(KEYED, store_url=store_url) as engine, client_of(engine) as client:
            answers.append([await client.post(path, json={}, headers={"Idempotency-Key": "k-1"})
                            for path in ("/refuse", "/quick")])
    (refused, quick), (refused_again, quick_again) = answers
    assert refused.status_code == refused_again.status_code == 422
    assert refused.json() == refused_again.json()
    assert refused_again.json()["error"]["code"] == "out_of_stock"
    assert quick.status_code == quick_again.status_code == 201
    assert quick.json() == quick_again.json()
    assert quick_again.headers["x-kind"] == "quick"
    assert quick.headers["x-execution-id"] == quick_again.headers["x-execution-id"]


UNAVAILABLE = HEADER.replace("workflows:\n", "  - {name: later, type: dynamic.component, config: {}}\n"
                                             "workflows:\n") + """  pending:
    trigger: {http: {server: web, path: /pending}}
    steps: [{call: later}]
"""


async def test_a_component_without_code_answers_503_a_caller_may_retry() -> None:
    async with running_engine(UNAVAILABLE) as engine, client_of(engine) as client:
        answer = await client.get("/pending")
    assert answer.status_code == 503  # documented (DYNAMIC.md); it was 500
    assert answer.json()["error"]["code"] == "component_unavailable"


async def test_credential_headers_are_redacted_where_the_input_is_stored_or_shown() -> None:
    """Without an auth middleware too: the store and any viewer of the API saw callers' tokens and cookies."""
    async with running_engine(HEADER + """  seen:
    trigger: {http: {server: web, path: /seen}}
    steps:
      - respond: {body: {auth: "{{ input.headers.authorization }}"}}
""") as engine, client_of(engine) as client:
        answer = await client.get("/seen", headers={"Authorization": "Bearer user-secret", "Cookie": "sid=abc",
                                                    "X-Trace": "t-1"})
        record = await engine.store.get_execution(answer.headers["x-execution-id"])
        shown = engine.runtime.get(answer.headers["x-execution-id"])
    assert answer.json() == {"auth": "Bearer user-secret"}  # the running workflow sees it
    assert record is not None
    assert record.input["headers"]["authorization"] == record.input["headers"]["cookie"] == "[redacted]"
    assert record.input["headers"]["x-trace"] == "t-1"
    assert shown is not None
    assert shown.summary()["input"]["headers"]["authorization"] == "[redacted]"


async def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_is_closed() -> None:
    app = APP.replace('config: {address: "127.0.0.1:0"}', 'config: {address: "127.0.0.1:0", body_timeout: 200ms}')
    async with running_engine(app) as engine:
        server = engine.modules["web"]
        assert isinstance(server, HttpServer)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            # A client that sends its headers and then only part of the body it announced (slowloris).
            writer.write(b"POST /items/1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"n\": ")
            await writer.drain()
            async with asyncio.timeout(5):
                answer = await reader.read()  # until the server closes the connection
        finally:
            writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), head
        assert b"connection: close" in head.lower()
        assert orjson.loads(body)["error"] == {"code": "body_timeout",
                                               "message": "request body not received within 0.2s"}
        # A client that sends its body in time is served as before.
        async with client_of(engine) as client:
            assert (await client.post("/items/2", json={"n": 2})).json()["body"] == {"n": 2}
        assert server.body_deadlines._reading == {}, "a finished read left its deadline behind"


@pytest.mark.parametrize(("status", "headers"), [
    (200, {"X-Execution-Id": "e-1"}), (204, None), (304, {}), (101, None),
    (201, {"Content-Type": "application/problem+json", "X-Extra": "b"}), (200, {"Content-Length": "7"}),
])
def test_a_json_response_has_the_headers_starlette_would_give_it(status: int, headers: dict[str, str] | None) -> None:
    ours = json_response(status, {"x": [1, "é"]}, headers)
    starlettes = Response(orjson.dumps({"x": [1, "é"]}), status, headers, media_type=JSON)
    assert (ours.status_code, ours.body, ours.raw_headers) == (
        starlettes.status_code, starlettes.body, starlettes.raw_headers)
