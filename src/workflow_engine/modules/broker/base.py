"""The one broker interface: every broker module (memory, nats, redis, rabbitmq, mqtt) is a `Broker` subclass.

What callers get (the `message` trigger, the `publish` step, the broker-backed event bus, tests):

- `await broker.publish(topic, body, headers=None, key=None)` -> message id. `body` is any JSON value (or
  bytes, sent as they are). While the broker is unreachable it retries with capped backoff for
  `publish_timeout`, then raises `BrokerUnavailableError`; it never reports success for a message the broker
  did not accept (NATS: JetStream ack; Redis: XADD reply; RabbitMQ: publisher confirm; MQTT: PUBACK).
- `async for message in broker.consume(topic, group, max_in_flight)`: messages of `topic` (the broker's
  wildcard syntax, where it has one) for consumer group `group`: consumers sharing a group share the work,
  each message goes to one of them. At most `max_in_flight` delivered messages are unsettled at once: the base
  stops fetching until one is settled, which is how back-pressure reaches the broker (nothing is buffered
  without bound). Connection loss inside the loop is handled here: state `retrying`, capped backoff, resubscribe;
  the iterator does not end until the caller stops it. Leaving the loop (break, cancel) closes the consumer;
  messages it had not settled are delivered again (see "redelivery" below). A graceful end: pass `stop` (an
  asyncio.Event) and set it: the loop fetches no more, waits until every message it delivered is settled, then
  closes the consumer and ends (a deploy does not leave finished work to be redelivered).
- Each `Message` has `id` (stable across redeliveries), `topic` (the concrete topic), `body` (JSON, else
  text), `headers`, `key`, `delivery_count` (1 on the first delivery; also `attempt`) and is settled exactly
  once: `ack()`; `nack(delay)` (deliver again after `delay` seconds where the broker can wait);
  `dead_letter(error)` (to the dead-letter destination with the error attached, then acked). There is no
  "drop": a message leaves its group only through `ack` or `dead_letter`.
- `await broker.backlog(topic, group)` -> messages the group has not acknowledged (not yet delivered plus
  delivered and unacked), or None where the broker cannot tell. The base also polls it for every open consumer
  every `backlog_interval` into `broker_backlog{broker, topic}`.

Ack semantics (the engine's, documented in docs/BROKERS.md): the `message` trigger acks a message only after
its execution finished and that end is recorded in the store. Admission records the execution (idempotency key
`<broker module>:<message id>`) before it runs, so a redelivery never starts a second execution: it finds the
first one and waits for its outcome. A failed execution is nacked with backoff (redelivery runs it again from
its failed step) until `on_message_error.max_deliveries`, then dead-lettered with its error. Acking right after
admission would be durable too, but the broker would then forget a message whose execution may still fail, and
retries and dead-lettering would need a second mechanism beside the broker's own delivery count and backlog.

What the base does (subclasses do not repeat it): reconnect supervision (a watch task pings every
`health_interval`; any failure, or an operation raising `BrokerUnavailableError`, reports state `retrying` with
the reason to `/readyz` and retries `_reconnect()` with capped, jittered backoff until it works, then reports
`ready`), publish retries, the consume loop with its in-flight bound and resubscription, settle-once checks,
skipping dead letters on wildcard consumers (a topic ending in `.dlq` is only delivered to patterns that end in
`.dlq` themselves; others ack it), operation timeouts, and all metrics:
`broker_messages_total{broker=<module name>, topic, direction="out", status=success|error}` per publish;
`broker_messages_total{broker, topic=<the consumer's pattern>, direction="in", status=received|acked|nacked|
dead_lettered|error}` per delivery and settlement (error: settling failed; the broker will deliver it again);
`broker_backlog{broker, topic=<pattern>}`; `module_operations_total{module="broker", name=<module name>,
operation=connect|publish|fetch|ack|nack|dead_letter|backlog, status=success|error|timeout}` with durations.
A subclass that needs another metric writes it through `self.metrics` (never a registry of its own).

What a subclass implements (translate library errors at the boundary: connection problems raise
`BrokerUnavailableError`, anything else `BrokerError`, with the module named in the message):
- `_connect()` open the client and declare what the config says (stream, consumer defaults, ...); it is the
  module's `start`, retried by the engine while it fails. `_disconnect()` close it (best effort).
- `_ping()` a cheap round trip; `_reconnect()` (default `_ping`) brings a lost connection back where the client
  does not reconnect by itself.
- `_publish(topic, payload, headers, key, message_id)` publish bytes and return once the broker has them.
  Carry `message_id` and `key` natively or with `message.wire_headers` (reserved `x-message-id`/`x-message-key`).
- `_subscribe(topic, group, max_in_flight)` -> a `Subscription` whose `fetch(limit, wait)` returns up to `limit`
  `Message`s (waiting at most about `wait` seconds; an empty list is fine) with `delivery_count` filled in, and
  whose `close()` releases the consumer without settling anything.
- `_ack(message)`, `_nack(message, delay)`; optionally `_dead_letter(message, error)` (the default publishes
  the payload to `<topic>.dlq` with `message.dead_letter_headers` and then calls `_ack`: the dead letter exists
  before the original is gone), `_touch(message)` with `touch_interval` (an execution still working on it:
  NATS `in_progress`, Redis re-claim resets idle time), `_backlog(topic, group)`, `check_topic(topic)`.

Redelivery and delivery counts per broker (the conformance suite checks each):
- memory: in-process, bounded; a closed consumer's unsettled messages return at once; counts kept in memory.
- nats: JetStream durable pull consumer, explicit ack, `ack_wait`; count = `num_delivered` metadata; `nack(delay)`
  is a NAK with delay; dead letters are published to `<topic>.dlq` (in the stream) and the original TERMed.
- redis: Streams consumer group; an unacked entry is reclaimed with XAUTOCLAIM after `claim_idle`; count =
  XPENDING's times-delivered; `nack(delay)` re-claims the entry after `delay`; dead letters go to the stream
  `<topic>.dlq` (XADD), then XACK.
- rabbitmq / mqtt (other modules): classic queues and MQTT have no delivery count to read back: they count
  with the `x-delivery-count` header by republishing a nacked message with the count raised and acking the
  original (a crash between the two gives a duplicate, never a loss; duplicates are absorbed by the idempotency
  key). RabbitMQ may use a dead-letter exchange; MQTT publishes `<topic>.dlq`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from workflow_engine.errors import BrokerError, BrokerUnavailableError
from workflow_engine.ids import uuid7
from workflow_engine.modules.base import Module, ModuleContext, ModuleState
from workflow_engine.modules.broker.config import BrokerConfig
from workflow_engine.modules.broker.flow import Backoff, InFlight
from workflow_engine.modules.broker.message import (
    DLQ_SUFFIX,
    Message,
    Settlement,
    dead_letter_headers,
    encode_body,
)
from workflow_engine.modules.eventbus.memory import validate_pattern

KIND = "broker"
__all__ = ["KIND", "Broker", "BrokerConfig", "Message", "Subscription"]
_OPERATIONS = {Settlement.ACKED: "ack", Settlement.NACKED: "nack", Settlement.DEAD_LETTERED: "dead_letter"}


class Subscription(abc.ABC):
    """An open consumer for one topic pattern and group (the subclass side of `Broker.consume`)."""

    @abc.abstractmethod
    async def fetch(self, limit: int, wait: float) -> list[Message]:
        """Up to `limit` delivered messages, waiting at most about `wait` seconds for the first."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the consumer; unsettled messages are left to the broker's redelivery."""


