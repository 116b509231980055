"""Conformance fixture of `broker.memory`: in-process, no server."""

from __future__ import annotations

from tests.modules.broker.conformance import BrokerHarness


def harness() -> BrokerHarness:
    return BrokerHarness(type="broker.memory", config=lambda ns: {"capacity": 1000}, redelivery_wait=1.0)
