"""The `broker.redis` module: Redis Streams with consumer groups, XACK and XAUTOCLAIM.

A topic is a stream key (`prefix` + topic; no wildcards). A consumer group is a Redis consumer group created at
the stream's start (`0`), so it reads what was published before it existed; each module instance is one consumer
of it. An entry delivered and not acked stays in the group's pending list: after `claim_idle` any consumer takes
it over with XAUTOCLAIM (a crashed replica's work is not lost), and Redis counts each delivery (XPENDING's
times-delivered is the delivery count). `nack(delay)` re-claims the entry for this consumer after `delay`.
Dead letters are XADDed to the stream `<topic>.dlq` with the error in their headers, then the original is acked.
Entries are fields `p` (payload), `h` (headers, JSON), `k` (key), `i` (message id).
"""

from __future__ import annotations

import heapq
import os
import socket
import time
from typing import Any, TypeAlias

import orjson
import redis.asyncio as aioredis
import redis.exceptions
import structlog
from pydantic import Field

from workflow_engine.coalesce import Coalescer
from workflow_engine.durations import Duration
from workflow_engine.errors import BrokerError, BrokerUnavailableError
from workflow_engine.ids import uuid7
from workflow_engine.modules.base import ModuleContext
from workflow_engine.modules.broker.base import Broker, BrokerConfig, Subscription
from workflow_engine.modules.broker.message import Message
from workflow_engine.registry.specs import ModuleSpec

_log = structlog.get_logger("workflow_engine.broker")

_Field: TypeAlias = "bytes | bytearray | memoryview[int] | str | int | float"  # what redis-py xadd takes
_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class RedisBrokerConfig(BrokerConfig):
    """Redis Streams."""

    url: str = Field("redis://127.0.0.1:6379/0", description="Server URL (redis:// or rediss://).")
    prefix: str = Field("", description="Prepended to every topic to form the stream key.")
    claim_idle: Duration = Field(30.0, gt=0, description="An entry delivered and not acked for this long is "
                                 "taken over by another consumer (XAUTOCLAIM); the engine keeps entries it is "
                                 "still working on fresh every third of it.")
    maxlen: int | None = Field(None, ge=1, description="Trim streams to about this many entries on publish "
                               "(none: never trimmed; trimmed entries are gone even if unacked).")
    consumer: str | None = Field(None, description="Consumer name in the groups (default: host, pid and a "
                                 "random suffix, unique per process).")
    max_connections: int = Field(32, ge=2, description="Connections to Redis at most; commands beyond wait for "
                                 "one (acks of many messages share one XACK).")


