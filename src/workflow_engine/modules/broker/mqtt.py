"""The `broker.mqtt` module: MQTT 5 through aiomqtt, QoS 1, persistent sessions, shared subscriptions.

Topics are MQTT topics (`/`-separated levels; patterns use `+` for one level and `#` last for the rest). A
consumer group is a shared subscription `$share/<group>/<pattern>`: replicas in the group share its messages.
Each consumer is a persistent session (clean start off, `session_expiry`) with a stable client id
`<client_id>-<group>-<hash of the pattern>`, so a consumer that was killed and comes back with the same config
resumes its session and the server sends it again, with the DUP flag, every message it had not acknowledged.
Acknowledgements are manual: paho's `manual_ack` (enabled on aiomqtt's paho client, which aiomqtt does not
expose) sends the PUBACK only when the engine settles the message; the session's Receive Maximum is the
consumer's `max_in_flight`, so the server stops sending while that many are unacknowledged.

MQTT keeps nothing for a topic without subscribers: a session stores messages only for the subscriptions it
has. Groups listed in `groups` get their sessions and subscriptions at start (the session is then kept while
no consumer runs), and a publish that no subscription matches fails with `unroutable` (MQTT 5 PUBACK reason
`No matching subscribers`) unless `unroutable: drop`.

MQTT has no negative acknowledgement and no delivery count. `nack` republishes the message to the group's own
retry topic `<internal_prefix>/retry/<group>/<topic>` (which only that group subscribes to) with
`x-delivery-count` raised and the topic in `x-retry-topic`, then acknowledges the original (a crash between
the two delivers it twice, never zero times). `nack(delay)` keeps the original unacknowledged for `delay` (it
still counts against Receive Maximum) and then does the same. A delivery with the DUP flag (resent after a
lost connection) counts one more delivery. Dead letters are published to `<topic>.dlq`, after the session of
group `dead_letter_group` on that topic exists (so they wait for an operator), then the original is acked.

`backlog` is None: MQTT has no way to ask the server how many messages a session holds.

What remains weaker than the other brokers (Mosquitto's behaviour): messages a session holds unacknowledged
go back only to that session, when a consumer with the same client id reconnects; a replica that never comes
back leaves them there until `session_expiry`, when the server discards them. Give every replica a stable
`client_id` of its own (the default is the host name) and a session expiry longer than any outage. Mosquitto
also drops QoS 1 messages of a session over `max_queued_messages` while answering PUBACK success: configure it
unlimited; `mqtt_drops.DropWatch` makes such drops visible (an error log and `describe()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import Field

from workflow_engine.config.models import Strict
from workflow_engine.durations import Duration
from workflow_engine.errors import BrokerError, BrokerUnavailableError
from workflow_engine.ids import uuid7
from workflow_engine.modules.base import ModuleContext
from workflow_engine.modules.broker.base import Broker, BrokerConfig, Subscription
from workflow_engine.modules.broker.message import (
    DELIVERIES_HEADER,
    DLQ_SUFFIX,
    Message,
    dead_letter_headers,
    delivery_count,
    split_headers,
    wire_headers,
)
from workflow_engine.modules.broker.mqtt_drops import DropWatch
from workflow_engine.registry.specs import ModuleSpec

RETRY_TOPIC_HEADER = "x-retry-topic"
NO_MATCHING_SUBSCRIBERS = 16
_LEVEL = r"[A-Za-z0-9_\-.]+"
_TOPIC_PATTERN = rf"^(?:{_LEVEL}|\+)(?:/(?:{_LEVEL}|\+))*(?:/#)?$|^#$"
_TOPIC = re.compile(_TOPIC_PATTERN)
_NAME = r"^[A-Za-z0-9_\-.]+$"


class MqttGroupDeclaration(Strict):
    topic: str = Field(pattern=_TOPIC_PATTERN, description="Topic pattern of the group (`+` one level, `#` last "
                       "for the rest).")
    group: str = Field(pattern=_NAME, description="Consumer group (the `message` trigger's `group`).")


class MqttBrokerConfig(BrokerConfig):
    """MQTT 5 (Mosquitto 2 or any server with shared subscriptions)."""

    host: str = Field("127.0.0.1", description="Server host.")
    port: int = Field(1883, ge=1, le=65535, description="Server port.")
    username: str | None = Field(None, description="User name.")
    password: str | None = Field(None, description="Password.")
    client_id: str = Field(default_factory=lambda: f"workflow-engine-{socket.gethostname()}", pattern=_NAME,
                           description="Stable id of this replica; consumer sessions are `<client_id>-<group>-"
                           "<hash>`. Every replica needs its own, the same across its restarts.")
    groups: list[MqttGroupDeclaration] = Field(default_factory=list, description="Consumer groups whose sessions "
                                               "subscribe at start, so messages published before their first "
                                               "consumer runs are kept for it.")
    dead_letter_group: str = Field("dlq", pattern=_NAME, description="Group whose session on `<topic>.dlq` keeps "
                                   "dead letters (created before the first one is published).")
    internal_prefix: str = Field("workflow-engine", pattern=r"^[A-Za-z0-9_\-.]+(?:/[A-Za-z0-9_\-.]+)*$",
                                 description="Topic prefix of the groups' retry topics and of pings.")
    watch_dropped: bool = Field(True, description="Follow Mosquitto's `$SYS/broker/publish/messages/dropped` "
                                "and log an error when the server drops messages (queue limits).")
    unroutable: Literal["error", "drop"] = Field("error", description="A publish that no subscription matches: "
                                                 "`error` fails it, `drop` accepts that nobody listens.")
    session_expiry: Duration = Field(7 * 86400.0, gt=0, description="How long the server keeps a consumer's "
                                     "session (and its messages) while no consumer is connected.")
    keepalive: int = Field(10, ge=1, description="MQTT keepalive in seconds (a dead connection is noticed "
                           "within about 1.5 times this).")


class MqttBroker(Broker):
    """QoS 1 publishing, shared subscriptions in persistent sessions, manual PUBACKs, republished retries."""

    type_name = "broker.mqtt"

    def __init__(self, name: str, config: MqttBrokerConfig, ctx: ModuleContext) -> None:
        super().__init__(name, config, ctx)
        self.cfg = config
        self.publisher: aiomqtt.Client | None = None
        self.drops = DropWatch(ctx.log, f"{config.host}:{config.port}")
        self._pubacks: dict[int, asyncio.Future[int]] = {}
        self._declared: set[str] = set()  # sessions subscribed on the current connection
        self._declaring: dict[str, asyncio.Lock] = {}
        self._groups: dict[str, tuple[str, str]] = {}  # session -> (topic, group) of every group declared
        self._connected_sessions: set[str] = set()  # sessions a consumer of this module is connected to

    # -- connections -----------------------------------------------------------------------------------------

    def _client(self, identifier: str, *, persistent: bool, receive_maximum: int | None = None) -> aiomqtt.Client:
        props = _properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = min(int(self.cfg.session_expiry), 0xFFFFFFFE) if persistent else 0
        if receive_maximum is not None:
            props.ReceiveMaximum = min(receive_maximum, 65535)
        client = aiomqtt.Client(
            self.cfg.host, self.cfg.port, username=self.cfg.username, password=self.cfg.password,
            identifier=identifier, protocol=aiomqtt.ProtocolVersion.V5, clean_start=not persistent,
            keepalive=self.cfg.keepalive, timeout=self.cfg.operation_timeout, properties=props,
        )
        client._client.manual_ack_set(True)  # PUBACK only when the engine settles (aiomqtt does not expose it)
        return client

    async def _enter(self, client: aiomqtt.Client, what: str) -> None:
        try:
            await client.__aenter__()
            # A lost connection is reported where it is noticed (fetch, settle, the watch); the future aiomqtt
            # fails with it is never awaited, and would be logged as "never retrieved" when collected.
            client._disconnected.add_done_callback(_seen)
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailableError(f"{self.label}: {what}: {self.cfg.host}:{self.cfg.port}: {exc}") from exc

    async def _connect(self) -> None:
        client = self._client(f"{self.cfg.client_id}-pub-{uuid7()[-12:]}", persistent=False)
        client._client.on_publish = self._on_puback
        await self._enter(client, "connect")
        self.publisher = client
        paho_client = client._client
        on_disconnect = paho_client.on_disconnect

        def disconnected(*args: Any) -> None:
            if on_disconnect is not None:
                on_disconnect(*args)
            if self.publisher is client:
                self.lost(f"disconnected from {self.cfg.host}:{self.cfg.port}")

        paho_client.on_disconnect = disconnected
        if self.cfg.watch_dropped:
            await self.drops.start(client, self.cfg.operation_timeout)
        # Again after every reconnect: Mosquitto 2.0 restores persistent sessions after a restart but not their
        # shared subscriptions, and a group without them would miss what is published until its consumer returns.
        self._declared.clear()
        for declared in self.cfg.groups:
            self._groups.setdefault(self.session_id(declared.topic, declared.group), (declared.topic, declared.group))
        try:
            async with asyncio.TaskGroup() as declaring:  # different sessions: no reason to wait for each other
                for topic, group in list(self._groups.values()):
                    declaring.create_task(self._declare(topic, group))
        except* BrokerError as group_error:
            raise group_error.exceptions[0] from None

    async def _disconnect(self) -> None:
        client, self.publisher = self.publisher, None
        for future in self._pubacks.values():
            future.cancel()
        self._pubacks.clear()
        if client is not None:
            await _leave(client)

    async def _ping(self) -> None:
        """A QoS 1 publish to `<internal_prefix>/ping` and its PUBACK (no subscriber needed)."""
        await self._send(f"{self.cfg.internal_prefix}/ping", b"", {}, allow_unroutable=True)

    async def _reconnect(self) -> None:
        if self.publisher is None or not self.publisher._client.is_connected():
            await self._disconnect()
            await self._connect()
        await self._ping()

    def session_id(self, topic: str, group: str) -> str:
        return session_id(self.cfg.client_id, topic, group)

    def _filters(self, topic: str, group: str) -> list[str]:
        return [f"$share/{group}/{topic}", f"$share/{group}/{self._retry_topic(group, topic)}"]

    def _retry_topic(self, group: str, topic: str) -> str:
        return f"{self.cfg.internal_prefix}/retry/{group}/{topic}"

    async def _declare(self, topic: str, group: str) -> None:
        """Create the group's persistent session and subscriptions (then leave: the session keeps messages)."""
        session = self.session_id(topic, group)
        # One at a time per session: two connections with one client id would take over from each other.
        async with self._declaring.setdefault(session, asyncio.Lock()):
            if session in self._declared or session in self._connected_sessions:
                return
            client = self._client(session, persistent=True, receive_maximum=1)  # receives nothing it would ack
            await self._enter(client, f"declaring group '{group}' on '{topic}'")
            try:
                await self._subscribe_all(client, topic, group)
            finally:
                await _leave(client)
            self._declared.add(session)
            self._groups[session] = (topic, group)

    async def _subscribe_all(self, client: aiomqtt.Client, topic: str, group: str) -> None:
        for pattern in self._filters(topic, group):
            try:
                granted = await client.subscribe(pattern, qos=1, timeout=self.cfg.operation_timeout)
            except aiomqtt.MqttError as exc:
                raise BrokerUnavailableError(f"{self.label}: subscribe to '{pattern}': {exc}") from exc
            code = granted[0]
            value = code.value if isinstance(code, ReasonCode) else int(code)
            if value >= 0x80:
                raise BrokerError(f"{self.label}: subscribe to '{pattern}' refused: {code}")

    def keep_for(self, topic: str, group: str) -> None:
        self._groups.setdefault(self.session_id(topic, group), (topic, group))

    async def _declare_kept(self, topic: str, group: str) -> None:
        await self._declare(topic, group)

    @classmethod
    def check_topic(cls, topic: str, *, pattern: bool, config: Any = None) -> str | None:
        if not _TOPIC.match(topic) or topic.startswith("$"):
            return (f"invalid topic {topic!r}: use '/'-separated levels of letters, digits, '_', '-' and '.', "
                    "'+' for one level and '#' last for the rest")
        if not pattern and ("+" in topic.split("/") or topic.endswith("#")):
            return f"cannot publish to a wildcard topic {topic!r}"
        return None

    # -- publishing ------------------------------------------------------------------------------------------

    def _on_puback(self, _client: Any, _userdata: Any, mid: int, reason: Any, _properties: Any) -> None:
        future = self._pubacks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reason.value if isinstance(reason, ReasonCode) else int(reason))

    async def _send(self, topic: str, payload: bytes, headers: Mapping[str, str], *,
                    allow_unroutable: bool) -> None:
        client = self.publisher
        if client is None or not client._client.is_connected():
            raise BrokerUnavailableError(f"{self.label}: not connected to {self.cfg.host}:{self.cfg.port}")
        props = _properties(PacketTypes.PUBLISH)
        props.UserProperty = [(str(k), str(v)) for k, v in headers.items()]
        info = client._client.publish(topic, payload, qos=1, properties=props)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise BrokerUnavailableError(f"{self.label}: publish to '{topic}': {paho.error_string(info.rc)}")
        future = self._pubacks.setdefault(info.mid, asyncio.get_running_loop().create_future())
        try:
            reason = await future  # the base bounds the wait with operation_timeout
        finally:
            self._pubacks.pop(info.mid, None)
        if reason == NO_MATCHING_SUBSCRIBERS and not allow_unroutable:
            raise BrokerError(f"{self.label}: publish to '{topic}': no subscription matches it (declare its "
                              "consumer group in `groups`, or set `unroutable: drop`)", code="unroutable")
        if reason >= 0x80:
            refused = ReasonCode(PacketTypes.PUBACK, identifier=reason)
            raise BrokerError(f"{self.label}: publish to '{topic}' refused: {refused}")

    async def _publish(self, topic: str, payload: bytes, headers: dict[str, str], key: str | None,
                       message_id: str) -> None:
        await self._send(topic, payload, wire_headers(headers, key, message_id),
                         allow_unroutable=self.cfg.unroutable == "drop")

    # -- consuming -------------------------------------------------------------------------------------------

    async def _subscribe(self, topic: str, group: str, max_in_flight: int) -> Subscription:
        if not re.match(_NAME, group):
            raise BrokerError(f"{self.label}: invalid group {group!r} (letters, digits, '_', '-', '.')")
        session = self.session_id(topic, group)
        client = self._client(session, persistent=True, receive_maximum=max_in_flight)
        sub = MqttSubscription(self, topic, group, session, client)
        client._client.on_message = sub.deliver  # paho's message keeps the DUP flag aiomqtt's drops
        await self._enter(client, f"consumer of '{topic}'")
        try:
            await self._subscribe_all(client, topic, group)
        except BaseException:
            await _leave(client)
            raise
        self._connected_sessions.add(session)
        self._declared.add(session)
        return sub

    def _message(self, msg: paho.MQTTMessage, sub: MqttSubscription) -> Message:
        props = getattr(msg, "properties", None)
        raw = {str(k): str(v) for k, v in (getattr(props, "UserProperty", None) or [])}
        retry_topic = raw.pop(RETRY_TOPIC_HEADER, None)
        count = delivery_count(raw.pop(DELIVERIES_HEADER, None)) if retry_topic is not None else 1
        if msg.dup:  # sent again after a lost connection: an earlier delivery was not acknowledged
            count += 1
        headers, key, message_id = split_headers(raw)
        # A publisher that sets no id: one of this delivery's own (packet ids are 16 bits and are reused, so
        # `<session>:<mid>` named later messages like earlier ones and the idempotency key dropped them).
        return Message(message_id or f"{sub.session}:{uuid7()}", retry_topic or msg.topic, bytes(msg.payload),
                       headers, key, count, native=(msg.mid, sub))

    # -- settling --------------------------------------------------------------------------------------------

    async def _ack(self, message: Message) -> None:
        mid, sub = message.native
        if sub.closed:  # not an outage of the broker: the session sends it again when it resumes
            raise BrokerError(f"{self.label}: the consumer of {message.id} is closed (it will be delivered again)")
        rc = sub.client._client.ack(mid, 1)
        if rc != paho.MQTT_ERR_SUCCESS:
            raise BrokerUnavailableError(f"{self.label}: PUBACK of {message.id}: {paho.error_string(rc)}")

    async def _nack(self, message: Message, delay: float) -> None:
        if delay < 0.001:
            await self._retry(message)
        else:  # held unacknowledged (a crash returns it to the session), republished when the delay is over
            self.ctx.spawn(self._retry_later(message, delay), f"retry:{message.id}")

    async def _retry_later(self, message: Message, delay: float) -> None:
        await asyncio.sleep(delay)
        deadline = time.monotonic() + self.cfg.publish_timeout
        while True:
            try:
                async with asyncio.timeout(self.cfg.operation_timeout):
                    await self._retry(message)
                return
            except (BrokerError, TimeoutError) as exc:  # the original stays unacked: redelivered on resume
                sub = message.native[1]
                if time.monotonic() > deadline or sub.closed:
                    self.ctx.log.warning("delayed retry not republished; the server will deliver it again",
                                         id=message.id, error=str(exc) or type(exc).__name__)
                    sub.stale = sub.stale or f"delayed retry of {message.id} failed"
                    return
                await asyncio.sleep(self.cfg.reconnect_initial)

    async def _retry(self, message: Message) -> None:
        _, sub = message.native
        if sub.closed:  # the session holds it unacknowledged and sends it again: no copy needed
            raise BrokerError(f"{self.label}: the consumer of {message.id} is closed (it will be delivered again)")
        headers = {**wire_headers(message.headers, message.key, message.id), RETRY_TOPIC_HEADER: message.topic,
                   DELIVERIES_HEADER: str(message.delivery_count + 1)}
        with sub.resume_on_failure(message):
            await self._send(self._retry_topic(sub.group, message.topic), message.payload, headers,
                             allow_unroutable=False)
            await self._ack(message)

    async def _dead_letter(self, message: Message, error: Mapping[str, Any]) -> None:
        topic = message.topic + DLQ_SUFFIX
        with message.native[1].resume_on_failure(message):
            await self._declare(topic, self.cfg.dead_letter_group)
            headers = wire_headers(dead_letter_headers(message, error), message.key, uuid7())
            await self._send(topic, message.payload, headers, allow_unroutable=False)
            await self._ack(message)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "server": f"{self.cfg.host}:{self.cfg.port}", "client_id": self.cfg.client_id,
                "server_dropped": self.drops.dropped}