class Broker(Module, abc.ABC):
    """Base of broker modules: publish, consume with bounded in-flight messages, reconnect, metrics."""

    kind = KIND
    type_name: ClassVar[str] = "broker"
    # Per topic, one publisher, one consumer with max_in_flight 1, no failures: delivered in publish order.
    ordered: ClassVar[bool] = True
    # Consumers in other processes share groups (false only for the in-process memory broker).
    shared_across_processes: ClassVar[bool] = True
    # Seconds between `_touch` calls while a message is being worked on (None: not needed).
    touch_interval: float | None = None
    # `_ack` only hands the ack to the client's outbound buffer (NATS): no round trip, so no deadline to keep.
    acks_buffered: ClassVar[bool] = False

    def __init__(self, name: str, config: BrokerConfig, ctx: ModuleContext) -> None:
        super().__init__(name, ctx)
        self.config = config
        self.metrics = ctx.metrics
        self.available = False
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._consumers: dict[tuple[str, str], int] = {}
        self._counters: dict[tuple[str, str, str], Any] = {}

    # -- subclass hooks --------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def _connect(self) -> None:
        """Open the client and declare what the config needs; raise to be retried."""

    @abc.abstractmethod
    async def _disconnect(self) -> None:
        """Close the client (best effort)."""

    @abc.abstractmethod
    async def _ping(self) -> None:
        """One cheap round trip; raise when the broker is unreachable."""

    async def _reconnect(self) -> None:
        """Bring a lost connection back (default: the client reconnects itself; prove it with a ping)."""
        await self._ping()

    @abc.abstractmethod
    async def _publish(self, topic: str, payload: bytes, headers: dict[str, str], key: str | None,
                       message_id: str) -> None:
        """Publish; return once the broker has the message."""

    @abc.abstractmethod
    async def _subscribe(self, topic: str, group: str, max_in_flight: int) -> Subscription:
        """Open a consumer for `topic` in `group`."""

    @abc.abstractmethod
    async def _ack(self, message: Message) -> None: ...

    @abc.abstractmethod
    async def _nack(self, message: Message, delay: float) -> None: ...

    async def _dead_letter(self, message: Message, error: Mapping[str, Any]) -> None:
        """Default: publish to `<topic>.dlq` with the error in headers, then ack the original."""
        await self._publish(message.topic + DLQ_SUFFIX, message.payload, dead_letter_headers(message, error),
                            message.key, uuid7())
        await self._ack(message)

    async def _touch(self, message: Message) -> None:
        """Tell the broker the message is still being worked on (see `touch_interval`)."""

    async def _backlog(self, topic: str, group: str) -> int | None:
        """Messages of `topic` the group has not acknowledged, or None when the broker cannot tell."""
        return None

    @classmethod
    def check_topic(cls, topic: str, *, pattern: bool, config: Any = None) -> str | None:
        """Why `topic` is not usable here (a pattern when `pattern`), or None. `config`: the module's config (a
        model, or the raw mapping of a config being validated), for brokers whose topics depend on it."""
        problem = validate_pattern(topic)
        if problem is None and not pattern and ("*" in topic.split(".") or topic.endswith(">")):
            problem = f"cannot publish to a wildcard topic {topic!r}"
        return problem

    def keep_for(self, topic: str, group: str) -> None:
        """Keep the messages of `topic` for consumer group `group` from the start, before its first consumer
        subscribes (the engine's own consumers: the broker-backed event bus). Brokers whose topics keep
        messages by themselves (NATS streams, Redis streams, memory) have nothing to do; RabbitMQ and MQTT
        declare the group at connect, like the groups of their `groups` setting."""

    async def keep(self, topic: str, group: str) -> None:
        """`keep_for`, and on a broker already connected declare the group now (a config apply adding an
        `event`-triggered workflow: its events are kept from before its consumer starts). A declaration that
        fails is logged; the group is declared again at the next connect."""
        self.keep_for(topic, group)
        if not self.available:  # not connected yet, or reconnecting: the connect declares it
            return
        try:
            await self._declare_kept(topic, group)
        except Exception as exc:  # supervision boundary: the next connect declares it
            reraise_if_cancelled(exc)
            self.ctx.log.warning("consumer group not declared yet; declared at the next connect", topic=topic,
                                 group=group, error=_reason(exc))

    async def _declare_kept(self, topic: str, group: str) -> None:
        """Declare a kept group on the live connection (RabbitMQ queue, MQTT session); nothing by default."""

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (the engine retries while this fails), then watch the connection and the backlogs."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.operation_timeout * 2):
                await self._connect()
        except (Exception, TimeoutError) as exc:
            self._operation("connect", "error", started)
            await self._disconnect()
            raise BrokerUnavailableError(f"{self.label}: cannot connect: {_reason(exc)}") from exc
        self._operation("connect", "success", started)
        self.available, self.last_error = True, None
        self._tasks = [self.ctx.spawn(self._watch(), "watch"), self.ctx.spawn(self._poll_backlogs(), "backlog")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        self.available = False
        await self._disconnect()

    def describe(self) -> dict[str, Any]:
        return {"broker": self.type_name, "available": self.available, "consumers": len(self._consumers)}

    @property
    def label(self) -> str:
        return f"module '{self.name}' ({self.type_name})"

    def lost(self, exc: BaseException | str) -> None:
        """The connection is gone: `retrying` in /readyz; the watch task reconnects. Subclasses may call it
        from their client's disconnect callback."""
        self._mark_lost(exc)
        self._wake.set()

    def _mark_lost(self, exc: BaseException | str) -> None:
        reason = exc if isinstance(exc, str) else _reason(exc)
        self.last_error = reason
        if self.available:
            self.available = False
            self.ctx.log.warning("broker connection lost, reconnecting", error=reason)
        self.report_state(ModuleState.RETRYING, reason)

    def restored(self) -> None:
        """The connection works again: `ready` in /readyz."""
        if not self.available:
            self.available, self.last_error = True, None
            self.ctx.log.info("broker connection restored")
            self.report_state(ModuleState.READY, None)

    async def _watch(self) -> None:
        """Ping while connected; while not, try `_reconnect` with capped backoff. `lost()` (and a subclass's
        reconnected callback) set `_wake` to check at once."""
        backoff = Backoff(self.config.reconnect_initial, self.config.reconnect_max)
        while True:
            delay = self.config.health_interval if self.available else backoff.next()
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                async with asyncio.timeout(self.config.operation_timeout):
                    await (self._ping() if self.available else self._reconnect())
            except (Exception, TimeoutError) as exc:  # supervision boundary: an outage is a state, not a crash
                reraise_if_cancelled(exc)
                self._mark_lost(exc)
                await asyncio.sleep(0)  # never spin without yielding, whatever the hooks do
                continue
            backoff.reset()
            self.restored()

    # -- publishing ------------------------------------------------------------------------------------------

    async def publish(self, topic: str, body: Any, headers: Mapping[str, str] | None = None,
                      key: str | None = None, *, message_id: str | None = None) -> str:
        """Publish `body` to `topic`; returns the message id once the broker has it (retries while down)."""
        problem = self.check_topic(topic, pattern=False, config=self.config)
        if problem:
            raise BrokerError(f"{self.label}: {problem}", code="invalid_topic")
        payload = encode_body(body)
        message_id = message_id or uuid7()
        hdrs = {str(k): str(v) for k, v in (headers or {}).items()}
        deadline = time.monotonic() + self.config.publish_timeout
        backoff = Backoff(self.config.reconnect_initial, self.config.reconnect_max)
        while True:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self.config.operation_timeout):
                    await self._publish(topic, payload, hdrs, key, message_id)
            except (BrokerUnavailableError, TimeoutError) as exc:
                reraise_if_cancelled(exc)
                self._operation("publish", "timeout" if isinstance(exc, TimeoutError) else "error", started)
                self.lost(exc)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._count(topic, "out", "error")
                    raise BrokerUnavailableError(
                        f"{self.label}: publish to '{topic}' failed for {self.config.publish_timeout:g}s: "
                        f"{_reason(exc)}") from exc
                await asyncio.sleep(min(backoff.next(), remaining))
                continue
            except Exception:
                self._operation("publish", "error", started)
                self._count(topic, "out", "error")
                raise
            self._operation("publish", "success", started)
            self._count(topic, "out", "success")
            return message_id

    # -- consuming -------------------------------------------------------------------------------------------

    async def consume(self, topic: str, group: str, max_in_flight: int = 64,
                      stop: asyncio.Event | None = None) -> AsyncIterator[Message]:
        """Messages of `topic` for `group`, at most `max_in_flight` unsettled; runs until the caller stops, or
        until `stop` is set and every delivered message is settled."""
        problem = self.check_topic(topic, pattern=True, config=self.config)
        if problem:
            raise BrokerError(f"{self.label}: {problem}", code="invalid_topic")
        flow = InFlight(max_in_flight)
        backoff = Backoff(self.config.reconnect_initial, self.config.reconnect_max)
        sub: Subscription | None = None
        wants_dlq = topic.endswith(DLQ_SUFFIX)
        settle = self._settler(topic, flow)
        self._consumers[(topic, group)] = self._consumers.get((topic, group), 0) + 1
        try:
            while not (stop is not None and stop.is_set()):
                await _first(flow.room, stop)
                if stop is not None and stop.is_set():
                    break
                try:
                    if sub is None:
                        sub = await self._open(topic, group, max_in_flight)
                    batch = await self._fetch(sub, flow.limit - flow.count)
                except (Exception, TimeoutError) as exc:  # supervision boundary: resubscribe after backoff
                    reraise_if_cancelled(exc)
                    self._consume_failed(topic, exc)
                    if sub is not None:
                        await _close_quietly(sub)
                        sub = None
                    await asyncio.sleep(backoff.next())
                    continue
                reraise_if_cancelled(None)  # a client may also return normally from a cancelled read
                backoff.reset()
                if batch:
                    self._count(topic, "in", "received", len(batch))
                for message in batch:
                    flow.take()
                    message.bind(settle)
                    if message.topic.endswith(DLQ_SUFFIX) and not wants_dlq:
                        await self._settle_quietly(message)
                        continue
                    yield message
            # Stopping: the messages given out are still being worked on; they can only be settled on an open
            # consumer (RabbitMQ acks on its channel), so it closes once they are.
            await flow.empty.wait()
        finally:
            self._release_consumer(topic, group)
            if sub is not None:
                await _close_quietly(sub)

    async def _open(self, topic: str, group: str, max_in_flight: int) -> Subscription:
        async with asyncio.timeout(self.config.operation_timeout):
            return await self._subscribe(topic, group, max_in_flight)

    async def _fetch(self, sub: Subscription, limit: int) -> list[Message]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.fetch_wait + self.config.operation_timeout):
                batch = await sub.fetch(limit, self.config.fetch_wait)
        except TimeoutError:
            self._operation("fetch", "timeout", started)
            raise
        except Exception:
            self._operation("fetch", "error", started)
            raise
        if batch:  # empty polls are not operations worth a sample each
            self._operation("fetch", "success", started)
        return batch

    def _consume_failed(self, topic: str, exc: BaseException) -> None:
        if isinstance(exc, BrokerUnavailableError | TimeoutError | ConnectionError):
            self.lost(exc)
        else:
            self.ctx.log.error("broker consumer failed, resubscribing", topic=topic, error=_reason(exc))

    def _release_consumer(self, topic: str, group: str) -> None:
        left = self._consumers.get((topic, group), 1) - 1
        if left > 0:
            self._consumers[(topic, group)] = left
            return
        self._consumers.pop((topic, group), None)
        if not any(t == topic for t, _ in self._consumers):
            with contextlib.suppress(KeyError):
                self.metrics.broker_backlog.remove(self.name, topic)

    def _settler(self, pattern: str, flow: InFlight) -> Any:
        buffered = self.acks_buffered
        # The children of the common outcome, resolved once per consumer (a label lookup per ack is not free).
        metrics = self.metrics
        acks = metrics.module_operations.labels(KIND, self.name, "ack", "success")
        ack_seconds = metrics.module_operation_duration.labels(KIND, self.name, "ack")
        acked = metrics.broker_messages.labels(self.name, pattern, "in", "acked")

        async def settle(message: Message, how: Settlement, delay: float, error: Mapping[str, Any] | None) -> None:
            operation = _OPERATIONS[how]
            started = time.perf_counter()
            try:
                if how is Settlement.ACKED and buffered:
                    await self._ack(message)
                else:
                    async with asyncio.timeout(self.config.operation_timeout):
                        if how is Settlement.ACKED:
                            await self._ack(message)
                        elif how is Settlement.NACKED:
                            await self._nack(message, delay)
                        else:
                            await self._dead_letter(message, error or {})
            except (Exception, TimeoutError) as exc:
                self._operation(operation, "timeout" if isinstance(exc, TimeoutError) else "error", started)
                self._count(pattern, "in", "error")
                if isinstance(exc, BrokerUnavailableError | TimeoutError):
                    self.lost(exc)
                raise BrokerError(f"{self.label}: {operation} of message {message.id} failed (it will be "
                                  f"delivered again): {_reason(exc)}") from exc
            finally:
                flow.give()
            if how is Settlement.ACKED:
                acks.inc()
                ack_seconds.observe(time.perf_counter() - started)
                acked.inc()
                return
            self._operation(operation, "success", started)
            self._count(pattern, "in", how.value)
        return settle

    async def _settle_quietly(self, message: Message) -> None:
        try:
            await message.ack()
        except BrokerError as exc:
            self.ctx.log.warning("could not ack a dead letter skipped by a wildcard consumer", error=exc)

    async def touch(self, message: Message) -> None:
        """Keep an unsettled message from being redelivered while it is still being worked on."""
        async with asyncio.timeout(self.config.operation_timeout):
            await self._touch(message)

    # -- backlog ---------------------------------------------------------------------------------------------

    async def backlog(self, topic: str, group: str) -> int | None:
        """Messages of `topic` that `group` has not acknowledged yet, or None where the broker cannot tell."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.operation_timeout):
                count = await self._backlog(topic, group)
        except (Exception, TimeoutError):
            self._operation("backlog", "error", started)
            raise
        self._operation("backlog", "success", started)
        return count

    async def _poll_backlogs(self) -> None:
        while True:
            await asyncio.sleep(self.config.backlog_interval)
            totals: dict[str, int] = {}
            for topic, group in list(self._consumers):
                try:
                    count = await self.backlog(topic, group)
                except (Exception, TimeoutError) as exc:  # supervision boundary: a gauge is not worth a crash
                    reraise_if_cancelled(exc)
                    self.ctx.log.debug("backlog not read", topic=topic, error=_reason(exc))
                    continue
                if count is not None:
                    totals[topic] = totals.get(topic, 0) + count
            for topic, count in totals.items():
                self.metrics.broker_backlog.labels(self.name, topic).set(count)

    # -- metrics ---------------------------------------------------------------------------------------------

    def _count(self, topic: str, direction: str, status: str, amount: int = 1) -> None:
        child = self._counters.get((topic, direction, status))
        if child is None:
            if len(self._counters) > 10_000:  # templated topics are open-ended; keep the cache bounded
                self._counters.clear()
            child = self._counters[(topic, direction, status)] = self.metrics.broker_messages.labels(
                self.name, topic, direction, status)
        child.inc(amount)

    def _operation(self, operation: str, status: str, started: float) -> None:
        self.metrics.module_operation(KIND, self.name, operation, status, time.perf_counter() - started)


async def _first(event: asyncio.Event, other: asyncio.Event | None) -> None:
    """Wait until `event` or `other` is set."""
    if event.is_set() or other is None:
        await event.wait()
        return
    if other.is_set():
        return
    waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(other.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def reraise_if_cancelled(exc: BaseException | None = None) -> None:
    """Re-raise a cancellation a client library swallowed (redis-py's blocking read can turn it into an error, or
    into an ordinary return): a loop that retries or fetches again would otherwise never end."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError("cancelled while the broker client was busy") from exc


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _close_quietly(sub: Subscription) -> None:
    with contextlib.suppress(Exception):  # the consumer is being replaced; its close is best effort
        await sub.close()
