"""The `broker.nats` module: NATS JetStream with durable pull consumers and explicit acks.

Topics are NATS subjects (`*` one token, `>` the rest) held by one stream (`stream.subjects`, created at start
when missing). A consumer group is a durable pull consumer named from the group and topic, shared by every
replica; the server tracks deliveries (`num_delivered`), redelivers what is not acked within `ack_wait`, and a
NAK with delay schedules a redelivery. Dead letters are published to `<topic>.dlq` (which the stream's subjects
must cover) and the original is TERMed. The message id is the publisher's `Nats-Msg-Id` (JetStream also
deduplicates on it within `duplicate_window`), else `<stream>:<sequence>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, Literal

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from pydantic import Field

from workflow_engine.config.models import Strict
from workflow_engine.durations import Duration
from workflow_engine.errors import BrokerError, BrokerUnavailableError
from workflow_engine.ids import uuid7
from workflow_engine.modules.base import ModuleContext
from workflow_engine.modules.broker.base import Broker, BrokerConfig, Subscription
from workflow_engine.modules.broker.message import (
    DLQ_SUFFIX,
    KEY_HEADER,
    Message,
    dead_letter_headers,
    split_headers,
)
from workflow_engine.registry.specs import ModuleSpec

MSG_ID_HEADER = "Nats-Msg-Id"
_ACK_TOKENS = 9  # the ack subject's tokens without a domain
STATUS_HEADER = api.Header.STATUS.value
_CONNECTION_ERRORS = (
    nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError, nats.errors.NoServersError,
    nats.errors.StaleConnectionError, nats.errors.OutboundBufferLimitError, nats.errors.NoRespondersError,
    nats.errors.FlushTimeoutError, nats.js.errors.ServiceUnavailableError, OSError,
)


class NatsStreamConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="JetStream stream holding the topics.")
    subjects: list[str] = Field(min_length=1, description="Subjects the stream holds when created here; include "
                                "the `<topic>.dlq` subjects (e.g. `orders.>` covers `orders.created.dlq`).")
    create: bool = Field(True, description="Create the stream at start when it does not exist (else it must).")
    storage: Literal["file", "memory"] = Field("file", description="Where the stream keeps messages.")
    max_age: Duration | None = Field(None, gt=0, description="Messages older than this are removed (none: kept).")
    max_msgs: int | None = Field(None, ge=1, description="Messages kept at most (oldest removed first).")
    max_bytes: int | None = Field(None, ge=1, description="Bytes kept at most (oldest removed first).")
    duplicate_window: Duration = Field(120.0, gt=0, description="Window in which a repeated message id is "
                                       "ignored by the server.")
    replicas: int = Field(1, ge=1, le=5, description="Stream replicas in a clustered server.")


class NatsBrokerConfig(BrokerConfig):
    """NATS JetStream."""

    url: str = Field("nats://127.0.0.1:4222", description="Server URL; several separated by commas.")
    stream: NatsStreamConfig = Field(description="The stream that holds the topics.")
    ack_wait: Duration = Field(30.0, gt=0, description="Unacked deliveries are redelivered after this; the "
                               "engine signals progress every third of it while an execution runs.")
    max_deliver: int = Field(-1, ge=-1, description="Server-side delivery limit (-1: none). Leave it unlimited: "
                             "the message trigger dead-letters after `on_message_error.max_deliveries`, and a "
                             "server limit would silently stop redelivering instead.")
    durable_prefix: str = Field("", pattern=r"^[A-Za-z0-9_-]*$", description="Prefix of durable consumer names.")
    user: str | None = Field(None, description="User name.")
    password: str | None = Field(None, description="Password.")
    token: str | None = Field(None, description="Authentication token.")


class NatsBroker(Broker):
    """JetStream publish, durable pull consumers, NAK with delay, TERM after dead-lettering."""

    type_name = "broker.nats"
    acks_buffered = True  # Msg.ack is a publish into the client's buffer (its flusher writes it)

    def __init__(self, name: str, config: NatsBrokerConfig, ctx: ModuleContext) -> None:
        super().__init__(name, config, ctx)
        self.cfg = config
        self.touch_interval = config.ack_wait / 3
        self.nc: NatsClient | None = None
        self.js: JetStreamContext | None = None
        self.subscriptions: set[NatsSubscription] = set()

    @classmethod
    def check_topic(cls, topic: str, *, pattern: bool, config: Any = None) -> str | None:
        """The subject syntax, and a topic the stream this module creates would not hold (its consumer would be
        refused forever: "filter subject is not a valid subset"; a publish: "no stream took")."""
        problem = super().check_topic(topic, pattern=pattern)
        if problem is not None:
            return problem
        stream = getattr(config, "stream", None) or (config.get("stream") if isinstance(config, dict) else None)
        if isinstance(stream, dict):
            name, subjects, create = stream.get("name"), stream.get("subjects"), stream.get("create", True)
        elif stream is not None:
            name, subjects, create = stream.name, stream.subjects, stream.create
        else:
            return None
        # An existing stream (`create: false`) has the subjects it was made with, which the config may not list.
        if create is False or not isinstance(subjects, list) or not all(isinstance(s, str) for s in subjects):
            return None
        if not any(subject_covers(subject, topic) for subject in subjects):
            return f"topic {topic!r} is not among the subjects of stream '{name}' ({', '.join(subjects)})"
        return None

    async def _connect(self) -> None:
        cfg = self.cfg
        auth: dict[str, Any] = {k: v for k, v in (("user", cfg.user), ("password", cfg.password),
                                                   ("token", cfg.token)) if v is not None}
        try:
            self.nc = await nats.connect(
                [u.strip() for u in cfg.url.split(",")], name=f"workflow-engine:{self.name}",
                connect_timeout=cfg.operation_timeout, allow_reconnect=True, max_reconnect_attempts=-1,
                reconnect_time_wait=cfg.reconnect_initial, ping_interval=max(1, int(cfg.health_interval)),
                disconnected_cb=self._disconnected, reconnected_cb=self._reconnected, error_cb=self._error,
                **auth,
            )
            self.js = self.nc.jetstream(timeout=cfg.operation_timeout)
            await self._ensure_stream()
        except _CONNECTION_ERRORS as exc:
            raise BrokerUnavailableError(f"{self.label}: {cfg.url}: {type(exc).__name__}: {exc}") from exc

    async def _ensure_stream(self) -> None:
        assert self.js is not None
        spec = self.cfg.stream
        try:
            await self.js.stream_info(spec.name)
            return
        except nats.js.errors.NotFoundError:
            if not spec.create:
                raise BrokerError(f"{self.label}: stream '{spec.name}' does not exist") from None
        await self.js.add_stream(StreamConfig(
            name=spec.name, subjects=list(spec.subjects), retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE if spec.storage == "file" else StorageType.MEMORY, max_age=spec.max_age,
            max_msgs=spec.max_msgs or -1, max_bytes=spec.max_bytes or -1,
            duplicate_window=spec.duplicate_window, num_replicas=spec.replicas,
        ))
        self.ctx.log.info("created JetStream stream", stream=spec.name, subjects=list(spec.subjects))

    async def _disconnected(self) -> None:
        self.lost("disconnected from the NATS server")

    async def _reconnected(self) -> None:
        for subscription in self.subscriptions:
            subscription.request_lost()  # the server forgot pull requests sent on the old connection
        self._wake.set()  # the watch task confirms with a round trip and reports ready

    async def _error(self, exc: Exception) -> None:
        self.ctx.log.debug("nats client error", error=f"{type(exc).__name__}: {exc}")

    async def _disconnect(self) -> None:
        nc, self.nc, self.js = self.nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.close()
            except Exception as exc:  # closing is best effort
                self.ctx.log.debug("nats close failed", error=exc)

    async def _ping(self) -> None:
        """A JetStream round trip that also proves the stream is there (a restarted server may be up before its
        streams are)."""
        if self.nc is None or self.js is None or not self.nc.is_connected:
            raise BrokerUnavailableError(f"{self.label}: not connected to {self.cfg.url}")
        try:
            await self.js.stream_info(self.cfg.stream.name)
        except (*_CONNECTION_ERRORS, nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError) as exc:
            raise BrokerUnavailableError(f"{self.label}: {type(exc).__name__}: {exc}") from exc
        except nats.js.errors.NotFoundError as exc:
            raise BrokerUnavailableError(f"{self.label}: stream '{self.cfg.stream.name}' does not exist") from exc

    async def _reconnect(self) -> None:
        if self.nc is None or self.nc.is_closed:  # the client gave up: build a new one
            await self._disconnect()
            await self._connect()
        await self._ping()

    def _jetstream(self) -> JetStreamContext:
        if self.js is None:
            raise BrokerUnavailableError(f"{self.label}: not connected")
        return self.js

    async def _publish(self, topic: str, payload: bytes, headers: dict[str, str], key: str | None,
                       message_id: str) -> None:
        hdrs = {**headers, MSG_ID_HEADER: message_id}
        if key is not None:
            hdrs[KEY_HEADER] = key
        try:
            await self._jetstream().publish(topic, payload, timeout=self.cfg.operation_timeout,
                                            stream=self.cfg.stream.name, headers=hdrs)
        except nats.js.errors.NoStreamResponseError as exc:
            problem = (f"{self.label}: no stream took '{topic}' (stream '{self.cfg.stream.name}' holds "
                       f"{', '.join(self.cfg.stream.subjects)})")
            if self.available:  # the stream answers pings: the subject is not one of its subjects
                raise BrokerError(problem, code="invalid_topic") from exc
            raise BrokerUnavailableError(problem) from exc  # JetStream is still starting
        except (*_CONNECTION_ERRORS, nats.errors.TimeoutError) as exc:
            raise BrokerUnavailableError(f"{self.label}: publish to '{topic}': {type(exc).__name__}") from exc
        except nats.js.errors.APIError as exc:
            raise BrokerError(f"{self.label}: publish to '{topic}' refused: {exc}") from exc

    def durable_name(self, topic: str, group: str) -> str:
        """The durable consumer of `group` on `topic` (the same in every replica)."""
        subject = topic.replace("*", "STAR").replace(">", "ALL")
        return self.cfg.durable_prefix + re.sub(r"[^A-Za-z0-9_-]", "_", f"{group}__{subject}")

    async def _subscribe(self, topic: str, group: str, max_in_flight: int) -> Subscription:
        durable = self.durable_name(topic, group)
        config = ConsumerConfig(
            name=durable, durable_name=durable, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL, ack_wait=self.cfg.ack_wait, max_deliver=self.cfg.max_deliver,
            filter_subject=topic, max_ack_pending=max(max_in_flight, 1024),
        )
        js, stream = self._jetstream(), self.cfg.stream.name
        try:
            try:
                await js.consumer_info(stream, durable)
            except nats.js.errors.NotFoundError:
                await js.add_consumer(stream, config=config)
            assert self.nc is not None
            return await NatsSubscription.open(self, self.nc, stream, durable)
        except (*_CONNECTION_ERRORS, nats.errors.TimeoutError) as exc:
            raise BrokerUnavailableError(f"{self.label}: subscribe to '{topic}': {type(exc).__name__}") from exc

    def _message(self, msg: Msg) -> Message:
        raw = msg.headers or {}
        msg_id = raw.get(MSG_ID_HEADER)
        # The ack subject `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`
        # read directly (nats-py's `metadata` builds three dataclasses and a datetime); the longer form with a
        # domain and an account hash goes through it.
        tokens = (msg.reply or "").split(".")
        if len(tokens) == _ACK_TOKENS and tokens[0] == "$JS" and tokens[1] == "ACK":
            delivered, sequence = int(tokens[4]), tokens[5]
        else:
            meta = msg.metadata
            delivered, sequence = meta.num_delivered, str(meta.sequence.stream)
        # Nats-* headers are the server's and the client's own (id, expected stream), not the publisher's.
        headers, key, _ = split_headers({k: v for k, v in raw.items() if not k.startswith("Nats-")})
        return Message(msg_id or f"{self.cfg.stream.name}:{sequence}", msg.subject, msg.data, headers, key,
                       delivered, native=msg)

    async def _settle(self, op: str, message: Message, delay: float | None = None) -> None:
        msg: Msg = message.native
        try:
            if op == "ack":
                await msg.ack()
            elif op == "nak":
                await msg.nak(delay=delay or None)
            elif op == "term":
                await msg.term()
            else:
                await msg.in_progress()
        except nats.errors.MsgAlreadyAckdError as exc:
            raise BrokerError(f"{self.label}: message {message.id} already settled") from exc
        except _CONNECTION_ERRORS as exc:
            raise BrokerUnavailableError(f"{self.label}: {op} of {message.id}: {type(exc).__name__}") from exc

    async def _ack(self, message: Message) -> None:
        await self._settle("ack", message)

    async def _nack(self, message: Message, delay: float) -> None:
        await self._settle("nak", message, delay)

    async def _touch(self, message: Message) -> None:
        await self._settle("wpi", message)

    async def _dead_letter(self, message: Message, error: Mapping[str, Any]) -> None:
        # Published first: a crash in between leaves the original to be delivered again, never lost.
        await self._publish(message.topic + DLQ_SUFFIX, message.payload, dead_letter_headers(message, error),
                            message.key, uuid7())
        await self._settle("term", message)

    async def _backlog(self, topic: str, group: str) -> int | None:
        try:
            info = await self._jetstream().consumer_info(self.cfg.stream.name, self.durable_name(topic, group))
        except nats.js.errors.NotFoundError:
            return None
        except (*_CONNECTION_ERRORS, nats.errors.TimeoutError) as exc:
            raise BrokerUnavailableError(f"{self.label}: consumer info: {type(exc).__name__}") from exc
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "url": self.cfg.url, "stream": self.cfg.stream.name}


class NatsSubscription(Subscription):
    """A durable pull consumer read through the core client: pull requests (`CONSUMER.MSG.NEXT`) answered on an
    inbox of this subscription, whose callback only queues what arrives.

    nats-py's `PullSubscription.fetch` takes each message with `next_msg`, which creates a task, a uuid4 and a
    `wait_for` per message (bench/broker_instructions.py: 80k of the engine's 491k instructions per message
    went with it). Here one request is open at a time, for at most the room the caller has (so no more
    messages are delivered than `max_in_flight`); `fetch` returns what has arrived as soon as anything has,
    and the request's remainder keeps arriving for the next `fetch` until the request is complete, expires
    (status 408), finds nothing (404) or is refused (409), or the connection it was sent on is gone.
    """

    def __init__(self, broker: NatsBroker, nc: NatsClient, request_subject: str) -> None:
        self.broker = broker
        self.nc = nc
        self.request_subject = request_subject
        self.inbox = nc.new_inbox()
        self.sub: Any = None
        self.arrived: deque[Msg] = deque()
        self.wake = asyncio.Event()
        self.due = 0  # messages the open request may still deliver (0: none open)
        self.due_until = 0.0  # when the open request is surely over (a request lost with a connection)

    @classmethod
    async def open(cls, broker: NatsBroker, nc: NatsClient, stream: str, durable: str) -> NatsSubscription:
        subscription = cls(broker, nc, f"{api.DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{durable}")
        subscription.sub = await nc.subscribe(subscription.inbox, cb=subscription._received)
        broker.subscriptions.add(subscription)
        return subscription

    def request_lost(self) -> None:
        """The open request is gone (a reconnect): the next fetch sends another."""
        self.due = 0
        self.wake.set()

    async def _received(self, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get(STATUS_HEADER) if headers else None
        if status is None:
            self.arrived.append(msg)
            self.due = max(0, self.due - 1)
        elif status != api.StatusCode.CONTROL_MESSAGE:  # 404 nothing, 408 expired, 409 refused: request over
            self.due = 0
        self.wake.set()

    async def fetch(self, limit: int, wait: float) -> list[Message]:
        if not self.arrived:
            # Cleared before the request goes out: an answer that comes while it is being sent still wakes us.
            self.wake.clear()
            if self.due and time.monotonic() > self.due_until:
                self.due = 0
            if not self.due:
                await self._request(limit, wait)
            if not self.arrived:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self.wake.wait()
            if not self.arrived:
                return []
        arrived, batch = self.arrived, list[Message]()
        message = self.broker._message
        while arrived and len(batch) < limit:
            batch.append(message(arrived.popleft()))
        return batch

    async def _request(self, limit: int, wait: float) -> None:
        expires = max(wait, 0.001)
        try:
            await self.nc.publish(self.request_subject, orjson.dumps(
                {"batch": limit, "expires": int(expires * 1e9)}), reply=self.inbox)
        except _CONNECTION_ERRORS as exc:
            raise BrokerUnavailableError(f"{self.broker.label}: fetch: {type(exc).__name__}: {exc}") from exc
        self.due = limit
        self.due_until = time.monotonic() + expires + self.broker.cfg.operation_timeout

    async def close(self) -> None:
        self.broker.subscriptions.discard(self)
        if self.sub is not None:
            await self.sub.unsubscribe()


SPEC = ModuleSpec(
    type="broker.nats",
    kind="broker",
    config_model=NatsBrokerConfig,
    factory=NatsBroker,
    check_topic=NatsBroker.check_topic,
    summary="NATS JetStream: one stream, durable pull consumers per group, explicit acks, NAK with delay, dead "
            "letters to <topic>.dlq.",
)


def subject_covers(subject: str, topic: str) -> bool:
    """Whether every subject `topic` matches (a pattern: `*` one token, `>` the rest) is one `subject` matches."""
    held, wanted = subject.split("."), topic.split(".")
    for i, token in enumerate(held):
        if token == ">":
            return len(wanted) > i
        if i >= len(wanted) or wanted[i] == ">":
            return False
        if token != "*" and token != wanted[i]:
            return False
    return len(wanted) == len(held)
