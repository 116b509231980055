"""broker.rabbitmq beyond the conformance suite: routing-key wildcards, unroutable publishes, topic checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiormq.channel
import pytest
from pydantic import ValidationError

from tests.modules.broker import brokers_rabbitmq
from tests.modules.broker.conformance import Consumer, open_broker, unique
from workflow_engine.errors import BrokerError, BrokerUnavailableError
from workflow_engine.modules.broker.rabbitmq import RabbitMqBroker
from workflow_engine.observability.metrics import Metrics
from workflow_engine.registry.builtins import default_registry


@pytest.fixture
async def ns() -> AsyncIterator[str]:
    token = unique("r")
    yield token
    await brokers_rabbitmq.cleanup(token)


async def test_wildcards_follow_routing_key_syntax(ns: str) -> None:
    """`*` is one word and `#` any number of words; the message keeps its concrete topic."""
    harness = brokers_rabbitmq.harness()
    config = {**harness.config(ns), "groups": [{"topic": f"{ns}.orders.#", "group": "all"},
                                               {"topic": f"{ns}.orders.*", "group": "one"}]}
    async with open_broker(harness, ns, config=config) as broker:
        for topic in (f"{ns}.orders.created", f"{ns}.orders.eu.created", f"{ns}.orders"):
            await broker.publish(topic, topic)
        async with Consumer(broker, f"{ns}.orders.#", "all") as every, \
                Consumer(broker, f"{ns}.orders.*", "one") as single:
            got_all = await every.wait_count(3)
            got_one = await single.wait_count(1)
            assert await single.quiet_for(0.5) == 0
            for message in [*got_all, *got_one]:
                await message.ack()
    assert sorted(m.topic for m in got_all) == sorted([f"{ns}.orders", f"{ns}.orders.created",
                                                       f"{ns}.orders.eu.created"])
    assert [m.topic for m in got_one] == [f"{ns}.orders.created"]
    assert all(m.body == m.topic for m in got_all)
    await brokers_rabbitmq.cleanup(ns, [("orders.#", "all"), ("orders.+", "one")])


async def test_a_publish_no_queue_takes_fails_unless_dropping_is_allowed(ns: str) -> None:
    harness = brokers_rabbitmq.harness()
    metrics = Metrics(process=False)
    config = {**harness.config(ns), "groups": []}
    async with open_broker(harness, ns, config=config, metrics=metrics) as broker:
        with pytest.raises(BrokerError, match="no queue is bound") as caught:
            await broker.publish(f"{ns}.nobody", {"n": 1})
        assert caught.value.code == "unroutable"
    assert metrics.registry.get_sample_value("broker_messages_total", {
        "broker": "bus", "topic": f"{ns}.nobody", "direction": "out", "status": "error"}) == 1
    async with open_broker(harness, ns, config={**config, "unroutable": "drop"}) as broker:
        assert await broker.publish(f"{ns}.nobody", {"n": 2})


async def test_group_topics_are_checked_with_the_config() -> None:
    spec = default_registry().modules["broker.rabbitmq"]
    with pytest.raises(ValidationError, match=r"groups\.0\.topic"):
        spec.config_model.model_validate({"groups": [{"topic": "orders.>", "group": "g"}]})
    with pytest.raises(ValidationError, match=r"groups\.0\.group"):
        spec.config_model.model_validate({"groups": [{"topic": "orders.*", "group": "a/b"}]})


async def test_topic_syntax_is_checked(ns: str) -> None:
    async with open_broker(brokers_rabbitmq.harness(), ns) as broker:
        assert broker.check_topic("a.*.#", pattern=True) is None
        assert "wildcard" in (broker.check_topic("a.*", pattern=False) or "")
        assert "invalid topic" in (broker.check_topic("a.>", pattern=True) or "")
        assert "invalid topic" in (broker.check_topic("a/b", pattern=False) or "")
        with pytest.raises(BrokerError) as caught:
            await broker.publish(f"{ns}.#", 1)
        assert caught.value.code == "invalid_topic"


async def test_a_queue_declared_differently_is_a_config_problem_not_an_outage(ns: str) -> None:
    """A group queue that exists with other arguments is refused by the server: BrokerError (logged, retried),
    not BrokerUnavailableError (which would report the broker as down in /readyz)."""
    harness = brokers_rabbitmq.harness()
    async with open_broker(harness, ns) as broker:
        assert isinstance(broker, RabbitMqBroker)
        connection = await aio_pika.connect(brokers_rabbitmq.RABBITMQ_URL)
        try:
            channel = await connection.channel()
            await channel.declare_queue(broker.queue_name(f"{ns}.other", "g"), durable=True,
                                        arguments={"x-max-length": 5})
        finally:
            await connection.close()
        with pytest.raises(BrokerError, match="refused") as caught:
            await broker._subscribe(f"{ns}.other", "g", 4)
        assert not isinstance(caught.value, BrokerUnavailableError)
        assert broker.available
    await brokers_rabbitmq.cleanup(ns, [("other", "g")])


async def test_keep_on_a_connected_broker_declares_the_group_at_once(ns: str) -> None:
    """A config apply adding an event-triggered workflow: its group keeps what is published before it consumes."""
    harness = brokers_rabbitmq.harness()
    config = {**harness.config(ns), "groups": []}
    async with open_broker(harness, ns, config=config) as broker:
        with pytest.raises(BrokerError, match="no queue is bound"):
            await broker.publish(f"{ns}.events", {"n": 0})
        await broker.keep(f"{ns}.events", "late")
        await broker.publish(f"{ns}.events", {"n": 1})  # routed: the group's queue exists before its consumer
        async with Consumer(broker, f"{ns}.events", "late") as late:
            got = await late.wait_count(1)
            await got[0].ack()
    assert got[0].body == {"n": 1}
    await brokers_rabbitmq.cleanup(ns, [("events", "late")])


class _NoMessageId:
    """aiormq gives every message it publishes a random id; pika, Java or shell tools send none."""

    hex = None

    def __init__(self, *_: Any, **__: Any) -> None:
        pass


async def test_messages_without_an_id_from_other_publishers_each_get_their_own(
    ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in id built from delivery tags repeated on every new channel: the idempotency key then took a
    later message for an earlier one, acked it and ran nothing."""
    monkeypatch.setattr(aiormq.channel, "UUID", _NoMessageId)
    harness = brokers_rabbitmq.harness()
    topic = f"{ns}.orders"

    async def publish_without_ids(*bodies: bytes) -> None:
        connection = await aio_pika.connect(brokers_rabbitmq.RABBITMQ_URL)
        try:
            channel = await connection.channel()
            exchange = await channel.get_exchange(ns)
            for body in bodies:
                await exchange.publish(aio_pika.Message(body), routing_key=topic)
        finally:
            await connection.close()

    async with open_broker(harness, ns):
        pass  # declares the exchange and the group's queue
    ids = []
    for batch in ((b'{"n": 1}', b'{"n": 2}'), (b'{"n": 3}', b'{"n": 4}')):
        await publish_without_ids(*batch)
        async with open_broker(harness, ns) as broker, Consumer(broker, topic, "g1") as consumer:  # a restart
            for message in await consumer.wait_count(2):
                ids.append(message.id)
                await message.ack()
    assert len(set(ids)) == 4
