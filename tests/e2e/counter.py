"""A counting HTTP endpoint in the test process: how many times each step really called it."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.e2e.process import free_port, wait_until


class CallCounter:
    """`/hit/{name}` counts and answers; `/slow/{name}` counts and, on its first call only, hangs."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()

    def app(self) -> Starlette:
        async def hit(request: Request) -> JSONResponse:
            return JSONResponse({"name": self._count(request)})

        async def slow(request: Request) -> JSONResponse:
            name = self._count(request)
            if self.calls[name] == 1:
                await asyncio.sleep(60)
            return JSONResponse({"name": name})

        return Starlette(routes=[Route("/hit/{name}", hit, methods=["POST"]),
                                 Route("/slow/{name}", slow, methods=["POST"])])

    def _count(self, request: Request) -> str:
        name = str(request.path_params["name"])
        with self.lock:
            self.calls[name] += 1
        return name


@contextmanager
def counter_server() -> Iterator[tuple[CallCounter, str]]:
    """Serve a CallCounter on a free port in a background thread."""
    counter = CallCounter()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(counter.app(), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=10)
    try:
        yield counter, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
