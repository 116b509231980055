"""The `broker.rabbitmq` module: RabbitMQ (AMQP 0-9-1 through aio-pika) with durable queues and manual acks.

Topics are routing keys on one durable topic exchange (`exchange`); patterns use RabbitMQ's wildcards (`*` one
word, `#` zero or more words). A consumer group is one durable classic queue per (group, pattern), named
`<queue_prefix><group>/<pattern>` and bound to the exchange with the pattern: consumers of the group share it
(every replica), each message goes to one of them. The channel's prefetch is the consumer's `max_in_flight`, so
the server stops pushing while that many deliveries are unacked. Messages are persistent and every publish waits
for its publisher confirm.

A topic exchange keeps nothing by itself: a message is stored only in the queues bound when it is published.
Groups listed in `groups` are declared at start, so messages published before their first consumer runs wait
for it; a publish that reaches no queue at all fails with `unroutable` (the publish is mandatory) unless
`unroutable: drop` says that is fine (event fan-out to whoever listens now).

Delivery counts: classic queues do not count deliveries, so `nack` republishes the message into the group's own
queue (through the default exchange, so other groups do not see it again) with `x-delivery-count` raised and
the topic kept in `x-retry-topic`, then acks the original; a crash between the two delivers it twice, never
zero times (the engine's idempotency key absorbs the duplicate). `nack(delay)` republishes into
`<queue>/delay`, a queue whose per-message TTL dead-letters the message back into the group's queue (RabbitMQ
expires from the head only, so a short delay behind a longer one waits for it: later, never lost). A message
the server redelivers after a consumer died (AMQP `redelivered`) counts one more delivery; repeated crashes of
the same message count once. (Quorum queues count every return natively in the same `x-delivery-count` header;
they are not used because that header would overwrite the republished count.) Dead letters are published to
`<topic>.dlq` on the same exchange, into the durable queue of group `dead_letter_group` for that topic (declared
before the first dead letter, so dead letters wait for an operator), then the original is acked.

`backlog` is the queue's ready messages (queue declare) plus the deliveries this module's own consumers hold
unacked; deliveries held by other processes are not visible without the management plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping
from typing import Any, Literal

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import aiormq.exceptions
from pydantic import Field

from workflow_engine.config.models import Strict
from workflow_engine.errors import BrokerError, BrokerUnavailableError
from workflow_engine.ids import uuid7
from workflow_engine.modules.base import ModuleContext
from workflow_engine.modules.broker.base import Broker, BrokerConfig, Subscription
from workflow_engine.modules.broker.message import (
    DELIVERIES_HEADER,
    DLQ_SUFFIX,
    KEY_HEADER,
    Message,
    dead_letter_headers,
    delivery_count,
)
from workflow_engine.registry.specs import ModuleSpec

RETRY_TOPIC_HEADER = "x-retry-topic"
_INTERNAL = frozenset({KEY_HEADER, RETRY_TOPIC_HEADER})
_SERVER_HEADERS = ("x-death", "x-first-death-", "x-last-death-")
_TOKEN = r"(?:[A-Za-z0-9_\-]+|\*|#)"
_TOPIC_PATTERN = rf"^{_TOKEN}(?:\.{_TOKEN})*$"
_TOPIC = re.compile(_TOPIC_PATTERN)
_GROUP = r"^[A-Za-z0-9_\-.:]+$"
# The server refused a declaration (a queue of that name with other arguments, no permission): configuration,
# not an outage.
_REFUSED = (aiormq.exceptions.ChannelPreconditionFailed, aiormq.exceptions.ChannelAccessRefused,
            aiormq.exceptions.ChannelNotFoundEntity, aiormq.exceptions.ChannelLockedResource)
_CONNECTION_ERRORS = (
    aio_pika.exceptions.AMQPConnectionError, aio_pika.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ConnectionClosed, aiormq.exceptions.ChannelClosed, ConnectionError, OSError,
)


class GroupDeclaration(Strict):
    topic: str = Field(pattern=_TOPIC_PATTERN, description="Topic pattern of the group (`*` one word, `#` any "
                       "number of words).")
    group: str = Field(pattern=_GROUP, description="Consumer group (the `message` trigger's `group`).")


class RabbitMqBrokerConfig(BrokerConfig):
    """RabbitMQ over AMQP 0-9-1."""

    url: str = Field("amqp://guest:guest@127.0.0.1:5672/", description="AMQP URL (user, password, vhost).")
    exchange: str = Field("workflow-engine", min_length=1, description="Durable topic exchange the topics are "
                          "routing keys of (declared at start).")
    queue_prefix: str = Field("", description="Prefix of the queue names `<prefix><group>/<pattern>`.")
    groups: list[GroupDeclaration] = Field(default_factory=list, description="Consumer groups whose queues "
                                           "are declared at start, so messages published before their first "
                                           "consumer runs are kept for it.")
    dead_letter_group: str = Field("dlq", pattern=_GROUP, description="Group whose queue on `<topic>.dlq` keeps "
                                   "dead letters (declared before the first one is published).")
    unroutable: Literal["error", "drop"] = Field("error", description="A publish that no queue is bound for: "
                                                 "`error` fails it (nothing is silently lost), `drop` accepts "
                                                 "that nobody listens (event fan-out).")
    heartbeat: int = Field(10, ge=1, description="AMQP heartbeat in seconds (a dead connection is noticed "
                           "within about twice this).")


class RabbitMqBroker(Broker):
    """Topic exchange, a durable queue per (group, pattern), prefetch, republished retries, confirms."""

    type_name = "broker.rabbitmq"

    def __init__(self, name: str, config: RabbitMqBrokerConfig, ctx: ModuleContext) -> None:
        super().__init__(name, config, ctx)
        self.cfg = config
        self.connection: aio_pika.abc.AbstractConnection | None = None
        self.channel: aio_pika.abc.AbstractChannel | None = None  # publishing (confirms) and declarations
        self.exchange: aio_pika.abc.AbstractExchange | None = None
        self._declared: set[str] = set()
        self._subscriptions: set[RabbitMqSubscription] = set()
        self._kept: list[tuple[str, str]] = [(g.topic, g.group) for g in config.groups]  # declared at connect

    # -- connection ------------------------------------------------------------------------------------------

    async def _connect(self) -> None:
        try:
            connection = await aio_pika.connect(self.cfg.url, timeout=self.cfg.operation_timeout,
                                                heartbeat=self.cfg.heartbeat,
                                                client_properties={"connection_name": f"workflow-engine:{self.name}"})
            self.connection = connection
            connection.close_callbacks.add(self._closed)
            self.channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self.exchange = await self.channel.declare_exchange(
                self.cfg.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            self._declared.clear()
            for topic, group in self._kept:
                await self._declare_group(topic, group)
        except _REFUSED as exc:
            raise BrokerError(f"{self.label}: declaring exchange and queues refused: {_describe(exc)}") from exc
        except _CONNECTION_ERRORS as exc:
            raise BrokerUnavailableError(f"{self.label}: {_safe_url(self.cfg.url)}: {_describe(exc)}") from exc
        except aio_pika.exceptions.AMQPError as exc:
            raise BrokerError(f"{self.label}: declaring exchange and queues failed: {_describe(exc)}") from exc

    def _closed(self, _sender: Any, exc: BaseException | None = None) -> None:
        if self.connection is not None and _sender is self.connection:
            self.lost(exc or "connection closed by the server")

    async def _disconnect(self) -> None:
        connection, self.connection, self.channel, self.exchange = self.connection, None, None, None
        if connection is not None and not connection.is_closed:
            try:
                await connection.close()
            except Exception as exc:  # closing is best effort
                self.ctx.log.debug("rabbitmq close failed", error=exc)

    async def _ping(self) -> None:
        if self.channel is None or self.channel.is_closed or self.connection is None or self.connection.is_closed:
            raise BrokerUnavailableError(f"{self.label}: not connected to {_safe_url(self.cfg.url)}")
        try:
            await self.channel.declare_exchange(self.cfg.exchange, aio_pika.ExchangeType.TOPIC, passive=True)
        except _CONNECTION_ERRORS as exc:
            raise BrokerUnavailableError(f"{self.label}: {_describe(exc)}") from exc

    async def _reconnect(self) -> None:
        if self.connection is None or self.connection.is_closed or self.channel is None or self.channel.is_closed:
            await self._disconnect()
            await self._connect()
        await self._ping()

    def _publisher(self) -> tuple[aio_pika.abc.AbstractChannel, aio_pika.abc.AbstractExchange]:
        if self.channel is None or self.exchange is None or self.channel.is_closed:
            raise BrokerUnavailableError(f"{self.label}: not connected")
        return self.channel, self.exchange

    # -- topology --------------------------------------------------------------------------------------------

    def queue_name(self, topic: str, group: str) -> str:
        """The durable queue of `group` on pattern `topic` (the same in every replica; `*` is spelled `+`, which
        queue names allow and topics do not contain)."""
        return f"{self.cfg.queue_prefix}{group}/{topic.replace('*', '+')}"

    async def _declare_group(self, topic: str, group: str,
                             channel: aio_pika.abc.AbstractChannel | None = None) -> aio_pika.abc.AbstractQueue:
        channel = channel or self._publisher()[0]
        queue = await channel.declare_queue(self.queue_name(topic, group), durable=True)
        await queue.bind(self.cfg.exchange, routing_key=topic)
        self._declared.add(queue.name)
        return queue

    async def _declare_delay(self, queue: str) -> str:
        name = f"{queue}/delay"
        if name not in self._declared:
            await self._publisher()[0].declare_queue(name, durable=True, arguments={
                "x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue})
            self._declared.add(name)
        return name

    def keep_for(self, topic: str, group: str) -> None:
        if (topic, group) not in self._kept:
            self._kept.append((topic, group))

    async def _declare_kept(self, topic: str, group: str) -> None:
        try:
            await self._declare_group(topic, group)
        except _REFUSED as exc:
            raise BrokerError(f"{self.label}: declaring queue of group '{group}' refused: {_describe(exc)}") from exc

    @classmethod
    def check_topic(cls, topic: str, *, pattern: bool, config: Any = None) -> str | None:
        if not _TOPIC.match(topic):
            return (f"invalid topic {topic!r}: use dot-separated words of letters, digits, '_' and '-', "
                    "'*' for one word and '#' for any number of words")
        if not pattern and ("*" in topic.split(".") or "#" in topic.split(".")):
            return f"cannot publish to a wildcard topic {topic!r}"
        return None

    # -- publishing ------------------------------------------------------------------------------------------

    async def _publish(self, topic: str, payload: bytes, headers: dict[str, str], key: str | None,
                       message_id: str) -> None:
        _, exchange = self._publisher()
        await self._send(exchange, topic, _amqp_message(payload, headers, key, message_id),
                         mandatory=self.cfg.unroutable == "error", what=f"publish to '{topic}'")

    async def _send(self, exchange: aio_pika.abc.AbstractExchange, routing_key: str, message: aio_pika.Message,
                    *, mandatory: bool, what: str) -> None:
        try:
            await exchange.publish(message, routing_key=routing_key, mandatory=mandatory,
                                   timeout=self.cfg.operation_timeout)
        except aio_pika.exceptions.PublishError as exc:
            raise BrokerError(f"{self.label}: {what}: no queue is bound for it (declare its consumer group in "
                              f"`groups`, or set `unroutable: drop`)", code="unroutable") from exc
        except aio_pika.exceptions.DeliveryError as exc:
            raise BrokerUnavailableError(f"{self.label}: {what}: the server refused it: {_describe(exc)}") from exc
        except (TimeoutError, *_CONNECTION_ERRORS) as exc:
            raise BrokerUnavailableError(f"{self.label}: {what}: {_describe(exc)}") from exc

    # -- consuming -------------------------------------------------------------------------------------------

    async def _subscribe(self, topic: str, group: str, max_in_flight: int) -> Subscription:
        if not re.match(_GROUP, group):
            raise BrokerError(f"{self.label}: invalid group {group!r} (letters, digits, '_', '-', '.', ':')")
        if self.connection is None or self.connection.is_closed:
            raise BrokerUnavailableError(f"{self.label}: not connected")
        channel: aio_pika.abc.AbstractChannel | None = None
        try:
            channel = await self.connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=max_in_flight)
            queue = await self._declare_group(topic, group, channel)
            sub = RabbitMqSubscription(self, topic, group, channel)
            sub.tag = await queue.consume(sub.deliver, no_ack=False)
        except BaseException as exc:  # also cancelled: a consumer nobody fetches from would hold its deliveries
            if channel is not None and not channel.is_closed:
                with contextlib.suppress(Exception):
                    await channel.close()
            if isinstance(exc, _REFUSED):
                raise BrokerError(f"{self.label}: subscribe to '{topic}' refused: {_describe(exc)}") from exc
            if isinstance(exc, _CONNECTION_ERRORS):
                raise BrokerUnavailableError(f"{self.label}: subscribe to '{topic}': {_describe(exc)}") from exc
            raise
        self._subscriptions.add(sub)
        return sub

    def _message(self, incoming: aio_pika.abc.AbstractIncomingMessage, queue: str) -> Message:
        raw = {k: _text(v) for k, v in (incoming.headers or {}).items() if not k.startswith(_SERVER_HEADERS)}
        retry_topic = raw.get(RETRY_TOPIC_HEADER)
        count = 1
        if retry_topic is not None:  # a copy republished by nack: the count travelled with it
            count = delivery_count(raw.pop(DELIVERIES_HEADER, None))
        if incoming.redelivered:  # a consumer went away before settling this delivery
            count += 1
        headers = {k: v for k, v in raw.items() if k not in _INTERNAL}
        # A publisher that sets no id: one of this delivery's own. Delivery tags restart on every channel, so
        # `<queue>:<tag>` named later messages like earlier ones and the idempotency key dropped them.
        message_id = incoming.message_id or f"{queue}:{uuid7()}"
        return Message(message_id, retry_topic or incoming.routing_key or "", incoming.body, headers,
                       raw.get(KEY_HEADER), count, native=incoming)

    # -- settling --------------------------------------------------------------------------------------------

    async def _ack(self, message: Message) -> None:
        incoming: aio_pika.abc.AbstractIncomingMessage = message.native
        self._owner(incoming)  # a closed consumer's channel is gone: not an outage of the broker
        try:
            await incoming.ack()
        except (*_CONNECTION_ERRORS, aio_pika.exceptions.MessageProcessError) as exc:
            raise BrokerUnavailableError(f"{self.label}: ack of {message.id}: {_describe(exc)}") from exc
        finally:
            self._settled(incoming)

    async def _nack(self, message: Message, delay: float) -> None:
        """Republish with the count raised into the group's queue (or its delay queue), then ack the original."""
        sub = self._owner(message.native)
        target = sub.queue if delay < 0.001 else await self._declare_delay(sub.queue)
        headers = {**message.headers, RETRY_TOPIC_HEADER: message.topic,
                   DELIVERIES_HEADER: str(message.delivery_count + 1)}
        copy = _amqp_message(message.payload, headers, message.key, message.id)
        if delay >= 0.001:
            copy.expiration = delay  # seconds; the delay queue dead-letters it back when it expires
        channel, _ = self._publisher()
        await self._send(channel.default_exchange, target, copy, mandatory=True, what=f"retry of {message.id}")
        await self._ack(message)

    async def _dead_letter(self, message: Message, error: Mapping[str, Any]) -> None:
        topic = message.topic + DLQ_SUFFIX
        name = self.queue_name(topic, self.cfg.dead_letter_group)
        if name not in self._declared:
            try:
                await self._declare_group(topic, self.cfg.dead_letter_group)
            except _REFUSED as exc:
                raise BrokerError(f"{self.label}: declaring '{name}' refused: {_describe(exc)}") from exc
            except _CONNECTION_ERRORS as exc:
                raise BrokerUnavailableError(f"{self.label}: declaring '{name}': {_describe(exc)}") from exc
        _, exchange = self._publisher()
        dead = _amqp_message(message.payload, dead_letter_headers(message, error), message.key, uuid7())
        await self._send(exchange, topic, dead, mandatory=True, what=f"dead letter to '{topic}'")
        await self._ack(message)

    def _owner(self, incoming: aio_pika.abc.AbstractIncomingMessage) -> RabbitMqSubscription:
        for sub in self._subscriptions:
            if incoming in sub.unsettled:
                return sub
        raise BrokerError(f"{self.label}: the consumer of this delivery is closed (it will be delivered again)")

    def _settled(self, incoming: aio_pika.abc.AbstractIncomingMessage) -> None:
        for sub in self._subscriptions:
            sub.unsettled.discard(incoming)

    # -- backlog ---------------------------------------------------------------------------------------------

    async def _backlog(self, topic: str, group: str) -> int | None:
        channel, _ = self._publisher()
        try:  # the same arguments as the consumer's declaration: answers the counts, changes nothing
            queue = await channel.declare_queue(self.queue_name(topic, group), durable=True)
        except _CONNECTION_ERRORS as exc:
            raise BrokerUnavailableError(f"{self.label}: queue declare: {_describe(exc)}") from exc
        ready = int(queue.declaration_result.message_count or 0)
        held = sum(len(s.unsettled) for s in self._subscriptions if (s.topic, s.group) == (topic, group))
        return ready + held

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "url": _safe_url(self.cfg.url), "exchange": self.cfg.exchange}