class RedisBroker(Broker):
    """Streams, consumer groups, XACK, XAUTOCLAIM."""

    type_name = "broker.redis"

    def __init__(self, name: str, config: RedisBrokerConfig, ctx: ModuleContext) -> None:
        super().__init__(name, config, ctx)
        self.cfg = config
        self.touch_interval = config.claim_idle / 3
        self.consumer_name = config.consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid7()[-8:]}"
        self.client: aioredis.Redis | None = None

    @classmethod
    def check_topic(cls, topic: str, *, pattern: bool, config: Any = None) -> str | None:
        if not topic or any(c in topic for c in "*> "):
            return f"invalid topic {topic!r}: Redis Streams topics are stream keys, without wildcards"
        return None

    def key(self, topic: str) -> str:
        return self.cfg.prefix + topic

    async def _connect(self) -> None:
        # A blocking pool: a burst of commands waits for a free connection (up to the operation timeout)
        # instead of failing with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            self.cfg.url, max_connections=self.cfg.max_connections, timeout=self.cfg.operation_timeout,
            socket_connect_timeout=self.cfg.operation_timeout,
            socket_timeout=self.cfg.operation_timeout + self.cfg.fetch_wait, health_check_interval=0,
        )
        self.client = aioredis.Redis.from_pool(pool)
        await self._ping()

    async def _disconnect(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.aclose()

    def _redis(self) -> aioredis.Redis:
        if self.client is None:
            raise BrokerUnavailableError(f"{self.label}: not connected")
        return self.client

    async def _call(self, what: str, coro: Any) -> Any:
        """Await a Redis command, translating its errors."""
        try:
            return await coro
        except _DOWN as exc:
            raise BrokerUnavailableError(f"{self.label}: {what}: {type(exc).__name__}: {exc}") from exc
        except redis.exceptions.ResponseError as exc:
            raise BrokerError(f"{self.label}: {what}: {exc}") from exc

    async def _ping(self) -> None:
        await self._call("ping", self._redis().ping())

    async def _publish(self, topic: str, payload: bytes, headers: dict[str, str], key: str | None,
                       message_id: str) -> None:
        fields: dict[_Field, _Field] = {"p": payload, "h": orjson.dumps(headers), "i": message_id}
        if key is not None:
            fields["k"] = key
        await self._call(f"XADD {topic}", self._redis().xadd(self.key(topic), fields, maxlen=self.cfg.maxlen))

    async def _subscribe(self, topic: str, group: str, max_in_flight: int) -> Subscription:
        try:
            await self._call("XGROUP CREATE", self._redis().xgroup_create(self.key(topic), group, id="0",
                                                                           mkstream=True))
        except BrokerError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        return RedisSubscription(self, topic, group)

    def _message(self, topic: str, entry_id: bytes, fields: dict[bytes, bytes], count: int,
                 sub: RedisSubscription) -> Message:
        native = (entry_id, sub)
        if b"p" not in fields and b"h" not in fields:
            # Not written by the engine (`XADD stream order 42 customer ann`): the fields are the body.
            body = {_text(k): _text(v) for k, v in fields.items()}
            return Message(entry_id.decode(), topic, orjson.dumps(body), {}, None, count, native=native)
        key = _text(fields[b"k"]) if b"k" in fields else None
        ident = _text(fields.get(b"i", b"")) or entry_id.decode()  # an empty id is no id
        return Message(ident, topic, fields.get(b"p", b""), self._headers(fields.get(b"h"), entry_id), key, count,
                       native=native)

    def _headers(self, raw: bytes | None, entry_id: bytes) -> dict[str, str]:
        """The `h` field's headers; one that is not a JSON object leaves the message without headers (it still
        runs: its body is intact), said in a warning."""
        if raw is None:
            return {}
        try:
            headers = orjson.loads(raw)
        except orjson.JSONDecodeError:
            headers = None
        if not isinstance(headers, dict):
            _log.warning("stream entry has unreadable headers; delivered without them", module=self.name,
                         entry_id=entry_id.decode(), headers=_text(raw)[:200])
            return {}
        return {str(k): v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in headers.items()}

    async def _ack(self, message: Message) -> None:
        entry_id, sub = message.native
        await sub.acks.submit(entry_id)

    async def _nack(self, message: Message, delay: float) -> None:
        entry_id, sub = message.native
        sub.retry_later(entry_id, delay)

    async def _touch(self, message: Message) -> None:
        entry_id, sub = message.native
        # Claiming it again for ourselves resets its idle time (JUSTID: without counting a delivery).
        await self._call("XCLAIM", self._redis().xclaim(self.key(sub.topic), sub.group, self.consumer_name, 0,
                                                        [entry_id], justid=True))

    async def _backlog(self, topic: str, group: str) -> int | None:
        groups = await self._call("XINFO GROUPS", self._redis().xinfo_groups(self.key(topic)))
        for info in groups:
            name = info.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == group:
                lag = info.get("lag")  # None when Redis cannot tell (entries deleted mid-stream)
                return None if lag is None else int(lag) + int(info.get("pending") or 0)
        return None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "url": _redact(self.cfg.url), "consumer": self.consumer_name}