class MqttSubscription(Subscription):
    """One persistent session subscribed to the group's shared subscription and its retry topic."""

    def __init__(self, broker: MqttBroker, topic: str, group: str, session: str, client: aiomqtt.Client) -> None:
        self.broker, self.topic, self.group, self.session, self.client = broker, topic, group, session, client
        self.delivered: asyncio.Queue[paho.MQTTMessage] = asyncio.Queue()
        self.closed = False
        self.stale: str | None = None  # why the session must be resumed to get a message back

    @contextlib.contextmanager
    def resume_on_failure(self, message: Message) -> Iterator[None]:
        """A settlement that fails leaves the message unacknowledged, and the server sends it again only when
        the session resumes: the next fetch then reconnects the consumer instead of leaving it stuck."""
        try:
            yield
        except Exception as exc:
            self.stale = f"settling {message.id} failed ({type(exc).__name__}: {exc})"
            raise

    def deliver(self, _client: Any, _userdata: Any, msg: paho.MQTTMessage) -> None:
        self.delivered.put_nowait(msg)  # bounded by the session's Receive Maximum

    async def fetch(self, limit: int, wait: float) -> list[Message]:
        if self.client._disconnected.done() or not self.client._client.is_connected():
            raise BrokerUnavailableError(f"{self.broker.label}: consumer session '{self.session}' disconnected")
        if self.stale is not None:  # not an outage: the base resubscribes, the session resumes with the message
            raise BrokerError(f"{self.broker.label}: resuming session '{self.session}': {self.stale}")
        out: list[Message] = []
        try:
            async with asyncio.timeout(wait):
                out.append(self.broker._message(await self.delivered.get(), self))
        except TimeoutError:
            return out
        while len(out) < limit and not self.delivered.empty():
            out.append(self.broker._message(self.delivered.get_nowait(), self))
        return out

    async def close(self) -> None:
        """Disconnect, keeping the session: what it holds unacknowledged is sent again when it resumes."""
        self.closed = True
        self.broker._connected_sessions.discard(self.session)
        # A PUBACK is not answered, and a consumer taking the session over right after the DISCONNECT can reach
        # the server before the PUBACKs do: a QoS 1 round trip on this connection first proves they arrived.
        with contextlib.suppress(Exception):
            await self.client.publish(f"{self.broker.cfg.internal_prefix}/ping", b"", qos=1,
                                      timeout=self.broker.cfg.operation_timeout)
        await _leave(self.client)


def session_id(client_id: str, topic: str, group: str) -> str:
    """The client id of `group`'s consumer session on `topic` in the replica `client_id`."""
    digest = hashlib.sha256(f"{group}\0{topic}".encode()).hexdigest()[:12]
    return f"{client_id}-{group}-{digest}"


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


async def _leave(client: aiomqtt.Client) -> None:
    with contextlib.suppress(Exception):  # leaving a connection that is already gone is fine
        await client.__aexit__(None, None, None)


def _seen(lost: asyncio.Future[None]) -> None:
    """Retrieve a connection's end (its reason was reported where the loss was noticed)."""
    if not lost.cancelled():
        lost.exception()


SPEC = ModuleSpec(
    type="broker.mqtt",
    kind="broker",
    config_model=MqttBrokerConfig,
    factory=MqttBroker,
    check_topic=MqttBroker.check_topic,
    summary="MQTT 5: QoS 1, shared subscriptions $share/<group>/<topic> in persistent sessions, manual PUBACK, "
            "retries republished with x-delivery-count, dead letters to <topic>.dlq.",
)
