"""broker.mqtt beyond the conformance suite: MQTT wildcards, unroutable publishes, topic checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import paho.mqtt.client as paho
import pytest
from pydantic import ValidationError

from tests.factories import wait_until
from tests.modules.broker import brokers_mqtt
from tests.modules.broker.conformance import Consumer, open_broker, unique
from workflow_engine.errors import BrokerError
from workflow_engine.registry.builtins import default_registry


@pytest.fixture
async def ns() -> AsyncIterator[str]:
    token = unique("m")
    yield token
    await brokers_mqtt.cleanup(token)


async def test_wildcards_follow_mqtt_syntax(ns: str) -> None:
    """`+` is one level and `#` the rest; the message keeps its concrete topic."""
    harness = brokers_mqtt.harness()
    config = {**harness.config(ns), "groups": [{"topic": f"{ns}/orders/#", "group": "all"},
                                               {"topic": f"{ns}/orders/+", "group": "one"}]}
    async with open_broker(harness, ns, config=config) as broker:
        for topic in (f"{ns}/orders/created", f"{ns}/orders/eu/created"):
            await broker.publish(topic, topic)
        async with Consumer(broker, f"{ns}/orders/#", "all") as every, \
                Consumer(broker, f"{ns}/orders/+", "one") as single:
            got_all = await every.wait_count(2)
            got_one = await single.wait_count(1)
            assert await single.quiet_for(0.5) == 0
            for message in [*got_all, *got_one]:
                await message.ack()
    assert sorted(m.topic for m in got_all) == [f"{ns}/orders/created", f"{ns}/orders/eu/created"]
    assert [m.topic for m in got_one] == [f"{ns}/orders/created"]
    assert all(m.body == m.topic for m in got_all)
    for topic, group in ((f"{ns}/orders/#", "all"), (f"{ns}/orders/+", "one")):
        await brokers_mqtt.end_session(ns, topic, group)


async def test_a_publish_no_subscription_matches_fails_unless_dropping_is_allowed(ns: str) -> None:
    harness = brokers_mqtt.harness()
    config = {**harness.config(ns), "groups": []}
    async with open_broker(harness, ns, config=config) as broker:
        with pytest.raises(BrokerError, match="no subscription matches") as caught:
            await broker.publish(f"{ns}/nobody", {"n": 1})
        assert caught.value.code == "unroutable"
    async with open_broker(harness, ns, config={**config, "unroutable": "drop"}) as broker:
        assert await broker.publish(f"{ns}/nobody", {"n": 2})


async def test_group_topics_are_checked_with_the_config() -> None:
    spec = default_registry().modules["broker.mqtt"]
    with pytest.raises(ValidationError, match=r"groups\.0\.topic"):
        spec.config_model.model_validate({"groups": [{"topic": "orders/#/x", "group": "g"}]})
    with pytest.raises(ValidationError, match=r"groups\.0\.group"):
        spec.config_model.model_validate({"groups": [{"topic": "orders/+", "group": "a/b"}]})


async def test_topic_syntax_is_checked(ns: str) -> None:
    async with open_broker(brokers_mqtt.harness(), ns, config={**brokers_mqtt.harness().config(ns),
                                                               "groups": []}) as broker:
        assert broker.check_topic("a/+/b.c/#", pattern=True) is None
        assert "wildcard" in (broker.check_topic("a/+", pattern=False) or "")
        assert "invalid topic" in (broker.check_topic("a/#/b", pattern=True) or "")
        assert "invalid topic" in (broker.check_topic("$SYS/x", pattern=False) or "")
        with pytest.raises(BrokerError) as caught:
            await broker.publish(f"{ns}/#", 1)
        assert caught.value.code == "invalid_topic"


async def test_messages_the_server_drops_are_reported(tmp_path: Path) -> None:
    """Mosquitto drops what a session cannot queue (max_queued_messages) yet answers PUBACK success: the module
    reads the server's dropped counter and reports it."""
    ns = unique("m")
    extra = "max_queued_messages 2\nsys_interval 1\n"
    async with brokers_mqtt.private_server(tmp_path, ns, extra) as server:
        config = {**server.config, "groups": [{"topic": f"{ns}.queued", "group": "g"}]}
        async with open_broker(brokers_mqtt.harness(), ns, config=config) as broker:
            for i in range(5):  # the group's session is offline: it holds 2, the server drops 3
                await broker.publish(f"{ns}.queued", i)
            await wait_until(lambda: broker.describe()["server_dropped"] >= 3, "the server's drops are counted")
            async with Consumer(broker, f"{ns}.queued", "g") as consumer:
                kept = await consumer.wait_count(2)
                assert await consumer.quiet_for(0.5) == 0
                for message in kept:
                    await message.ack()
        assert broker.describe()["server_dropped"] == 3
        assert [m.body for m in kept] == [0, 1]


async def test_a_failed_settlement_resumes_the_session_to_get_the_message_back(tmp_path: Path) -> None:
    """MQTT sends an unacknowledged message again only when its session resumes: when a dead letter cannot be
    published (here the server's ACL refuses its topic), the consumer reconnects and gets the message back."""
    ns = unique("m")
    (tmp_path / "acl").write_text(f"topic deny {ns}.poison.dlq\ntopic readwrite #\n")
    async with brokers_mqtt.private_server(tmp_path, ns, f"acl_file {tmp_path / 'acl'}\n") as server, \
            open_broker(brokers_mqtt.harness(), ns, config=server.config) as broker:
        sent = await broker.publish(f"{ns}.poison", {"n": 1})
        async with Consumer(broker, f"{ns}.poison", "g") as consumer:
            (first,) = await consumer.wait_count(1)
            with pytest.raises(BrokerError, match="dead_letter of message"):
                await first.dead_letter({"code": "failed", "message": "x"})
            again = (await consumer.wait_count(2))[1]
            await again.ack()
            assert await consumer.quiet_for(0.5) == 0
    assert again.id == first.id == sent
    assert again.delivery_count == 2


async def test_keep_on_a_connected_broker_declares_the_group_at_once(ns: str) -> None:
    """A config apply adding an event-triggered workflow: its session keeps what is published before it consumes."""
    harness = brokers_mqtt.harness()
    config = {**harness.config(ns), "groups": []}
    async with open_broker(harness, ns, config=config) as broker:
        with pytest.raises(BrokerError, match="no subscription"):
            await broker.publish(f"{ns}/events", {"n": 0})
        await broker.keep(f"{ns}/events", "late")
        await broker.publish(f"{ns}/events", {"n": 1})  # matched: the group's session subscribed before its consumer
        async with Consumer(broker, f"{ns}/events", "late") as late:
            got = await late.wait_count(1)
            await got[0].ack()
    assert got[0].body == {"n": 1}
    await brokers_mqtt.end_session(ns, f"{ns}/events", "late")


async def test_messages_without_an_id_get_one_of_their_own_when_packet_ids_repeat(ns: str) -> None:
    """Packet ids are 16 bits and start again with a new session: a stand-in id built from them named later
    messages like earlier ones, and the idempotency key acked those without running them."""
    async with open_broker(brokers_mqtt.harness(), ns) as broker:
        session = SimpleNamespace(session=f"{ns}-session")
        deliveries = []
        for body in (b"first", b"second"):
            msg = paho.MQTTMessage(mid=1, topic=f"{ns}/orders".encode())  # the same packet id, no x-message-id
            msg.payload = body
            deliveries.append(broker._message(msg, session))  # type: ignore[attr-defined]
    assert deliveries[0].id != deliveries[1].id
    assert [d.body for d in deliveries] == ["first", "second"]
