"""The circuit breaker's state machine, driven by a fake clock."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from workflow_engine.errors import CircuitOpenError
from workflow_engine.observability.metrics import Metrics
from workflow_engine.runtime.circuit_breaker import BreakerState, CircuitBreaker, CircuitBreakerConfig


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(process=False)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(metrics: Metrics, clock: FakeClock, **config: object) -> CircuitBreaker:
    settings = CircuitBreakerConfig.model_validate(config)
    return CircuitBreaker("payments", "http_client", settings, metrics, clock)


def gauge(metrics: Metrics) -> float | None:
    labels = {"module": "http_client", "name": "payments"}
    return metrics.registry.get_sample_value("circuit_breaker_state", labels)


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.before_call()
        breaker.on_failure()


def test_series_exists_at_zero_from_construction(metrics: Metrics, clock: FakeClock) -> None:
    breaker = make(metrics, clock)

    assert breaker.state is BreakerState.CLOSED
    assert gauge(metrics) == 0


def test_opens_after_consecutive_failures_only(metrics: Metrics, clock: FakeClock) -> None:
    breaker = make(metrics, clock, failure_threshold=3)

    fail(breaker, 2)
    breaker.before_call()
    breaker.on_success()
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED

    fail(breaker)
    assert breaker.state is BreakerState.OPEN
    assert gauge(metrics) == 2
    expected = r"circuit breaker 'payments' \(http_client\): circuit is open"
    with pytest.raises(CircuitOpenError, match=expected):
        breaker.before_call()


def test_half_open_after_reset_timeout_then_closes(metrics: Metrics, clock: FakeClock) -> None:
    breaker = make(metrics, clock, failure_threshold=1, reset_timeout="30s")
    fail(breaker)

    clock.now += 29.9
    assert breaker.state is BreakerState.OPEN
    clock.now += 0.1
    assert breaker.state is BreakerState.HALF_OPEN
    assert gauge(metrics) == 1

    breaker.before_call()
    breaker.on_success()
    assert breaker.state is BreakerState.CLOSED
    assert gauge(metrics) == 0


def test_half_open_limits_trial_calls(metrics: Metrics, clock: FakeClock) -> None:
    breaker = make(metrics, clock, failure_threshold=1, reset_timeout=1, half_open_max_calls=2)
    fail(breaker)
    clock.now += 1

    breaker.before_call()
    breaker.before_call()
    with pytest.raises(CircuitOpenError, match="half-open"):
        breaker.before_call()


def test_failed_trial_reopens_for_a_full_timeout(metrics: Metrics, clock: FakeClock) -> None:
    breaker = make(metrics, clock, failure_threshold=1, reset_timeout=10)
    fail(breaker)
    clock.now += 10

    fail(breaker)
    assert breaker.state is BreakerState.OPEN
    clock.now += 9
    assert breaker.state is BreakerState.OPEN
    clock.now += 1
    assert breaker.state is BreakerState.HALF_OPEN


def test_success_threshold_needs_several_trials(metrics: Metrics, clock: FakeClock) -> None:
    breaker = make(metrics, clock, failure_threshold=1, reset_timeout=1, success_threshold=3)
    fail(breaker)
    clock.now += 1

    for _ in range(2):
        breaker.before_call()
        breaker.on_success()
        assert breaker.state is BreakerState.HALF_OPEN
    breaker.before_call()
    breaker.on_success()

    assert breaker.state is BreakerState.CLOSED


def test_cancelled_trial_frees_its_slot(metrics: Metrics, clock: FakeClock) -> None:
    breaker = make(metrics, clock, failure_threshold=1, reset_timeout=1)
    fail(breaker)
    clock.now += 1

    breaker.before_call()
    breaker.on_cancelled()
    breaker.before_call()

    assert breaker.state is BreakerState.HALF_OPEN


async def test_call_wraps_an_async_function(metrics: Metrics, clock: FakeClock) -> None:
    breaker = make(metrics, clock, failure_threshold=1, reset_timeout=1)

    async def succeed() -> str:
        return "ok"

    async def explode() -> str:
        raise ValueError("boom")

    assert await breaker.call(succeed) == "ok"
    with pytest.raises(ValueError, match="boom"):
        await breaker.call(explode)
    with pytest.raises(CircuitOpenError):
        await breaker.call(succeed)


async def test_call_cancelled_during_trial_does_not_count(metrics: Metrics, clock: FakeClock) -> None:
    breaker = make(metrics, clock, failure_threshold=1, reset_timeout=1)
    fail(breaker)
    clock.now += 1

    task = asyncio.create_task(breaker.call(asyncio.Event().wait))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert breaker.state is BreakerState.HALF_OPEN
    breaker.before_call()


def test_gauge_follows_every_transition(metrics: Metrics, clock: FakeClock) -> None:
    breaker = make(metrics, clock, failure_threshold=2, reset_timeout=5)
    seen = [gauge(metrics)]

    fail(breaker, 2)
    seen.append(gauge(metrics))
    clock.now += 5
    breaker.before_call()
    seen.append(gauge(metrics))
    breaker.on_success()
    seen.append(gauge(metrics))

    assert seen == [0, 2, 1, 0]


def test_config_is_validated() -> None:
    with pytest.raises(ValidationError):
        CircuitBreakerConfig(failure_threshold=0)
    with pytest.raises(ValidationError):
        CircuitBreakerConfig.model_validate({"reset_timeout": "soon"})
    assert CircuitBreakerConfig.model_validate({"reset_timeout": "1m"}).reset_timeout == 60
    for name, field in CircuitBreakerConfig.model_fields.items():
        assert field.description, name
