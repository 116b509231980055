"""The broker conformance harness: what a broker's test fixture provides, and helpers the suite uses.

A broker joins the suite with one file `brokers_<name>.py` defining `harness() -> BrokerHarness` and one line in
`test_conformance.py`'s `HARNESSES`. See README.md in this directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.process import free_port as e2e_free_port
from tests.factories import TaskOwner
from workflow_engine.modules.base import ModuleContext, ModuleState
from workflow_engine.modules.broker.base import Broker
from workflow_engine.modules.broker.message import Message
from workflow_engine.observability.metrics import Metrics
from workflow_engine.registry.builtins import default_registry

# Settings that make a test broker notice outages and redeliver quickly (merged under each harness's config).
FAST = {"health_interval": "200ms", "reconnect_initial": "50ms", "reconnect_max": "500ms",
        "backlog_interval": "200ms", "fetch_wait": "200ms", "publish_timeout": "5s", "operation_timeout": "2s"}


@dataclass
class PrivateServer:
    """A broker server this test started on its own port (never the shared one): stop and start it at will."""

    config: dict[str, Any]  # module config pointing at this server
    stop: Callable[[], Awaitable[None]]
    start: Callable[[], Awaitable[None]]


@dataclass
class BrokerHarness:
    """How the suite gets a broker of one type.

    `config(ns)` returns a module config against the shared local server for namespace `ns` (a token unique to the
    test): the test's topics are `<ns>.<name>`, so a harness can bind a stream or prefix to `<ns>.>` and tests
    never see each other's messages. `private_server(tmp, ns)` (optional) starts a
    server on a free port for the restart test. `redelivery_wait` bounds how long a message left unsettled by a vanished
    consumer takes to come back (ack wait, claim idle time).
    """

    type: str
    config: Callable[[str], dict[str, Any]]
    redelivery_wait: float = 5.0
    # (tmp dir, ns) -> async context manager yielding a PrivateServer
    private_server: Callable[[Path, str], Any] | None = None
    cleanup: Callable[[str], Awaitable[None]] | None = None  # remove what namespace `ns` left on the server
    extra: dict[str, Any] = field(default_factory=dict)


def unreachable(service: str, host: str, port: int) -> None:
    """Skip (or fail under CI) when `host:port` does not accept connections."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        message = f"{service} at {host}:{port} is unreachable ({exc})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    return e2e_free_port()


def wait_port(port: int, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"server on port {port} did not start within {limit}s")


@contextmanager
def process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server process of the test's own (killed at exit, even when the test fails)."""
    if shutil.which(args[0]) is None:
        message = f"{args[0]} is not installed"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with log.open("ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


class StateLog:
    """The states a module reported after start (what /readyz shows)."""

    def __init__(self) -> None:
        self.states: list[tuple[ModuleState, str | None]] = []
        self.changed = asyncio.Event()

    def __call__(self, state: ModuleState, detail: str | None) -> None:
        self.states.append((state, detail))
        self.changed.set()

    async def wait_for(self, state: ModuleState, limit: float = 20.0) -> None:
        async with asyncio.timeout(limit):
            while not self.states or self.states[-1][0] is not state:
                self.changed.clear()
                await self.changed.wait()


@asynccontextmanager
async def open_broker(harness: BrokerHarness, ns: str, *, config: dict[str, Any] | None = None,
                      metrics: Metrics | None = None, name: str = "bus") -> AsyncIterator[Broker]:
    """A started broker module of the harness's type (fast test settings); stopped at exit."""
    spec = default_registry().modules[harness.type]
    settings = {**FAST, **(config if config is not None else harness.config(ns))}
    owner = TaskOwner()
    ctx = ModuleContext(name, metrics or Metrics(process=False), {}, owner.spawn)
    broker = spec.factory(name, spec.config_model.model_validate(settings), ctx)
    assert isinstance(broker, Broker)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()
        await owner.close()


class Consumer:
    """Runs `broker.consume` in a task and collects what it delivers (settling is up to the test)."""

    def __init__(self, broker: Broker, topic: str, group: str, max_in_flight: int = 16) -> None:
        self.broker, self.topic, self.group, self.max_in_flight = broker, topic, group, max_in_flight
        self.received: list[Message] = []
        self.arrived = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async for message in self.broker.consume(self.topic, self.group, self.max_in_flight):
            self.received.append(message)
            self.arrived.set()

    async def __aenter__(self) -> Consumer:
        self.task = asyncio.create_task(self._run(), name=f"consumer:{self.topic}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None

    async def wait_count(self, count: int, limit: float = 20.0) -> list[Message]:
        """Wait until `count` messages arrived in total (a safety limit; reaching it fails the test)."""
        async with asyncio.timeout(limit):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.received

    async def quiet_for(self, seconds: float) -> int:
        """Messages received during the next `seconds` (for 'nothing more arrives' checks)."""
        before = len(self.received)
        await asyncio.sleep(seconds)
        return len(self.received) - before


def unique(prefix: str = "c") -> str:
    """A namespace token no other test (or earlier run against the shared server) uses."""
    return f"{prefix}{os.getpid()}x{time.monotonic_ns() % 10**12}"
