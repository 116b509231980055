"""Parking: an execution that waits (durable `sleep`, `wait_for`) leaves memory and waits in the store."""

from __future__ import annotations

from typing import Any


class Parked(BaseException):
    """Raised by a step to park its execution until `wake_at` (Unix seconds) or an event on `topic`.

    A BaseException, like CancelledError, so that retry and `continue_on_error` handling never swallow it.
    """

    def __init__(self, wake_at: float | None, topic: str | None = None, state: dict[str, Any] | None = None) -> None:
        super().__init__(f"parked until {wake_at}" if topic is None else f"parked waiting for {topic}")
        self.wake_at = wake_at
        self.topic = topic
        self.state = state
