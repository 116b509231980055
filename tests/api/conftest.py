"""Real engines with the management API and a token per role, and HTTP clients that call it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.factories import WAIT_LIMIT, app_yaml, running_engine
from workflow_engine.api.auth import ENV_TOKEN, hash_token
from workflow_engine.engine.engine import Engine

TOKENS = {
    "viewer": "viewer-secret-token-0123456789",
    "operator": "operator-secret-token-0123456789",
    "admin": "admin-secret-token-0123456789",
}
# Hashed once per test session: argon2 is slow on purpose.
_HASHES: dict[str, str] = {}


def token_hash(role: str) -> str:
    """The argon2 hash of the test token of `role`."""
    if role not in _HASHES:
        _HASHES[role] = hash_token(TOKENS[role])
    return _HASHES[role]


def tokens_yaml(roles: tuple[str, ...] = ("viewer", "operator", "admin")) -> str:
    """`engine.api.tokens` entries (flow style) for the test token of each role."""
    return ", ".join(f"{{name: {role}, role: {role}, token_hash: '{token_hash(role)}'}}" for role in roles)


def engine_yaml(tokens: str | None = None) -> str:
    """The `engine:` mapping of a test app with API tokens (`tokens`: flow-style list items)."""
    tokens = tokens_yaml() if tokens is None else tokens
    return f"{{shutdown_grace: 2s, park_after: 1h, api: {{tokens: [{tokens}]}}}}"


def bearer(role: str) -> dict[str, str]:
    """The Authorization header of the test token of `role`."""
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@dataclass
class Api:
    """A running engine and a client of its management server."""

    engine: Engine
    http: httpx.AsyncClient

    async def get(self, path: str, role: str = "viewer", *, params: dict[str, Any] | None = None) -> httpx.Response:
        """GET with the token of `role`."""
        return await self.http.get(path, headers=bearer(role), params=params)

    async def post(self, path: str, role: str = "operator", *, json: Any = None, content: str | bytes | None = None,
                   headers: dict[str, str] | None = None) -> httpx.Response:
        """POST with the token of `role`."""
        return await self.http.post(path, headers={**bearer(role), **(headers or {})}, json=json, content=content)

    async def put(self, path: str, role: str = "admin", *, content: str) -> httpx.Response:
        """PUT YAML text with the token of `role`."""
        return await self.http.put(path, headers={**bearer(role), "Content-Type": "text/yaml"}, content=content)


@asynccontextmanager
async def api_engine(workflows: str, *, tokens: str | None = None) -> AsyncIterator[Api]:
    """An engine running `workflows` with a token per role; yields it with a client of its management server."""
    async with running_engine(app_yaml(workflows, engine=engine_yaml(tokens))) as engine:
        assert engine.management is not None
        async with httpx.AsyncClient(base_url=engine.management.url, timeout=10) as http:
            yield Api(engine, http)


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own WORKFLOW_API_TOKEN must not change what the tests see."""
    monkeypatch.delenv(ENV_TOKEN, raising=False)


class Blocker:
    """An upstream endpoint whose calls wait until `release()`: keeps executions running for as long as needed."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.released = asyncio.Event()
        self.calls = 0

    async def handle(self, _request: Request) -> Response:
        self.calls += 1
        self.arrived.set()
        await self.released.wait()
        return JSONResponse({"released": True})

    def release(self) -> None:
        """Let every waiting and future call answer."""
        self.released.set()

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/block", self.handle, methods=["GET"])])


async def poll_execution(api: Api, execution_id: str, until: tuple[str, ...]) -> dict[str, Any]:
    """GET the execution until its status is one of `until` (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    while True:
        body: dict[str, Any] = (await api.get(f"/api/executions/{execution_id}")).json()
        if body.get("status") in until:
            return body
        if loop.time() > deadline:
            raise AssertionError(f"execution {execution_id} still {body.get('status')}, expected one of {until}")
        await asyncio.sleep(0.01)
