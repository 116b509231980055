"""Delays between attempts of a retried step."""

from __future__ import annotations

import random

from workflow_engine.config.models import RetryConfig


def retry_delay(policy: RetryConfig, attempt: int, rand: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based)."""
    base = policy.initial if policy.backoff == "fixed" else policy.initial * (2 ** (attempt - 1))
    delay = min(base, policy.max)
    if policy.jitter:
        spread = delay * policy.jitter
        delay += (rand or random).uniform(-spread, spread)
    return max(0.0, delay)
