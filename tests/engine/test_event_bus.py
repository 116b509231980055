"""The event bus backed by a broker module (`engine.event_bus`): two replicas (two engines, distinct replica
ids) share one SQLite store and one real broker (NATS, Redis, RabbitMQ); events, lifecycle events and `wait_for`
wake-ups cross between them, and each event starts one execution cluster-wide."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from tests.factories import EVENT_WORKFLOWS, WAIT_LIMIT, bus_app_yaml, running_engine, sample
from tests.modules.broker import brokers_mqtt, brokers_nats, brokers_rabbitmq, brokers_redis
from tests.modules.broker.conformance import FAST, BrokerHarness, unique
from workflow_engine.engine.engine import Engine
from workflow_engine.modules.broker.base import Broker
from workflow_engine.modules.eventbus.broker import ID_HEADER, TOPIC_HEADER
from workflow_engine.store.records import ExecutionRecord, Status

HARNESSES: dict[str, Callable[[], BrokerHarness]] = {
    "nats": brokers_nats.harness, "redis": brokers_redis.harness, "rabbitmq": brokers_rabbitmq.harness,
    "mqtt": brokers_mqtt.harness,
}
# The consumer groups of the bus (topic after `<ns>.`, group). RabbitMQ and MQTT keep events only for declared
# groups: the engine declares them itself (Broker.keep_for); the fixture lists them only to clean up.
BUS_GROUPS = [("events", "on-order"), ("events", "on-job-done"), ("events", "_wait_for")]

WORKFLOWS = EVENT_WORKFLOWS + """\
waiter:
  steps:
    - id: paid
      wait_for: {topic: "payments.settled", match: "{{ event.data.order == input.order }}", timeout: 30s}
    - set: {amount: "{{ steps.paid.output.data.amount }}"}
pay:
  steps:
    - publish: {topic: "payments.settled", message: {order: "{{ input.order }}", amount: "{{ input.amount }}"}}
"""

# A replica that runs none of the event-triggered workflows, but whose `wait_for` wants `orders.created`:
# it publishes that event to the broker, so whoever runs `on-order` can only have got it from there.
PUBLISHER_ONLY = EVENT_WORKFLOWS.split("on-order:")[0] + """\
unused:
  steps:
    - wait_for: {topic: "orders.created", timeout: 1s}
