"""A real `workflow run` driven until every metric family and selected label value has samples."""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.process import EngineProcess, engine_process, free_port, sample, wait_until
from workflow_engine.registry.builtins import default_registry

LIVE = Path(__file__).with_name("live.yaml")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
COMPONENT = '''
async def execute(ctx, input):
    await ctx.sleep(input.get("sleep", 0))
    return {"version": VERSION}
'''

# metric sample name -> label name -> values seen
Exported = dict[str, dict[str, set[str]]]


def exported(metrics_text: str) -> Exported:
    """Every sample name of a /metrics text with its labels and their values."""
    out: Exported = defaultdict(lambda: defaultdict(set))
    for family in text_string_to_metric_families(metrics_text):
        for series in family.samples:
            labels = out[series.name]
            for name, value in series.labels.items():
                labels[name].add(value)
    return {name: dict(labels) for name, labels in out.items()}


def broker_workload() -> bool:
    """Whether the engine can consume broker messages (the `message` trigger and `broker.redis`), so the live
    workload writes broker_*: messages fed into a Redis stream are consumed, fail and are dead-lettered."""
    registry = default_registry()
    return "message" in registry.triggers and "broker.redis" in registry.modules


def _config(workdir: Path) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(LIVE.read_text())
    if "dynamic.component" in default_registry().modules:
        (workdir / "pricing.py").write_text(COMPONENT.replace("VERSION", "1"))
        config["modules"].append({"name": "pricing", "type": "dynamic.component",
                                  "config": {"source": str(workdir / "pricing.py"), "timeout": "2s"}})
        config["workflows"]["price"] = {
            "trigger": {"http": {"server": "web", "method": "GET", "path": "/price/{sleep}"}},
            "steps": [{"call": {"component": "pricing", "with": {"sleep": "{{ input.params.sleep | float }}"}},
                       "timeout": "100ms"}],
        }
    if broker_workload():
        config["modules"].append({"name": "orders-bus", "type": "broker.redis", "config": {
            "url": REDIS_URL, "prefix": f"{workdir.name}:", "backlog_interval": "200ms"}})
        config["workflows"]["on-order"] = {
            "trigger": {"message": {"broker": "orders-bus", "topic": "orders"}},
            "on_message_error": {"max_deliveries": 1},
            "steps": [{"fail": {"message": "order {{ input.body.n }} rejected"}}],
        }
    return config


def _redis_reachable() -> None:
    """Skip (fail under CI=true) when the Redis the broker workload needs does not answer."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            raise AssertionError(f"Redis at {REDIS_URL} is unreachable: {exc}") from exc
        pytest.skip(f"Redis at {REDIS_URL} is unreachable (the broker workload needs it): {exc}")
    finally:
        client.close()


def _feed_broker(workdir: Path, messages: int) -> None:
    """Put messages on the `orders` stream the way broker.redis publishes them."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        for n in range(messages):
            client.xadd(f"{workdir.name}:orders", {"p": json.dumps({"n": n}), "h": "{}", "i": f"ops-live-{n}"})
    finally:
        client.close()


def _drop_streams(workdir: Path) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(f"{workdir.name}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _drive(engine: EngineProcess, workdir: Path) -> None:
    with httpx.Client(base_url=engine.web, timeout=10) as client:
        for _ in range(3):
            assert client.get("/ok").status_code == 200
        assert client.get("/boom/1").status_code == 500
        assert client.get("/nap").status_code == 200
        assert client.get("/calls-slow").status_code == 500
        assert client.get("/calls-down").status_code == 500
        assert client.get("/no/such/route").status_code == 404
        held = client.post("/held", json={})
        assert held.status_code == 202
        if (workdir / "pricing.py").exists():
            assert client.get("/price/0").status_code == 200
            assert client.get("/price/1").status_code == 500  # the call step's 100ms timeout
            (workdir / "pricing.py").write_text(COMPONENT.replace("VERSION", "2"))
            wait_until(lambda: client.get("/price/0").json().get("version") == 2, timeout=15)
    if broker_workload():
        _feed_broker(workdir, 3)

        def settled() -> bool:
            text = engine.metrics()
            return (sample(text, "broker_messages_total", status="dead_lettered") or 0) >= 3 and (
                sample(text, "broker_backlog") is not None)

        wait_until(settled, timeout=30)
    token = {"Authorization": f"Bearer {engine.env['WORKFLOW_API_TOKEN']}"}
    with httpx.Client(base_url=engine.mgmt, timeout=10, headers=token) as mgmt:
        assert mgmt.get("/api/executions", params={"status": "running", "workflow": "held"}).status_code == 200


def _ready(engine: EngineProcess) -> bool:
    assert engine.proc.poll() is None, f"the engine exited:\n{engine.logs()}"
    try:
        return httpx.get(f"{engine.mgmt}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def live_engine() -> Iterator[tuple[EngineProcess, Exported]]:
    """The engine after the workload, with what its /metrics exports."""
    if broker_workload():
        _redis_reachable()
    with tempfile.TemporaryDirectory(prefix="ops-live-") as tmp:
        workdir = Path(tmp)
        config = workdir / "live.yaml"
        config.write_text(yaml.safe_dump(_config(workdir), sort_keys=False))
        env = {"CLOSED_PORT": str(free_port()), "WORKFLOW_API_TOKEN": "ops-live-token"}
        try:
            with engine_process(config, env=env, wait_ready=False) as engine:
                wait_until(lambda: _ready(engine), timeout=90, interval=0.2)  # starting takes long on a busy machine
                _drive(engine, workdir)
                wait_until(lambda: "event_loop_lag_seconds_count" in engine.metrics())
                yield engine, exported(engine.metrics())
        finally:
            if broker_workload():
                _drop_streams(workdir)
