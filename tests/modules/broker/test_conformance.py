"""The broker conformance suite: every broker module passes the same tests against its real local server.

Add a broker: write `brokers_<name>.py` with `harness()` and add one line to HARNESSES (see README.md here).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest

from tests.modules.broker import brokers_memory, brokers_mqtt, brokers_nats, brokers_rabbitmq, brokers_redis
from tests.modules.broker.conformance import BrokerHarness, Consumer, StateLog, open_broker, unique
from workflow_engine.errors import BrokerError
from workflow_engine.modules.base import ModuleState
from workflow_engine.modules.broker.message import ERROR_HEADER, ORIGINAL_ID_HEADER, ORIGINAL_TOPIC_HEADER
from workflow_engine.observability.metrics import Metrics

HARNESSES: dict[str, Callable[[], BrokerHarness]] = {
    "memory": brokers_memory.harness,
    "nats": brokers_nats.harness,
    "redis": brokers_redis.harness,
    "rabbitmq": brokers_rabbitmq.harness,
    "mqtt": brokers_mqtt.harness,
}
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(params=list(HARNESSES))
def harness(request: pytest.FixtureRequest) -> BrokerHarness:
    return HARNESSES[request.param]()


@pytest.fixture
async def ns(harness: BrokerHarness) -> AsyncIterator[str]:
    token = unique()
    yield token
    if harness.cleanup is not None:
        await harness.cleanup(token)


def _sample(metrics: Metrics, family: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(family, labels)
    return value or 0.0


async def test_open_and_close(harness: BrokerHarness, ns: str) -> None:
    async with open_broker(harness, ns) as broker:
        assert broker.available
        assert broker.describe()["available"] is True
        await broker.publish(f"{ns}.open", {"n": 1})
    assert not broker.available


async def test_round_trip(harness: BrokerHarness, ns: str) -> None:
    metrics = Metrics(process=False)
    topic = f"{ns}.orders"
    async with open_broker(harness, ns, metrics=metrics) as broker:
        ids = [await broker.publish(topic, {"n": i}, {"trace": f"t{i}"}, key=f"k{i}") for i in range(3)]
        async with Consumer(broker, topic, "g1") as consumer:
            got = await consumer.wait_count(3)
            for message in got:
                await message.ack()
        assert [m.id for m in got] == ids
        assert [m.body for m in got] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert [m.headers for m in got] == [{"trace": "t0"}, {"trace": "t1"}, {"trace": "t2"}]
        assert [m.key for m in got] == ["k0", "k1", "k2"]
        assert {m.topic for m in got} == {topic}
        assert {m.delivery_count for m in got} == {1}
        name = broker.name
    assert _sample(metrics, "broker_messages_total", broker=name, topic=topic, direction="out", status="success") == 3
    assert _sample(metrics, "broker_messages_total", broker=name, topic=topic, direction="in", status="acked") == 3
    assert _sample(metrics, "module_operations_total", module="broker", name=name, operation="publish",
                   status="success") == 3


async def test_settled_once(harness: BrokerHarness, ns: str) -> None:
    async with open_broker(harness, ns) as broker:
        await broker.publish(f"{ns}.once", "x")
        async with Consumer(broker, f"{ns}.once", "g") as consumer:
            (message,) = await consumer.wait_count(1)
            await message.ack()
            with pytest.raises(BrokerError, match="already acked"):
                await message.nack()


async def test_ack_is_final(harness: BrokerHarness, ns: str) -> None:
    """An acked message is not delivered to the group again, even to a new consumer; the backlog empties."""
    topic = f"{ns}.acked"
    async with open_broker(harness, ns) as broker:
        for i in range(4):
            await broker.publish(topic, i)
        async with Consumer(broker, topic, "g") as consumer:
            for message in await consumer.wait_count(4):
                await message.ack()
        async with Consumer(broker, topic, "g") as again:
            assert await again.quiet_for(harness.redelivery_wait + 0.5) == 0
        backlog = await broker.backlog(topic, "g")
        assert backlog in (0, None)


async def test_redelivery_after_failure(harness: BrokerHarness, ns: str) -> None:
    topic = f"{ns}.retry"
    async with open_broker(harness, ns) as broker:
        sent = await broker.publish(topic, {"fail": True})
        async with Consumer(broker, topic, "g") as consumer:
            (first,) = await consumer.wait_count(1)
            await first.nack()
            second = (await consumer.wait_count(2))[1]
            await second.nack(delay=0.2)
            third = (await consumer.wait_count(3))[2]
            await third.ack()
        assert [m.id for m in (first, second, third)] == [sent] * 3
        assert [m.delivery_count for m in (first, second, third)] == [1, 2, 3]
        assert third.body == {"fail": True}


async def test_redelivery_after_consumer_killed(harness: BrokerHarness, ns: str) -> None:
    """A consumer that dies before acking: its message goes to another consumer of the group."""
    topic = f"{ns}.killed"
    config = harness.config(ns)
    async with open_broker(harness, ns, config=config) as broker:
        sent = await broker.publish(topic, {"n": 1})
        if broker.shared_across_processes:
            await asyncio.to_thread(_kill_consumer, harness.type, config, topic, sent)
        else:  # in-process broker: the consumer's task dies instead of a process
            async with Consumer(broker, topic, "g") as doomed:
                assert (await doomed.wait_count(1))[0].id == sent
        async with Consumer(broker, topic, "g") as consumer:
            (message,) = await consumer.wait_count(1, limit=harness.redelivery_wait + 20)
            await message.ack()
        assert message.id == sent
        assert message.delivery_count >= 2


def _kill_consumer(kind: str, config: dict[str, object], topic: str, expected: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.modules.broker.consumer_proc", kind, json.dumps(config), topic, "g"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # the process received the message and did not ack it
        assert line == expected, f"consumer process printed {line!r}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


async def test_dead_letter_after_max_deliveries(harness: BrokerHarness, ns: str) -> None:
    """After the last allowed delivery the message goes to `<topic>.dlq` with its error, and is gone."""
    topic = f"{ns}.poison"
    metrics = Metrics(process=False)
    async with open_broker(harness, ns, metrics=metrics) as broker:
        sent = await broker.publish(topic, {"poison": True}, {"trace": "p"})
        async with Consumer(broker, topic, "g") as consumer:
            for attempt in range(1, 4):
                message = (await consumer.wait_count(attempt))[-1]
                assert message.delivery_count == attempt
                if attempt < 3:
                    await message.nack()
                else:
                    await message.dead_letter({"code": "failed", "message": "poison", "deliveries": attempt})
            async with Consumer(broker, f"{topic}.dlq", "dlq") as dlq:
                (dead,) = await dlq.wait_count(1)
                await dead.ack()
            assert await consumer.quiet_for(harness.redelivery_wait + 0.5) == 0
        assert dead.body == {"poison": True}
        assert dead.headers["trace"] == "p"
        assert orjson.loads(dead.headers[ERROR_HEADER]) == {"code": "failed", "message": "poison", "deliveries": 3}
        assert dead.headers[ORIGINAL_ID_HEADER] == sent
        assert dead.headers[ORIGINAL_TOPIC_HEADER] == topic
        assert _sample(metrics, "broker_messages_total", broker=broker.name, topic=topic, direction="in",
                       status="dead_lettered") == 1


async def test_ordering_per_key(harness: BrokerHarness, ns: str) -> None:
    topic = f"{ns}.ordered"
    async with open_broker(harness, ns) as broker:
        if not broker.ordered:
            pytest.fail(f"{harness.type} declares no ordering; the suite has no weaker check for it yet")
        sent = [(f"k{i % 3}", i) for i in range(30)]
        for key, n in sent:
            await broker.publish(topic, n, key=key)
        async with Consumer(broker, topic, "g", max_in_flight=1) as consumer:
            for i in range(30):
                message = (await consumer.wait_count(i + 1))[-1]
                await message.ack()
        got = [(m.key, m.body) for m in consumer.received]
    for key in ("k0", "k1", "k2"):
        assert [n for k, n in got if k == key] == [n for k, n in sent if k == key]


async def test_back_pressure(harness: BrokerHarness, ns: str) -> None:
    """No more than max_in_flight unsettled messages; settling one lets the next in."""
    topic = f"{ns}.pressure"
    async with open_broker(harness, ns) as broker:
        for i in range(10):
            await broker.publish(topic, i)
        async with Consumer(broker, topic, "g", max_in_flight=3) as consumer:
            held = await consumer.wait_count(3)
            assert await consumer.quiet_for(0.6) == 0
            assert len(consumer.received) == 3
            backlog = await broker.backlog(topic, "g")
            assert backlog is None or backlog == 10
            await held[0].ack()
            await consumer.wait_count(4)
            assert len(consumer.received) == 4
            for message in consumer.received[1:]:
                await message.ack()


async def test_ack_burst(harness: BrokerHarness, ns: str) -> None:
    """Hundreds of messages acked at the same moment (a consumer with many executions finishing together) are
    all acked: none fails for lack of connections, none comes back (Redis: they share XACKs)."""
    metrics = Metrics(process=False)
    topic, count = f"{ns}.burst", 300
    async with open_broker(harness, ns, metrics=metrics) as broker:
        await asyncio.gather(*(broker.publish(topic, i) for i in range(count)))
        async with Consumer(broker, topic, "g", max_in_flight=count) as consumer:
            got = await consumer.wait_count(count, limit=60)
            await asyncio.gather(*(message.ack() for message in got))
            assert await consumer.quiet_for(harness.redelivery_wait + 0.5) == 0
        assert sorted(m.body for m in got) == list(range(count))
        name = broker.name
        assert await broker.backlog(topic, "g") in (0, None)
    assert _sample(metrics, "broker_messages_total", broker=name, topic=topic, direction="in",
                   status="acked") == count
    assert _sample(metrics, "broker_messages_total", broker=name, topic=topic, direction="in", status="error") == 0


async def test_graceful_stop(harness: BrokerHarness, ns: str) -> None:
    """With `stop` set the consumer takes nothing more, stays open until the messages it gave out are settled
    (they can still be acked), then ends; what it never took stays for the group, what was acked is gone."""
    topic = f"{ns}.graceful"
    async with open_broker(harness, ns) as broker:
        for i in range(6):
            await broker.publish(topic, i, key="k")
        stop, three, got = asyncio.Event(), asyncio.Event(), []

        async def consume() -> None:
            async for message in broker.consume(topic, "g", 3, stop=stop):
                got.append(message)
                if len(got) == 3:
                    three.set()

        task = asyncio.create_task(consume())
        async with asyncio.timeout(20):
            await three.wait()
        stop.set()
        await asyncio.sleep(0.3)
        assert not task.done(), "the consumer ended with messages it gave out still unsettled"
        for message in got:
            await message.ack()
        async with asyncio.timeout(10):
            await task  # ends by itself once they are settled
        assert len(got) == 3
        async with Consumer(broker, topic, "g") as again:
            rest = await again.wait_count(3)
            for message in rest:
                await message.ack()
            assert await again.quiet_for(harness.redelivery_wait + 0.5) == 0
        assert sorted(m.body for m in got + rest) == list(range(6))


def _restartable() -> list[str]:
    return [name for name, make in HARNESSES.items() if make().private_server is not None]


@pytest.mark.parametrize("name", _restartable())
async def test_reconnect_after_server_restart(name: str, tmp_path: Path) -> None:
    """The server goes away: `retrying` with a reason; it comes back: `ready`, publishing and consuming work."""
    harness = HARNESSES[name]()
    assert harness.private_server is not None
    ns = unique()
    async with harness.private_server(tmp_path, ns) as server:
        states = StateLog()
        async with open_broker(harness, ns, config=server.config) as broker:
            broker.state_listener = states
            before = await broker.publish(f"{ns}.restart", "before")
            await server.stop()
            await states.wait_for(ModuleState.RETRYING)
            assert states.states[-1][1]  # the reason shown in /readyz
            await server.start()
            await states.wait_for(ModuleState.READY)
            after = await broker.publish(f"{ns}.restart", "after")
            async with Consumer(broker, f"{ns}.restart", "g") as consumer:
                got = await consumer.wait_count(2)
                for message in got:
                    await message.ack()
        assert [m.id for m in got] == [before, after]