"""


@pytest.fixture(params=list(HARNESSES))
async def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with cluster_on(request.param, tmp_path) as made:
        yield made


@pytest.fixture(params=["rabbitmq", "mqtt"])
async def keeping_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cluster]:
    """A cluster on a broker that keeps messages only for declared groups."""
    async with cluster_on(request.param, tmp_path) as made:
        yield made


@asynccontextmanager
async def cluster_on(kind: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    harness = HARNESSES[kind]()
    ns = unique("eb")
    module = {**FAST, **harness.config(ns)}
    if kind in ("rabbitmq", "mqtt"):
        module["groups"] = []  # nothing declared by hand: the engine declares the bus's groups
    cluster = Cluster(ns, harness.type, module, f"sqlite:///{tmp_path}/store.db")
    try:
        yield cluster
    finally:
        if kind == "rabbitmq":
            await brokers_rabbitmq.cleanup(ns, BUS_GROUPS)
        elif kind == "mqtt":
            for client_id in cluster.client_ids:
                for topic, group in BUS_GROUPS:
                    await brokers_mqtt.end_session(client_id, f"{ns}.{topic}", group)
        elif harness.cleanup is not None:
            await harness.cleanup(ns)


class Cluster:
    """Replicas of one app on one store and one broker namespace."""

    def __init__(self, ns: str, module_type: str, module: dict[str, object], store_url: str) -> None:
        self.ns = ns
        self.module_type = module_type
        self.topic = f"{ns}.events"
        self.module = module
        self.store_url = store_url
        self.stack = AsyncExitStack()
        self.client_ids: list[str] = []  # MQTT: one per replica (its sessions are named after it)

    def yaml(self, replica: str, workflows: str = WORKFLOWS) -> str:
        module = self.module
        if self.module_type == "broker.mqtt":
            module = {**module, "client_id": f"{self.ns}-{replica}"}
            self.client_ids.append(module["client_id"])
        return bus_app_yaml(self.module_type, module, workflows, topic=self.topic, shutdown_grace="2s",
                            lease="2s", poll_interval="100ms", replica_id=replica)

    async def replica(self, name: str, workflows: str = WORKFLOWS) -> Engine:
        engine = await self.stack.enter_async_context(
            running_engine(self.yaml(name, workflows), store_url=self.store_url))
        await wait_for(lambda: _ready(engine), f"replica {name}'s broker is ready")
        return engine

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.aclose()


async def _ready(engine: Engine) -> bool:
    return engine.supervisors["bus"].ready.is_set()


async def wait_for(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll an async condition (store reads) until it holds; fails after WAIT_LIMIT seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    while True:
        if await condition():
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.02)


async def records(engine: Engine, workflow: str) -> list[ExecutionRecord]:
    return list((await engine.store.list_executions(workflow=workflow, limit=500)).items)


async def finished(engine: Engine, workflow: str, count: int) -> bool:
    return sum(r.status is Status.SUCCESS for r in await records(engine, workflow)) >= count


async def settle_down() -> None:
    """Time for a wrongly duplicated delivery to show up as a second execution before counting."""
    await asyncio.sleep(1.0)


async def test_an_event_published_on_one_replica_runs_its_workflow_on_another(cluster: Cluster) -> None:
    async with cluster:
        publisher = await cluster.replica("a", PUBLISHER_ONLY)
        consumer = await cluster.replica("b")
        emitted = await publisher.start_execution("emit", {"order": 7}, wait=True)
        assert emitted.status == "success", emitted.error
        assert emitted.output == {"topic": "orders.created", "delivered": 1}
        await wait_for(lambda: finished(publisher, "on-order", 1), "on-order ran")
        await settle_down()
        (run,) = await records(publisher, "on-order")
        assert [e.id for e in consumer.runtime.recent.values() if e.workflow == "on-order"] == [run.id]
        assert run.output is not None
        assert run.idempotency_key == f"event:{run.output['id']}"
        assert run.output == {"order": 7, "source": "shop", "id": run.output["id"]}
        assert sample(publisher.metrics, "broker_messages_total", broker="bus", topic=cluster.topic,
                      direction="out", status="success") == 1


async def test_each_event_starts_one_execution_across_replicas(cluster: Cluster) -> None:
    async with cluster:
        a = await cluster.replica("a")
        b = await cluster.replica("b")
        for order in range(10):
            await (a if order % 2 else b).start_execution("emit", {"order": order}, wait=True)
        await wait_for(lambda: finished(a, "on-order", 10), "every order was handled")
        await settle_down()
        runs = await records(a, "on-order")
    assert sorted(r.output["order"] for r in runs) == list(range(10))
    assert len({r.idempotency_key for r in runs}) == 10


async def test_a_lifecycle_event_triggers_its_subscriber_once(cluster: Cluster) -> None:
    async with cluster:
        a = await cluster.replica("a")
        await cluster.replica("b")
        job = await a.start_execution("job", wait=True)
        assert job.status == "success", job.error

        async def seen() -> list[ExecutionRecord]:
            return [r for r in await records(a, "on-job-done")
                    if r.status is Status.SUCCESS and r.output == {"workflow": "job", "execution": job.id}]

        await wait_for(lambda: _nonempty(seen()), "on-job-done ran for the job")
        await settle_down()
        assert len(await seen()) == 1


async def _nonempty(found: Awaitable[list[ExecutionRecord]]) -> bool:
    return bool(await found)


async def test_an_execution_parked_on_one_replica_is_woken_by_an_event_from_another(cluster: Cluster) -> None:
    async with cluster:
        a = await cluster.replica("a")
        b = await cluster.replica("b")
        waiting = await a.start_execution("waiter", {"order": 42})
        other = await a.start_execution("waiter", {"order": 43})

        async def parked() -> bool:
            states = [await a.store.get_execution(e.id) for e in (waiting, other)]
            return all(s is not None and s.status is Status.PARKED for s in states)

        await wait_for(parked, "both waiters parked")
        paid = await b.start_execution("pay", {"order": 42, "amount": 9.5}, wait=True)
        assert paid.status == "success", paid.error

        async def woken() -> bool:
            record = await a.store.get_execution(waiting.id)
            return record is not None and record.status is Status.SUCCESS

        await wait_for(woken, "the matching waiter finished")
        record = await a.store.get_execution(waiting.id)
        still = await a.store.get_execution(other.id)
        assert b.waiters.subscriptions == [], "waiters consume the broker, not the local bus"
    assert record is not None
    assert record.output == {"amount": 9.5}
    assert still is not None
    assert still.status is Status.PARKED


async def test_a_redelivered_event_starts_one_execution(cluster: Cluster) -> None:
    async with cluster:
        a = await cluster.replica("a")
        broker = a.modules["bus"]
        assert isinstance(broker, Broker)
        headers = {TOPIC_HEADER: "orders.created", ID_HEADER: "ev-1", "source": "test"}
        for copy in range(2):  # the same event twice (a publisher's retry, a broker's redelivery)
            await broker.publish(cluster.topic, {"order": 1}, headers, message_id=f"m-{copy}")
        await wait_for(lambda: finished(a, "on-order", 1), "the event was handled")
        await wait_for(lambda: _settled(broker, cluster.topic, "on-order"), "both copies were acked")
        runs = await records(a, "on-order")
    assert len(runs) == 1
    assert runs[0].idempotency_key == "event:ev-1"


async def _settled(broker: Broker, topic: str, group: str) -> bool:
    backlog = await broker.backlog(topic, group)
    if backlog is None:  # MQTT cannot tell: count the acks of the bus topic's consumers instead
        acked = broker.metrics.registry.get_sample_value(
            "broker_messages_total", {"broker": broker.name, "topic": topic, "direction": "in", "status": "acked"})
        return (acked or 0) >= 2
    return backlog == 0


async def test_a_config_apply_declares_the_groups_it_adds_before_their_consumers_start(
        keeping_cluster: Cluster) -> None:
    cluster = keeping_cluster
    async with cluster:
        engine = await cluster.replica("a", "emit:\n  steps: [{log: none}]\n")
        await engine.apply_config(cluster.yaml("a", EVENT_WORKFLOWS))
        # At once, before the new consumers had time to subscribe: with no group declared RabbitMQ and MQTT
        # refuse the publish (`unroutable: error`); declared by the apply, they keep it for `on-order`.
        broker = engine.modules["bus"]
        assert isinstance(broker, Broker)
        await broker.publish(cluster.topic, {"order": 5}, {TOPIC_HEADER: "orders.created", ID_HEADER: "late-1",
                                                           "source": "shop"})
        await wait_for(lambda: finished(engine, "on-order", 1), "on-order ran")
        (run,) = await records(engine, "on-order")
        assert run.output == {"order": 5, "source": "shop", "id": "late-1"}
