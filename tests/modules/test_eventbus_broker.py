"""The broker-backed event bus inside one engine: what goes to the broker, what stays local, what a refused
publish does (the replica tests are in tests/engine/test_event_bus.py)."""

from __future__ import annotations

import textwrap

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from tests.factories import (
    EVENT_WORKFLOWS,
    bus_app_yaml,
    executions,
    finished_runs,
    load_app,
    running_engine,
    sample,
    wait_until,
)
from tests.modules.broker import brokers_nats
from tests.modules.broker.conformance import FAST, free_port, unique
from workflow_engine.engine.engine import Engine
from workflow_engine.errors import ConfigError
from workflow_engine.modules.broker.rabbitmq import RabbitMqBroker
from workflow_engine.modules.eventbus.broker import BrokerEventBus, retry_delay
from workflow_engine.modules.eventbus.memory import Event
from workflow_engine.observability.metrics import Metrics
from workflow_engine.registry.builtins import default_registry

WORKFLOWS = EVENT_WORKFLOWS + """\
audit:
  steps:
    - publish: {topic: "audit.nobody-wants-this", message: 1}
"""


def app(module_type: str, module: dict[str, object], topic: str = "workflow-events", workflows: str = WORKFLOWS,
        ) -> str:
    return bus_app_yaml(module_type, module, workflows, topic=topic)


MEMORY = app("broker.memory", {"fetch_wait": "50ms"})


async def test_wanted_events_go_through_the_broker_and_local_subscribers_still_see_every_event() -> None:
    async with running_engine(MEMORY) as engine:
        bus = engine.bus
        assert isinstance(bus, BrokerEventBus)
        seen: list[Event] = []

        async def feed(event: Event) -> None:  # like the API's SSE feed: a local, non-trigger subscriber
            seen.append(event)

        bus.subscribe(">", feed, name="feed")
        emitted = await engine.start_execution("emit", {"order": 3}, wait=True)
        await engine.start_execution("audit", wait=True)
        await wait_until(lambda: executions(engine.metrics, "on-order", "success") == 1, "on-order ran")
        (run,) = finished_runs(engine, "on-order")
        await wait_until(lambda: any(e.topic == "audit.nobody-wants-this" for e in seen), "the feed got it")
        out = sample(engine.metrics, "broker_messages_total", broker="bus", topic="workflow-events",
                     direction="out", status="success")
    assert emitted.status == "success", emitted.error
    assert run.output["order"] == 3
    assert run.idempotency_key == f"event:{run.output['id']}"
    by_topic = {e.topic: e for e in seen}
    assert by_topic["orders.created"].id == run.output["id"], "one event id, locally and through the broker"
    assert {"workflow.started", "step.started", "audit.nobody-wants-this"} <= set(by_topic)
    assert [s.name for s in bus.subscriptions] == ["feed"], "triggers do not subscribe locally"
    # orders.created and the workflow.completed of emit, on-order and job-less runs: never the unwanted topics
    assert out >= 2
    assert not bus.crosses("audit.nobody-wants-this")
    assert not bus.crosses("workflow.started")
    assert bus.crosses("workflow.completed")


async def test_a_config_apply_routes_and_consumes_for_new_event_triggers() -> None:
    async with running_engine(MEMORY) as engine:
        added = WORKFLOWS + textwrap.dedent("""\
            on-audit:
              trigger: {event: {topic: "audit.>"}}
              steps:
                - set: {n: "{{ input.data }}"}
            """)
        await engine.apply_config(app("broker.memory", {"fetch_wait": "50ms"}, workflows=added))
        assert isinstance(engine.bus, BrokerEventBus)
        assert engine.bus.crosses("audit.nobody-wants-this")
        await engine.start_execution("audit", wait=True)
        await wait_until(lambda: executions(engine.metrics, "on-audit", "success") == 1, "on-audit ran")


