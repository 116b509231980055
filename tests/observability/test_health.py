"""Health: readiness derived from component states and draining; liveness reports the loop lag."""

from __future__ import annotations

import asyncio

from workflow_engine.modules.base import ModuleState
from workflow_engine.observability.health import Health
from workflow_engine.observability.loop_monitor import LoopMonitor
from workflow_engine.observability.metrics import Metrics


def test_a_retrying_component_is_named_in_the_not_ready_body() -> None:
    health = Health()
    health.set_component("web", "http_server", ModuleState.READY)
    health.set_component("db", "database", ModuleState.RETRYING, "connection refused")

    ready, body = health.readiness()

    assert not ready
    assert body == {
        "status": "not_ready",
        "draining": False,
        "components": {
            "db": {"kind": "database", "state": "retrying", "detail": "connection refused"},
            "web": {"kind": "http_server", "state": "ready"},
        },
    }


def test_ready_when_every_component_is_ready() -> None:
    health = Health()
    health.set_component("db", "database", ModuleState.RETRYING, "connection refused")
    health.set_component("db", "database", ModuleState.READY)

    ready, body = health.readiness()

    assert ready
    assert body["status"] == "ready"
    assert body["components"] == {"db": {"kind": "database", "state": "ready"}}


def test_draining_is_not_ready() -> None:
    health = Health()
    health.set_component("db", "database", ModuleState.READY)
    health.set_draining(True)

    ready, body = health.readiness()

    assert not ready
    assert body["status"] == "not_ready"
    assert body["draining"] is True
    assert health.draining


def test_removed_component_no_longer_blocks_readiness() -> None:
    health = Health()
    health.set_component("old", "broker", ModuleState.FAILED, "gone")
    health.remove_component("old")
    health.remove_component("never-added")

    assert health.readiness() == (True, {"status": "ready", "draining": False, "components": {}})


async def test_liveness_reports_the_last_loop_lag() -> None:
    monitor = LoopMonitor(Metrics(process=False), interval=0.01)
    health = Health(monitor)
    assert health.liveness() == {"status": "ok"}

    task = asyncio.create_task(monitor.run())
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.wait({task})

    body = health.liveness()
    assert body["status"] == "ok"
    assert body["event_loop_lag_seconds"] >= 0
