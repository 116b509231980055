"""Conformance fixture of `broker.rabbitmq`: the shared server (RABBITMQ_URL), and a private node to restart.

A topic exchange stores nothing by itself, so the config declares the consumer groups the suite consumes after
publishing (exactly what a deployment lists in `groups`). Each test gets its own exchange and queue names under
its namespace; `cleanup` deletes them. The private node (restart test) is a real `rabbitmq-server` on free
ports with its own data directory: it takes ~10 s to boot, twice.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest

from tests.modules.broker.conformance import BrokerHarness, PrivateServer, free_port, unreachable, wait_port

RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the Debian wrapper in /usr/sbin would switch users
# (topic, group) the suite consumes after publishing, plus the topic it publishes to without a consumer. No
# catch-all group: it would make every publish routable and hide an undeclared group (`unroutable`).
GROUPS = [("orders", "g1"), ("once", "g"), ("acked", "g"), ("retry", "g"), ("killed", "g"), ("poison", "g"),
          ("ordered", "g"), ("pressure", "g"), ("restart", "g"), ("open", "g"), ("burst", "g"),
          ("graceful", "g")]


def rabbitmq_config(ns: str, url: str = RABBITMQ_URL) -> dict[str, Any]:
    return {"url": url, "exchange": ns, "queue_prefix": f"{ns}:", "heartbeat": 2,
            "groups": [{"topic": f"{ns}.{topic}", "group": group} for topic, group in GROUPS]}


def _config(ns: str) -> dict[str, Any]:
    parts = urlsplit(RABBITMQ_URL)
    unreachable("RabbitMQ", parts.hostname or "127.0.0.1", parts.port or 5672)
    return rabbitmq_config(ns)


async def cleanup(ns: str, groups: Sequence[tuple[str, str]] = GROUPS) -> None:
    """Delete the test's exchange and queues (their group, delay and dead-letter queues) from the shared server;
    `groups` are (topic after `<ns>.`, group) pairs, `*` spelled `+` as in queue names."""
    names = [f"{ns}:{group}/{ns}.{topic}" for topic, group in groups]
    names += [f"{name}/delay" for name in names] + [f"{ns}:dlq/{ns}.poison.dlq"]
    connection = await aio_pika.connect(RABBITMQ_URL)
    try:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)
        await channel.exchange_delete(ns)
    finally:
        await connection.close()


@contextmanager
def node(tmp: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """One run of the private node in its own process group (the script starts the Erlang VM as a child)."""
    if not os.path.exists(SERVER) or shutil.which("erl") is None:
        message = f"{SERVER} is not installed"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with (tmp / "rabbitmq.log").open("ab") as out:
        proc = subprocess.Popen([SERVER], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()  # the script stops the node gracefully
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@asynccontextmanager
async def private_server(tmp: Path, ns: str) -> AsyncIterator[PrivateServer]:
    """A rabbitmq-server node on free ports with its data in `tmp` (durable queues survive its restart)."""
    port, dist = free_port(), free_port()
    (tmp / "enabled_plugins").write_text("[].\n")
    (tmp / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{port}\n")
    (tmp / "env.conf").write_text("")
    env = {**os.environ, "HOME": str(tmp), "RABBITMQ_NODENAME": f"{ns}@localhost", "RABBITMQ_NODE_PORT": str(port),
           "RABBITMQ_DIST_PORT": str(dist), "RABBITMQ_MNESIA_BASE": str(tmp / "mnesia"),
           "RABBITMQ_LOG_BASE": str(tmp / "log"), "RABBITMQ_CONFIG_FILE": str(tmp / "rabbitmq.conf"),
           "RABBITMQ_ENABLED_PLUGINS_FILE": str(tmp / "enabled_plugins"),
           "RABBITMQ_CONF_ENV_FILE": str(tmp / "env.conf"), "RABBITMQ_PID_FILE": str(tmp / "pid")}
    with ExitStack() as stack:
        current = stack.enter_context(node(tmp, env))

        async def stop() -> None:
            current.terminate()  # the script stops the node gracefully (messages are on disk)
            await asyncio.to_thread(current.wait, 30)

        async def start() -> None:
            nonlocal current
            current = stack.enter_context(node(tmp, env))
            await asyncio.to_thread(wait_port, port, 60)

        await asyncio.to_thread(wait_port, port, 60)
        yield PrivateServer(rabbitmq_config(ns, f"amqp://guest:guest@127.0.0.1:{port}/"), stop, start)


def harness() -> BrokerHarness:
    return BrokerHarness(type="broker.rabbitmq", config=_config, redelivery_wait=1.0, private_server=private_server,
                         cleanup=cleanup)
