"""A circuit breaker: after repeated failures, refuse calls fast until a trial call shows the target is up."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from pydantic import Field

from workflow_engine.config.models import Strict
from workflow_engine.durations import Duration
from workflow_engine.errors import CircuitOpenError
from workflow_engine.observability.metrics import CIRCUIT_STATES, Metrics

T = TypeVar("T")

_log = structlog.get_logger("workflow_engine.circuit_breaker")


class CircuitBreakerConfig(Strict):
    """When a circuit breaker opens and how it recovers."""

    failure_threshold: int = Field(5, ge=1, description="Consecutive failures that open the circuit.")
    reset_timeout: Duration = Field(30.0, description="How long the circuit stays open before trial calls.")
    half_open_max_calls: int = Field(1, ge=1, description="Trial calls allowed at once while half-open.")
    success_threshold: int = Field(1, ge=1, description="Successful trial calls that close the circuit.")


class BreakerState(enum.StrEnum):
    """Circuit breaker states; the gauge value of each is `CIRCUIT_STATES[state]`."""

    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


class CircuitBreaker:
    """Counts failures of calls to one target and refuses calls while the target looks down.

    Callers either use `call(fn)` or bracket their own call with `before_call()` and exactly one of
    `on_success()`, `on_failure()` or `on_cancelled()`. The open → half-open move happens lazily, on the
    first call or `state` read after `reset_timeout`. `module` and `name` label `circuit_breaker_state`
    (the module kind, e.g. `http_client`, and the name of the thing protected).
    """

    def __init__(
        self,
        name: str,
        module: str,
        config: CircuitBreakerConfig,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.module = module
        self.config = config
        self._clock = clock
        self._gauge = metrics.circuit_breaker_state.labels(module, name)
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._successes = 0
        self._trials = 0
        self._opened_at = 0.0
        # Set now so the series exists (at 0) before the first failure.
        self._gauge.set(CIRCUIT_STATES[BreakerState.CLOSED])

    @property
    def state(self) -> BreakerState:
        """The current state, moving open → half-open once `reset_timeout` has passed."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.config.reset_timeout:
            self._move(BreakerState.HALF_OPEN)
        return self._state

    def before_call(self) -> None:
        """Admit a call or raise `CircuitOpenError` without making it."""
        state = self.state
        if state is BreakerState.CLOSED:
            return
        if state is BreakerState.OPEN:
            remaining = self.config.reset_timeout - (self._clock() - self._opened_at)
            raise CircuitOpenError(
                f"{self._label()}: circuit is open after {self._failures} failures; "
                f"next trial in {max(remaining, 0.0):.1f}s"
            )
        if self._trials >= self.config.half_open_max_calls:
            raise CircuitOpenError(f"{self._label()}: circuit is half-open and its trial calls are in flight")
        self._trials += 1

    def on_success(self) -> None:
        """Record a successful call."""
        if self._state is BreakerState.HALF_OPEN:
            self._release_trial()
            self._successes += 1
            if self._successes >= self.config.success_threshold:
                self._move(BreakerState.CLOSED)
        elif self._state is BreakerState.CLOSED:
            self._failures = 0

    def on_failure(self) -> None:
        """Record a failed call; opens the circuit at the threshold, or at once when half-open."""
        if self._state is BreakerState.HALF_OPEN:
            self._release_trial()
            self._open()
        elif self._state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.config.failure_threshold:
                self._open()

    def on_cancelled(self) -> None:
        """Record a call that was abandoned (cancelled): it frees its trial slot and counts as nothing."""
        if self._state is BreakerState.HALF_OPEN:
            self._release_trial()

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn()` through the breaker; any exception it raises counts as a failure."""
        self.before_call()
        try:
            result = await fn()
        except asyncio.CancelledError:
            self.on_cancelled()
            raise
        except Exception:
            self.on_failure()
            raise
        self.on_success()
        return result

    def describe(self) -> dict[str, Any]:
        """State and counters, for `describe()` of the module that owns the breaker."""
        return {"state": str(self.state), "consecutive_failures": self._failures}

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._move(BreakerState.OPEN)

    def _release_trial(self) -> None:
        # A call admitted while closed may finish after the state changed; never go below zero.
        self._trials = max(self._trials - 1, 0)

    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        self._trials = 0
        self._successes = 0
        if new is BreakerState.CLOSED:
            self._failures = 0
        self._gauge.set(CIRCUIT_STATES[new])
        log = _log.warning if new is BreakerState.OPEN else _log.info
        log("circuit_breaker_transition", module=self.module, name=self.name, old=str(old), new=str(new),
            consecutive_failures=self._failures)

    def _label(self) -> str:
        return f"circuit breaker '{self.name}' ({self.module})"