class RabbitMqSubscription(Subscription):
    """A channel with prefetch = max_in_flight consuming one group queue; deliveries wait in a local queue that
    never holds more than the prefetch."""

    def __init__(self, broker: RabbitMqBroker, topic: str, group: str,
                 channel: aio_pika.abc.AbstractChannel) -> None:
        self.broker, self.topic, self.group, self.channel = broker, topic, group, channel
        self.queue = broker.queue_name(topic, group)
        self.tag: str | None = None
        self.unsettled: set[aio_pika.abc.AbstractIncomingMessage] = set()
        self.delivered: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()

    async def deliver(self, incoming: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.unsettled.add(incoming)
        self.delivered.put_nowait(incoming)

    async def fetch(self, limit: int, wait: float) -> list[Message]:
        if self.channel.is_closed:
            raise BrokerUnavailableError(f"{self.broker.label}: the consumer channel of '{self.queue}' closed")
        out: list[Message] = []
        try:
            async with asyncio.timeout(wait):
                out.append(self.broker._message(await self.delivered.get(), self.queue))
        except TimeoutError:
            return out
        while len(out) < limit and not self.delivered.empty():
            out.append(self.broker._message(self.delivered.get_nowait(), self.queue))
        return out

    async def close(self) -> None:
        self.broker._subscriptions.discard(self)
        self.unsettled.clear()
        if not self.channel.is_closed:
            with contextlib.suppress(*_CONNECTION_ERRORS, aio_pika.exceptions.AMQPError):
                await self.channel.close()  # unacked deliveries go back to the queue


def _amqp_message(payload: bytes, headers: Mapping[str, str], key: str | None, message_id: str) -> aio_pika.Message:
    hdrs: dict[str, Any] = {str(k): str(v) for k, v in headers.items() if k != KEY_HEADER}
    if key is not None:
        hdrs[KEY_HEADER] = key
    return aio_pika.Message(payload, headers=hdrs, message_id=message_id,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT)


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes | bytearray) else str(value)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _safe_url(url: str) -> str:
    """The URL without its password (it appears in /readyz and logs)."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)


SPEC = ModuleSpec(
    type="broker.rabbitmq",
    kind="broker",
    config_model=RabbitMqBrokerConfig,
    factory=RabbitMqBroker,
    check_topic=RabbitMqBroker.check_topic,
    summary="RabbitMQ: a durable topic exchange, one durable queue per consumer group and pattern, prefetch = "
            "max_in_flight, publisher confirms, retries republished with x-delivery-count, dead letters to "
            "<topic>.dlq.",
)
