"""broker.redis beyond the conformance suite: stream entries other producers write."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.modules.broker import brokers_redis
from tests.modules.broker.conformance import Consumer, open_broker, unique
from workflow_engine.modules.broker.redis import RedisBroker


@pytest.fixture
async def ns() -> AsyncIterator[str]:
    token = unique("s")
    yield token
    await brokers_redis.cleanup(token)


async def test_entries_of_other_producers_are_delivered_and_block_nothing(ns: str) -> None:
    """An unreadable `h` field made the consumer fail on the entry, again after every reclaim, and held the
    entries read with it; entries in another field layout reached workflows with an empty body."""
    topic = f"{ns}.in"
    async with open_broker(brokers_redis.harness(), ns) as broker, Consumer(broker, topic, "g") as consumer:
        assert isinstance(broker, RedisBroker)
        client = aioredis.Redis.from_url(brokers_redis.REDIS_URL)
        try:
            stream = broker.key(topic)
            await client.xadd(stream, {"h": "notjson", "p": '{"a": 1}'})
            await client.xadd(stream, {"h": '["a list"]', "p": '{"a": 2}'})
            await client.xadd(stream, {"order": "42", "customer": "ann"})
            await client.xadd(stream, {"p": '{"a": 3}', "i": ""})
            await client.xadd(stream, {"p": '{"a": 4}', "i": ""})
        finally:
            await client.aclose()
        got = await consumer.wait_count(5)
        for message in got:
            await message.ack()
    assert [m.body for m in got] == [{"a": 1}, {"a": 2}, {"order": "42", "customer": "ann"}, {"a": 3}, {"a": 4}]
    assert all(m.headers == {} for m in got)
    assert len({m.id for m in got}) == 5  # an empty `i` is no id: the entry's own is used
