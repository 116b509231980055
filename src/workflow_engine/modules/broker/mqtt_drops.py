"""Messages the MQTT server dropped, read from Mosquitto's `$SYS`: a loss the protocol does not report.

Mosquitto discards QoS 1 messages for a session whose queue is over `max_queued_messages` (default 1000) or
`max_queued_bytes`, and still answers the publisher's PUBACK with success. It counts them in the retained
topic `$SYS/broker/publish/messages/dropped` (for the whole server). `broker.mqtt` subscribes to it on its
publishing connection and logs an error with the increase, so the loss is at least visible; the module's
`describe()` has the total seen since it connected (`server_dropped`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import aiomqtt
import paho.mqtt.client as paho

SYS_DROPPED = "$SYS/broker/publish/messages/dropped"


class DropWatch:
    """Follows the server's dropped-messages counter on one connection; `dropped` sums its increases."""

    def __init__(self, log: Any, server: str) -> None:
        self.log, self.server = log, server
        self.dropped = 0
        self._last: int | None = None

    async def start(self, client: aiomqtt.Client, wait: float) -> None:
        """Read the counter on `client` (a new connection: its first value is the baseline)."""
        self._last = None
        client._client.on_message = self.on_message
        with contextlib.suppress(aiomqtt.MqttError):  # a server without $SYS (or an ACL) only loses the warning
            await client.subscribe(SYS_DROPPED, qos=0, timeout=wait)

    def on_message(self, _client: Any, _userdata: Any, msg: paho.MQTTMessage) -> None:
        if msg.topic != SYS_DROPPED:
            return
        try:
            value = int(msg.payload)
        except ValueError:
            return
        if self._last is not None and value > self._last:
            self.dropped += value - self._last
            self.log.error("the MQTT server dropped messages (over its max_queued_messages/max_queued_bytes; "
                           "they are lost for the sessions over the limit)", server=self.server,
                           dropped=value - self._last, dropped_since_connect=self.dropped)
        self._last = value  # also when it went down: the server restarted and counts from 0
