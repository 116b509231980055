"""A consumed broker message, settled exactly once (ack, nack or dead-letter), and the wire conventions."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from workflow_engine.errors import BrokerError

DLQ_SUFFIX = ".dlq"
# Reserved headers: how brokers without native fields carry the message id and key (they never reach the
# workflow's `input.headers`), and what a dead letter carries about its failure.
ID_HEADER = "x-message-id"
KEY_HEADER = "x-message-key"
ERROR_HEADER = "x-error"
ORIGINAL_TOPIC_HEADER = "x-original-topic"
ORIGINAL_ID_HEADER = "x-original-id"
DELIVERIES_HEADER = "x-delivery-count"
RESERVED_HEADERS = frozenset({ID_HEADER, KEY_HEADER})


class Settlement(enum.StrEnum):
    """How a delivered message left the consumer; also the `status` of `broker_messages_total{direction="in"}`."""

    ACKED = "acked"
    NACKED = "nacked"
    DEAD_LETTERED = "dead_lettered"


def encode_body(body: Any) -> bytes:
    """The wire form of a body: bytes as they are, anything else as JSON."""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    try:
        return orjson.dumps(body)
    except TypeError as exc:
        raise BrokerError(f"message body is not JSON-serialisable: {exc}", code="invalid_body") from exc


def decode_body(payload: bytes) -> Any:
    """A body as workflows see it: parsed JSON, or UTF-8 text when the payload is not JSON."""
    if not payload:
        return None
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload.decode("utf-8", errors="replace")


def wire_headers(headers: Mapping[str, str], key: str | None, message_id: str) -> dict[str, str]:
    """User headers plus the reserved id and key headers, for brokers that carry them as headers."""
    out = {str(k): str(v) for k, v in headers.items() if k not in RESERVED_HEADERS}
    out[ID_HEADER] = message_id
    if key is not None:
        out[KEY_HEADER] = key
    return out


def delivery_count(raw: str | None) -> int:
    """The delivery count a retry copy carries (`x-delivery-count`); a missing or unreadable one (another
    publisher's header) counts as the first delivery instead of failing the consumer."""
    try:
        return max(1, int(raw or 1))
    except ValueError:
        return 1


def split_headers(raw: Mapping[str, str]) -> tuple[dict[str, str], str | None, str | None]:
    """(user headers, key, message id) from headers written by `wire_headers`."""
    headers = {k: v for k, v in raw.items() if k not in RESERVED_HEADERS}
    return headers, raw.get(KEY_HEADER), raw.get(ID_HEADER)


def dead_letter_headers(message: Message, error: Mapping[str, Any]) -> dict[str, str]:
    """The headers of a dead letter: the original's, plus its error (JSON), topic, id and deliveries."""
    return {
        **message.headers,
        ERROR_HEADER: orjson.dumps(dict(error)).decode(),
        ORIGINAL_TOPIC_HEADER: message.topic,
        ORIGINAL_ID_HEADER: message.id,
        DELIVERIES_HEADER: str(message.delivery_count),
    }


Settle = Callable[["Message", Settlement, float, "Mapping[str, Any] | None"], Awaitable[None]]


@dataclass(eq=False)
class Message:
    """One delivery of a message to a consumer group.

    `id` is stable across redeliveries (the id the publisher gave it, else the broker's own); `delivery_count`
    is 1 on the first delivery and grows with each redelivery. Settle it exactly once: `ack()` (done),
    `nack(delay)` (deliver again, after `delay` seconds where the broker can wait) or `dead_letter(error)` (move
    it to the dead-letter destination with the error attached). A message is never dropped: it leaves the group
    by `ack` or `dead_letter` only; an unsettled one is delivered again when its consumer goes away.
    """

    id: str
    topic: str
    payload: bytes
    headers: dict[str, str]
    key: str | None
    delivery_count: int
    # The broker implementation's handle (a nats Msg, a Redis entry id, ...); opaque to everyone else.
    native: Any = None
    settled: Settlement | None = field(default=None, init=False)
    _settle: Settle | None = field(default=None, init=False, repr=False)
    _body: Any = field(default=None, init=False, repr=False)
    _decoded: bool = field(default=False, init=False, repr=False)

    @property
    def body(self) -> Any:
        """The payload decoded: JSON, else text."""
        if not self._decoded:
            self._body, self._decoded = decode_body(self.payload), True
        return self._body

    @property
    def attempt(self) -> int:
        """Same as `delivery_count`."""
        return self.delivery_count

    def bind(self, settle: Settle) -> None:
        """Attach the broker's settle function (done by `Broker.consume` before the message is handed out)."""
        self._settle = settle

    async def ack(self) -> None:
        """Done: the broker forgets the message for this group."""
        await self._finish(Settlement.ACKED, 0.0, None)

    async def nack(self, delay: float = 0.0) -> None:
        """Not done: deliver it again (to any consumer of the group), after `delay` seconds where possible."""
        await self._finish(Settlement.NACKED, max(0.0, delay), None)

    async def dead_letter(self, error: Mapping[str, Any]) -> None:
        """Give up: move it to the dead-letter destination with `error` attached (then it is acked)."""
        await self._finish(Settlement.DEAD_LETTERED, 0.0, error)

    async def _finish(self, how: Settlement, delay: float, error: Mapping[str, Any] | None) -> None:
        if self.settled is not None:
            raise BrokerError(f"message {self.id} on '{self.topic}' was already {self.settled.value}",
                              code="already_settled")
        if self._settle is None:
            raise BrokerError(f"message {self.id} on '{self.topic}' was not delivered by a broker consumer")
        self.settled = how
        await self._settle(self, how, delay, error)

    def to_input(self) -> dict[str, Any]:
        """The `message` trigger's payload: `input.id`, `topic`, `headers`, `body`, `key`, `delivery_count`."""
        return {"id": self.id, "topic": self.topic, "headers": self.headers, "body": self.body, "key": self.key,
                "delivery_count": self.delivery_count}
