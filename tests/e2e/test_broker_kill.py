"""Kill test: messages published to a real broker while the `workflow run` consuming them is SIGKILLed twice.

After the last restart every message has exactly one execution in the store (one per idempotency key) and every
good one succeeded; none is lost; poison messages end in `<topic>.dlq` with their error. Durable and `durable:
false` workflows.
`BROKER_KILL_MESSAGES` sets the count per broker (default 600 to fit the suite's time budget; the issue's
10,000: `BROKER_KILL_MESSAGES=10000 .venv/bin/pytest tests/e2e/test_broker_kill.py -o timeout=900`).

MQTT runs against a private mosquitto whose per-session queue is unbounded (`max_queued_messages 0`): with the
default bound (1000) mosquitto drops what a killed consumer's session cannot hold and still PUBACKs the
publisher, so no client could keep those messages (docs/BROKERS.md, broker.mqtt).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import httpx
import orjson
import pytest

from tests.e2e.process import EngineProcess, engine_process
from tests.modules.broker import brokers_mqtt, brokers_nats, brokers_rabbitmq, brokers_redis
from tests.modules.broker.conformance import (
    BrokerHarness,
    Consumer,
    free_port,
    open_broker,
    process,
    unique,
    wait_port,
)
from workflow_engine.modules.broker.message import ERROR_HEADER, ORIGINAL_ID_HEADER

MESSAGES = int(os.environ.get("BROKER_KILL_MESSAGES", "600"))
POISON_EVERY = 97
BROKERS: dict[str, Callable[[], BrokerHarness]] = {
    "nats": brokers_nats.harness, "redis": brokers_redis.harness, "rabbitmq": brokers_rabbitmq.harness,
    "mqtt": brokers_mqtt.harness,
}

APP = """\
version: 1
name: broker-kill
engine:
  store: "${{WORKFLOW_STORE}}"
  replica_id: kill-test
  lease: 2s
  poll_interval: 100ms
  shutdown_grace: 1s
modules:
  - name: bus
    type: {type}
    config: {config}
workflows:
  consume:
    durable: {durable}
    trigger: {{message: {{broker: bus, topic: "{topic}", max_in_flight: 128}}}}
    concurrency: 64
    on_message_error: {{max_deliveries: 2, initial: 50ms, max: 100ms}}
    steps:
      - id: check
        if: "{{{{ input.body.poison }}}}"
        fail: "poison message {{{{ input.body.i }}}}"
      - id: done
        set: {{i: "{{{{ input.body.i }}}}"}}
