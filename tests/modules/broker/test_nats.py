"""`broker.nats` specifics beyond the conformance suite: how its pull requests hand messages out."""

from __future__ import annotations

import asyncio

import nats

from tests.modules.broker import brokers_nats
from tests.modules.broker.conformance import Consumer, open_broker, unique
from workflow_engine.modules.broker.nats import NatsBroker


async def test_a_message_reaches_an_idle_consumer_without_waiting_for_the_pull_request_to_expire() -> None:
    """A long poll (`fetch_wait` 30 s) answered by one message hands it out at once, not when the request
    expires or its batch is full."""
    harness = brokers_nats.harness()
    ns = unique("nt")
    try:
        async with (open_broker(harness, ns, config={**harness.config(ns), "fetch_wait": "30s"}) as bus,
                    Consumer(bus, f"{ns}.jobs", "g") as consumer):
            await asyncio.sleep(0.5)  # the consumer is waiting on its long poll
            await bus.publish(f"{ns}.jobs", {"n": 1})
            (message,) = await consumer.wait_count(1, limit=10)
            assert message.body == {"n": 1}
            await message.ack()
    finally:
        await brokers_nats.cleanup(ns)


async def test_no_more_messages_are_delivered_than_the_consumer_has_room_for() -> None:
    """max_in_flight 4 and nothing settled: the server has delivered 4 (its ack-pending count), the rest wait
    in the stream (nothing sits delivered in the client, its ack_wait running)."""
    harness = brokers_nats.harness()
    ns = unique("nt")
    try:
        async with open_broker(harness, ns) as bus:
            assert isinstance(bus, NatsBroker)
            for i in range(20):
                await bus.publish(f"{ns}.jobs", {"n": i})
            async with Consumer(bus, f"{ns}.jobs", "g", max_in_flight=4) as consumer:
                await consumer.wait_count(4)
                await asyncio.sleep(0.5)
                assert len(consumer.received) == 4
                nc = await nats.connect(brokers_nats.NATS_URL)
                try:
                    info = await nc.jetstream().consumer_info(ns.upper(), bus.durable_name(f"{ns}.jobs", "g"))
                finally:
                    await nc.close()
                assert (info.num_ack_pending, info.num_pending) == (4, 16)
                for message in consumer.received:
                    await message.ack()
                await consumer.wait_count(8)
    finally:
        await brokers_nats.cleanup(ns)
