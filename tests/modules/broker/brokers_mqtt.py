"""Conformance fixture of `broker.mqtt`: the shared Mosquitto (MQTT_HOST/MQTT_PORT), and a private one to restart.

MQTT keeps messages only for sessions that subscribed, so the config declares the groups the suite consumes
after publishing (what a deployment lists in `groups`), with the namespace as client id so that no two tests
share a session. `cleanup` ends those sessions (a clean start with session expiry 0). The private server is
`mosquitto -c <conf>` on a free port with persistence in the temp dir (sessions and queued messages survive
its restart).
"""

from __future__ import annotations

import asyncio
import getpass
import os
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt

from tests.modules.broker.conformance import BrokerHarness, PrivateServer, free_port, process, unreachable, wait_port
from workflow_engine.modules.broker.mqtt import session_id

MQTT_HOST = os.environ.get("MQTT_HOST", "127.0.0.1")
MQTT_PORT = int(os.environ.get("MQTT_PORT", "1883"))
# (topic, group) the suite consumes after publishing, plus the topic published to without a consumer.
GROUPS = [("orders", "g1"), ("once", "g"), ("acked", "g"), ("retry", "g"), ("killed", "g"), ("poison", "g"),
          ("ordered", "g"), ("pressure", "g"), ("restart", "g"), ("open", "g"), ("burst", "g"),
          ("graceful", "g")]


def mqtt_config(ns: str, port: int = MQTT_PORT) -> dict[str, Any]:
    return {"host": MQTT_HOST, "port": port, "client_id": ns, "keepalive": 2, "session_expiry": "10m",
            "groups": [{"topic": f"{ns}.{topic}", "group": group} for topic, group in GROUPS]}


def _config(ns: str) -> dict[str, Any]:
    unreachable("Mosquitto", MQTT_HOST, MQTT_PORT)
    return mqtt_config(ns)


def _sessions(ns: str) -> list[str]:
    names = [session_id(ns, f"{ns}.{topic}", group) for topic, group in GROUPS]
    return [*names, session_id(ns, f"{ns}.poison.dlq", "dlq")]


async def cleanup(ns: str, port: int = MQTT_PORT) -> None:
    """End the test's sessions on the server (they would keep their messages until they expire)."""
    for session in _sessions(ns):
        await _end(session, port)


async def end_session(ns: str, topic: str, group: str) -> None:
    """End one more session a test made (client id `ns`)."""
    await _end(session_id(ns, topic, group), MQTT_PORT)


async def _end(session: str, port: int) -> None:
    async with aiomqtt.Client(MQTT_HOST, port, identifier=session, protocol=aiomqtt.ProtocolVersion.V5,
                              clean_start=True):
        pass


def mosquitto_args(tmp: Path, port: int, extra: str = "") -> list[str]:
    """The command line of a private mosquitto on `port`, its config file written to `tmp`."""
    conf = tmp / "mosquitto.conf"
    # `user`: started as root, mosquitto would switch to user mosquitto, which cannot write to the temp dir.
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser {getpass.getuser()}\n{extra}")
    return ["mosquitto", "-c", str(conf)]


@asynccontextmanager
async def private_server(tmp: Path, ns: str, extra: str = "") -> AsyncIterator[PrivateServer]:
    """mosquitto on a free port, persistence in `tmp` (written when it stops); `extra`: more config lines."""
    port = free_port()
    args = mosquitto_args(tmp, port, f"persistence true\npersistence_location {tmp}/\n{extra}")
    with ExitStack() as stack:
        current = stack.enter_context(process(args, tmp / "mosquitto.log"))

        async def stop() -> None:
            current.terminate()
            await asyncio.to_thread(current.wait, 10)

        async def start() -> None:
            nonlocal current
            current = stack.enter_context(process(args, tmp / "mosquitto.log"))
            await asyncio.to_thread(wait_port, port)

        await asyncio.to_thread(wait_port, port)
        yield PrivateServer(mqtt_config(ns, port), stop, start)


def harness() -> BrokerHarness:
    return BrokerHarness(type="broker.mqtt", config=_config, redelivery_wait=1.0, private_server=private_server,
                         cleanup=cleanup)