async def test_an_event_the_broker_refuses_fails_the_publish_step_and_is_counted() -> None:
    harness = brokers_nats.harness()
    ns = unique("ebf")
    module = {**FAST, **harness.config(ns), "publish_timeout": "300ms"}
    # The stream holds `<ns>.>` only: the bus topic is outside it. Validation sees that in the module's config.
    with pytest.raises(ConfigError, match=f"topic 'other{ns}.events' is not among the subjects of stream"):
        load_app(app("broker.nats", module, topic=f"other{ns}.events"), default_registry())
    # A stream made elsewhere (`create: false`): only JetStream can tell, and it refuses every event.
    nc = await nats.connect(brokers_nats.NATS_URL)
    try:
        await nc.jetstream().add_stream(StreamConfig(name=ns.upper(), subjects=[f"{ns}.>"],
                                                     storage=StorageType.MEMORY))
    finally:
        await nc.close()
    module["stream"] = {**module["stream"], "create": False}  # type: ignore[dict-item]
    text = app("broker.nats", module, topic=f"other{ns}.events")
    try:
        async with running_engine(text) as engine:
            await wait_until(engine.supervisors["bus"].ready.is_set, "the broker started")
            emitted = await engine.start_execution("emit", {"order": 1}, wait=True)
            job = await engine.start_execution("job", wait=True)
            # the publish step's event, then the job's workflow.completed (published as the job ends; logged)
            await wait_until(lambda: sample(engine.metrics, "broker_messages_total", broker="bus",
                                            topic=f"other{ns}.events", direction="out", status="error") == 2,
                             "both refused events were counted")
    finally:
        assert harness.cleanup is not None
        await harness.cleanup(ns)
    assert emitted.status == "error"
    assert emitted.error is not None
    assert emitted.error["code"] == "invalid_topic"
    assert emitted.error["message"].startswith("event bus: module 'bus' (broker.nats): no stream took")
    assert job.status == "success", "a lifecycle event the broker refuses does not fail the execution"


async def test_while_the_broker_is_down_a_publish_step_fails_after_the_publish_timeout() -> None:
    module = {**FAST, "url": f"redis://127.0.0.1:{free_port()}/0", "publish_timeout": "300ms"}
    async with running_engine(app("broker.redis", module)) as engine:
        emitted = await engine.start_execution("emit", {"order": 1}, wait=True)
        job = await engine.start_execution("job", wait=True)
        ready = engine.health.readiness()[0]
    assert emitted.status == "error"
    assert emitted.error is not None
    assert emitted.error["code"] == "broker_unavailable"
    assert "not started within 0.3s" in emitted.error["message"]
    assert job.status == "success", "a lifecycle event that cannot be published is logged, not a failure"
    assert not ready


def test_the_engine_declares_the_bus_groups_on_brokers_that_keep_nothing_by_themselves() -> None:
    """RabbitMQ and MQTT keep a topic's messages only for groups that exist: the engine asks the broker to keep
    the bus topic for every event-triggered workflow and for the `wait_for` waiters from the start."""
    workflows = WORKFLOWS + """\
waiter:
  steps:
    - wait_for: {topic: "payments.settled", timeout: 1s}
"""
    for module_type, module in (("broker.rabbitmq", {"exchange": "x"}), ("broker.mqtt", {"client_id": "c"})):
        engine = Engine(load_app(app(module_type, module, topic="bus-events", workflows=workflows)),
                        default_registry(), metrics=Metrics(process=False), store_url="sqlite:///:memory:")
        broker = engine.modules["bus"]
        kept = broker._kept if isinstance(broker, RabbitMqBroker) else list(broker._groups.values())  # type: ignore[attr-defined]
        assert sorted(kept) == [("bus-events", "_wait_for"), ("bus-events", "on-job-done"),
                                ("bus-events", "on-order")], module_type


def test_a_failing_event_is_retried_with_growing_delays_never_dropped() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 4, 7, 100)] == [1.0, 2.0, 4.0, 8.0, 60.0, 60.0]