class RedisSubscription(Subscription):
    """This consumer in one group: new entries, entries due again after a nack, and stuck entries reclaimed."""

    def __init__(self, broker: RedisBroker, topic: str, group: str) -> None:
        self.broker, self.topic, self.group = broker, topic, group
        self.stream = broker.key(topic)
        self.due: list[tuple[float, bytes]] = []
        self.next_reclaim = 0.0
        # Acks that arrive together leave in one XACK (one round trip for many messages).
        self.acks: Coalescer[bytes, None] = Coalescer(self._xack, name=f"redis-xack:{self.stream}")

    async def _xack(self, entry_ids: list[bytes]) -> list[BaseException | None]:
        await self.broker._call("XACK", self.broker._redis().xack(self.stream, self.group, *entry_ids))
        return [None] * len(entry_ids)

    def retry_later(self, entry_id: bytes, delay: float) -> None:
        heapq.heappush(self.due, (time.monotonic() + delay, entry_id))

    async def fetch(self, limit: int, wait: float) -> list[Message]:
        out = await self._due(limit)
        if len(out) < limit and time.monotonic() >= self.next_reclaim:
            out += await self._reclaim(limit - len(out))
        if len(out) < limit:
            out += await self._new(limit - len(out), 0 if out else wait)
        return out

    async def _due(self, limit: int) -> list[Message]:
        ids: list[int | bytes | str | memoryview[int]] = []
        now = time.monotonic()
        while self.due and self.due[0][0] <= now and len(ids) < limit:
            ids.append(heapq.heappop(self.due)[1])
        if not ids:
            return []
        r = self.broker._redis()
        entries = await self.broker._call("XCLAIM", r.xclaim(self.stream, self.group, self.broker.consumer_name,
                                                             0, ids))
        return await self._counted(entries)

    async def _reclaim(self, limit: int) -> list[Message]:
        """Entries idle longer than `claim_idle` in any consumer of the group (crashed or stuck) become ours."""
        cfg = self.broker.cfg
        self.next_reclaim = time.monotonic() + min(cfg.claim_idle / 2, 5.0)
        r = self.broker._redis()
        reply = await self.broker._call("XAUTOCLAIM", r.xautoclaim(
            self.stream, self.group, self.broker.consumer_name, int(cfg.claim_idle * 1000), "0-0", count=limit))
        return await self._counted(reply[1])

    async def _counted(self, entries: list[Any]) -> list[Message]:
        """Claimed entries with their delivery counts read from the pending list (XPENDING)."""
        entries = [(eid, fields) for eid, fields in entries if fields]  # deleted entries come back empty
        if not entries:
            return []
        r = self.broker._redis()
        counts: dict[bytes, int] = {}
        for eid, _ in entries:
            pending = await self.broker._call("XPENDING", r.xpending_range(self.stream, self.group, eid, eid, 1))
            counts[eid] = int(pending[0]["times_delivered"]) if pending else 1
        return [self.broker._message(self.topic, eid, fields, counts[eid], self) for eid, fields in entries]

    async def _new(self, limit: int, wait: float) -> list[Message]:
        r = self.broker._redis()
        reply = await self.broker._call("XREADGROUP", r.xreadgroup(
            self.group, self.broker.consumer_name, {self.stream: ">"}, count=limit,
            block=max(1, int(wait * 1000)) if wait > 0 else None))
        out: list[Message] = []
        for _stream, entries in reply or []:
            out += [self.broker._message(self.topic, eid, fields, 1, self) for eid, fields in entries if fields]
        return out

    async def close(self) -> None:
        """Entries still pending stay in the group's pending list; XAUTOCLAIM hands them out after claim_idle."""
        self.due.clear()


def _redact(url: str) -> str:
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


SPEC = ModuleSpec(
    type="broker.redis",
    kind="broker",
    config_model=RedisBrokerConfig,
    factory=RedisBroker,
    check_topic=RedisBroker.check_topic,
    summary="Redis Streams: consumer groups, XACK, XAUTOCLAIM of stuck entries, delivery counts from XPENDING, "
            "dead letters to the stream <topic>.dlq.",
)


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")
