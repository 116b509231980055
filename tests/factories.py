"""Factories shared by runtime, trigger and engine tests: real engines built from YAML text, metric reads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import textwrap
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from workflow_engine.config.models import AppConfig
from workflow_engine.config.validate import load_config_text
from workflow_engine.engine.engine import Engine
from workflow_engine.errors import ConfigError
from workflow_engine.observability.metrics import Metrics
from workflow_engine.registry.builtins import default_registry
from workflow_engine.registry.specs import Registry
from workflow_engine.runtime.execution import Execution
from workflow_engine.runtime.program import compile_program

FILE = "app.yaml"

# Safety net for waits on causal conditions; a test that needs it has failed.
WAIT_LIMIT = 10.0


def app_yaml(workflows: str, *, engine: str = "{shutdown_grace: 2s, park_after: 1h}") -> str:
    """A whole config: a fixed header, then `workflows` (YAML text, dedented) under `workflows:`."""
    body = textwrap.indent(textwrap.dedent(workflows).strip("\n"), "  ")
    return f"version: 1\nname: app\nengine: {engine}\nworkflows:\n{body}\n"


def load_app(yaml_text: str, registry: Registry | None = None, env: Mapping[str, str] | None = None) -> AppConfig:
    """Validate dedented YAML text as `app.yaml` with an empty environment unless one is given."""
    return load_config_text(textwrap.dedent(yaml_text), FILE, registry or default_registry(), env or {})


def config_issues(yaml_text: str, registry: Registry | None = None) -> list[str]:
    """The issues (as `FILE:LINE:COL: PATH: MESSAGE`) of validating and then compiling the config."""
    registry = registry or default_registry()
    with pytest.raises(ConfigError) as caught:
        compile_program(load_app(yaml_text, registry), registry)
    return [str(issue) for issue in caught.value.issues]


@asynccontextmanager
async def running_engine(
    yaml_text: str,
    *,
    registry: Registry | None = None,
    env: Mapping[str, str] | None = None,
    metrics: Metrics | None = None,
    store_url: str = "sqlite:///:memory:",
) -> AsyncIterator[Engine]:
    """A started engine for `yaml_text` (own metrics, management on a free port); always stopped on exit."""
    registry = registry or default_registry()
    app = load_app(yaml_text, registry, env)
    engine = Engine(app, registry, metrics=metrics or Metrics(process=False), mgmt_address="127.0.0.1:0",
                    store_url=store_url, environ=dict(env or {}))
    run = asyncio.create_task(engine.run(), name="test-engine")
    started = asyncio.create_task(engine.started.wait())
    await asyncio.wait([run, started], return_when=asyncio.FIRST_COMPLETED)
    if not started.done():
        started.cancel()
        run.result()  # startup failed: raise its error
        raise AssertionError("engine.run() returned before the engine started")
    try:
        yield engine
    finally:
        engine.request_stop()
        await run


def sample(metrics: Metrics, metric: str, **labels: str) -> float:
    """The value of one metric sample; 0 when the series does not exist yet."""
    return metrics.registry.get_sample_value(metric, labels) or 0.0


def executions(metrics: Metrics, workflow: str, status: str) -> float:
    """`workflow_executions_total` for one workflow type and status."""
    return sample(metrics, "workflow_executions_total", workflow_type=workflow, status=status)


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll until `condition()` holds, for state that has no event to wait on (fails after WAIT_LIMIT s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    while True:
        if condition():
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.001)


def finished_runs(engine: Engine, workflow: str) -> list[Execution]:
    """Finished executions of `workflow` the runtime remembers, oldest first."""
    return [e for e in engine.runtime.recent.values() if e.workflow == workflow and e.finished]


async def wait_done(execution: Execution) -> Execution:
    """Wait (bounded) until `execution` finished."""
    async with asyncio.timeout(WAIT_LIMIT):
        await asyncio.shield(execution.done)
    return execution


class _QuietUvicorn(uvicorn.Server):
    """uvicorn without signal handlers: the test process owns its signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@asynccontextmanager
async def serve_app(app: ASGIApp) -> AsyncIterator[str]:
    """Serve a small ASGI app on 127.0.0.1 (a free port) for the duration; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _QuietUvicorn(uvicorn.Config(app, lifespan="off", log_config=None, access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="test-upstream")
    try:
        await wait_until(lambda: server.started or task.done(), "the upstream server started")
        if task.done():
            task.result()
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


class CallCounter:
    """A Starlette endpoint that counts calls and fails (503) the first `failures` of them."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls = 0

    async def handle(self, request: Request) -> Response:
        self.calls += 1
        if self.calls <= self.failures:
            return JSONResponse({"call": self.calls, "ok": False}, status_code=503)
        return JSONResponse({"call": self.calls, "ok": True})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/call", self.handle, methods=["GET", "POST"])])


class TaskOwner:
    """Owns the tasks a module or bus spawns during a test; cancels leftovers at teardown."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self.tasks.append(task)
        return task

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# Workflows for event-bus tests: `emit` publishes orders.created, `on-order` is triggered by it, `on-job-done`
# by the lifecycle event of `job`.
EVENT_WORKFLOWS = """\
emit:
  steps:
    - publish: {topic: "orders.created", message: {order: "{{ input.order }}"}, headers: {source: shop}}
on-order:
  trigger: {event: {topic: "orders.*"}}
  steps:
    - set: {order: "{{ input.data.order }}", source: "{{ input.headers.source }}", id: "{{ input.id }}"}
job:
  steps:
    - set: {done: true}
on-job-done:
  trigger: {event: {topic: "workflow.completed"}}
  steps:
    - set: {workflow: "{{ input.data.workflow }}", execution: "{{ input.data.execution_id }}"}
"""


def bus_app_yaml(module_type: str, module: Mapping[str, Any], workflows: str, *, topic: str = "workflow-events",
                 **engine: Any) -> str:
    """A whole config whose event bus is backed by the broker module `bus` (`engine` adds engine settings)."""
    settings = {"shutdown_grace": "1s", **engine, "event_bus": {"broker": "bus", "topic": topic}}
    modules = [{"name": "bus", "type": module_type, "config": dict(module)}]
    return (f"version: 1\nname: app\nengine: {json.dumps(settings)}\nmodules: {json.dumps(modules)}\n"
            f"workflows:\n{textwrap.indent(workflows, '  ')}")