"""


def _rows(db: Path) -> list[tuple[str, str]]:
    """(idempotency key, status) of every execution of `consume`."""
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        try:
            return list(conn.execute("SELECT idempotency_key, status FROM executions WHERE workflow = 'consume'"))
        except sqlite3.OperationalError:  # the schema is not there yet
            return []


def _finished(db: Path) -> int:
    return sum(1 for _, status in _rows(db) if status in ("success", "error"))


class Publisher(threading.Thread):
    """Publishes the messages (spread over a few seconds so the kills happen while it runs)."""

    def __init__(self, harness: BrokerHarness, ns: str, config: dict[str, object]) -> None:
        super().__init__(daemon=True)
        self.harness, self.ns, self.config = harness, ns, config
        self.ids: dict[str, bool] = {}  # message id -> poison
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._publish())
        except BaseException as exc:
            self.error = exc

    async def _publish(self) -> None:
        pace = 6.0 / MESSAGES
        async with open_broker(self.harness, self.ns, config=self.config, name="publisher") as broker:
            started = time.monotonic()
            for i in range(MESSAGES):
                poison = i % POISON_EVERY == 0
                message_id = await broker.publish(f"{self.ns}.jobs", {"i": i, "poison": poison})
                self.ids[message_id] = poison
                ahead = started + i * pace - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)


def _ready(engine: EngineProcess) -> None:
    """Wait for /readyz 200 (a busy machine may need longer than process.py's 20 s to start an engine)."""
    def ready() -> bool:
        assert engine.proc.poll() is None, f"engine exited early:\n{engine.logs()[-3000:]}"
        try:
            return httpx.get(f"{engine.mgmt}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
    _wait(ready, "the engine is ready", 90)


def _wait(condition: Callable[[], bool], what: str, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "durable: false"])
@pytest.mark.parametrize("name", list(BROKERS))
def test_no_message_lost_or_run_twice_across_two_sigkills(name: str, durable: bool, tmp_path: Path) -> None:
    """`durable: false` too: a first delivery's execution has no row until it ends, so the store's one row per
    message rests on the end's insert being refused for a key already taken."""
    with ExitStack() as stack:
        harness = BROKERS[name]()
        if name == "mqtt":
            port = free_port()
            stack.enter_context(process(brokers_mqtt.mosquitto_args(tmp_path, port, "max_queued_messages 0\n"),
                                        tmp_path / "mosquitto.log"))
            wait_port(port)
            harness = replace(harness, config=lambda ns: brokers_mqtt.mqtt_config(ns, port), cleanup=None)
        _kill_twice(name, harness, tmp_path, durable=durable)


def _kill_twice(name: str, harness: BrokerHarness, tmp_path: Path, *, durable: bool) -> None:
    ns = unique("k")
    config = {**harness.config(ns), "health_interval": "500ms", "backlog_interval": "1s"}
    if name == "nats":
        config["ack_wait"] = "3s"
    elif name == "redis":
        config["claim_idle"] = "3s"
    else:
        # RabbitMQ and MQTT keep nothing for a group nobody declared yet: the trigger's group and the one that
        # reads the dead letters exist from the start (docs/BROKERS.md).
        config["groups"] = [{"topic": f"{ns}.jobs", "group": "consume"}]
        config["dead_letter_group"] = "inspect"
    app = tmp_path / "app.yaml"
    app.write_text(APP.format(type=harness.type, config=orjson.dumps(config).decode(), topic=f"{ns}.jobs",
                              durable=str(durable).lower()))
    db = tmp_path / "store.db"
    env = {"WORKFLOW_STORE": f"sqlite:///{db}"}
    publisher = Publisher(harness, ns, config)
    try:
        for kill_at in (MESSAGES // 4, MESSAGES // 2):
            with engine_process(app, env=env, wait_ready=False) as engine:
                _ready(engine)
                if not publisher.is_alive() and not publisher.ids:
                    publisher.start()
                _wait(lambda at=kill_at: _finished(db) >= at, f"{kill_at} executions finished", 120)  # type: ignore[misc]
                engine.proc.send_signal(signal.SIGKILL)
                engine.proc.wait(10)
        with engine_process(app, env=env, wait_ready=False) as engine:
            _ready(engine)
            publisher.join(120)
            assert publisher.error is None, publisher.error
            assert len(publisher.ids) == MESSAGES
            _wait(lambda: _finished(db) >= MESSAGES, "every message's execution finished", 180)
            time.sleep(1)  # a late duplicate execution, if there were one, would show now
            rows = _rows(db)
            dead = asyncio.run(_dead_letters(harness, ns, config, sum(publisher.ids.values())))
            assert engine.proc.poll() is None, engine.logs()[-3000:]
    finally:
        if harness.cleanup is not None:
            asyncio.run(harness.cleanup(ns))
    keys = [key for key, _ in rows]
    assert len(keys) == len(set(keys)) == MESSAGES, "one execution per message"
    status = dict(rows)
    for message_id, poison in publisher.ids.items():
        assert status[f"bus:{message_id}"] == ("error" if poison else "success"), message_id
    poison_ids = {mid for mid, poison in publisher.ids.items() if poison}
    assert set(dead) == poison_ids
    assert all("poison message" in error["message"] for error in dead.values())


async def _dead_letters(harness: BrokerHarness, ns: str, config: dict[str, object],
                        expected: int) -> dict[str, dict[str, object]]:
    """Original message id -> error, of the dead letters in `<topic>.dlq`."""
    async with open_broker(harness, ns, config=config, name="inspect") as broker, \
            Consumer(broker, f"{ns}.jobs.dlq", "inspect", max_in_flight=256) as dlq:
        await dlq.wait_count(expected, limit=60)
        await asyncio.sleep(0.5)  # duplicates (a crash between DLQ publish and ack) would be here too
        out = {}
        for message in dlq.received:
            out[message.headers[ORIGINAL_ID_HEADER]] = orjson.loads(message.headers[ERROR_HEADER])
            await message.ack()
        return out
