"""The engine as a whole: built from YAML, started, used, observed through its management server, stopped."""

from __future__ import annotations

import asyncio
import gc

import httpx
import pytest

from tests.factories import app_yaml, config_issues, executions, load_app, running_engine, wait_done
from workflow_engine.engine.engine import GC_YOUNG_THRESHOLD, Engine
from workflow_engine.errors import ConfigError, DrainingError
from workflow_engine.observability.management import ManagementError
from workflow_engine.observability.metrics import Metrics
from workflow_engine.registry.builtins import default_registry
from workflow_engine.runtime.execution import ExecutionStatus

HELLO = app_yaml("""
    hello:
      steps:
        - id: greet
          set: {greeting: "hello {{ input.name }}"}
""")


async def test_start_execution_waits_for_the_result_or_returns_at_once() -> None:
    async with running_engine(HELLO) as engine:
        waited = await engine.start_execution("hello", {"name": "ann"}, wait=True)
        assert waited.finished
        assert waited.output == {"greeting": "hello ann"}
        started = await engine.start_execution("hello", {"name": "bob"})
        assert started.trigger == "manual"
        await wait_done(started)
        assert started.output == {"greeting": "hello bob"}
        assert executions(engine.metrics, "hello", "success") == 2


async def test_a_started_engine_collects_young_garbage_less_often_and_keeps_its_start_out_of_full_passes() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        async with running_engine(HELLO):
            assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
            assert gc.get_freeze_count() > 0
    finally:
        gc.set_threshold(*before)


async def test_templates_see_only_the_allowed_environment_variables() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - set:
                region: "{{ env.REGION }}"
                secret: "{{ env.SECRET }}"
    """, engine="{template_env: [REGION, UNSET]}"), env={"REGION": "eu-west", "SECRET": "hunter2"}) as engine:
        execution = await engine.start_execution("w", wait=True)
    assert execution.output == {"region": "eu-west", "secret": None}


async def test_the_management_server_reports_readiness_and_the_engines_metrics() -> None:
    async with running_engine(HELLO) as engine:
        await engine.start_execution("hello", {"name": "ann"}, wait=True)
        assert engine.management is not None
        async with httpx.AsyncClient(base_url=engine.management.url) as client:
            ready = await client.get("/readyz")
            metrics = await client.get("/metrics")
    assert ready.status_code == 200
    assert 'workflow_executions_total{status="success",workflow_type="hello"} 1.0' in metrics.text
    assert 'active_workflows{workflow_type="hello"} 0.0' in metrics.text


async def test_after_stop_the_engine_refuses_new_executions_and_is_not_ready() -> None:
    async with running_engine(HELLO) as engine:
        pass
    assert engine.health.readiness()[0] is False
    assert engine.health.draining is True
    with pytest.raises(DrainingError):
        await engine.start_execution("hello", {"name": "late"})


async def test_a_template_error_stops_the_engine_from_being_built() -> None:
    registry = default_registry()
    app = load_app(app_yaml("""
        w:
          steps:
            - set: {a: "{{ input.a + }}"}
    """), registry)
    with pytest.raises(ConfigError) as caught:
        Engine(app, registry, metrics=Metrics(process=False), mgmt_address="127.0.0.1:0",
               store_url="sqlite:///:memory:")
    assert "workflows.w.steps[0].set.a" in str(caught.value.issues[0])


def test_every_compile_issue_is_reported_with_its_line() -> None:
    issues = config_issues(app_yaml("""
        a:
          steps:
            - transform: {expression: "[["}
        b:
          steps:
            - validate: {schema: {type: 5}}
    """))
    assert [issue.split(":")[1] for issue in issues] == ["7", "10"]


async def test_an_engine_that_cannot_bind_its_management_port_raises_from_run() -> None:
    registry = default_registry()
    app = load_app(HELLO, registry)
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        engine = Engine(app, registry, metrics=Metrics(process=False), mgmt_address=f"127.0.0.1:{port}",
                        store_url="sqlite:///:memory:")
        with pytest.raises(ManagementError, match=f"cannot listen on '127.0.0.1:{port}'"):
            await asyncio.wait_for(engine.run(), 10)
        assert not engine.started.is_set()
    finally:
        blocker.close()
        await blocker.wait_closed()


async def test_executions_still_running_at_stop_are_cancelled_after_grace() -> None:
    async with running_engine(app_yaml("""
        w:
          durable: false   # durable executions are interrupted and left for the next run instead
          steps:
            - sleep: 60s
    """, engine="{shutdown_grace: 50ms, park_after: 1h}")) as engine:
        execution = await engine.start_execution("w")
    assert execution.status is ExecutionStatus.CANCELLED
    assert executions(engine.metrics, "w", "cancelled") == 1


async def test_a_stop_while_the_store_is_unreachable_at_start_ends_the_run() -> None:
    """It kept retrying the store after SIGTERM (drain logged, /readyz draining) until SIGKILL."""
    registry = default_registry()
    engine = Engine(load_app(app_yaml("""
        w:
          steps: [{set: {a: 1}}]
    """), registry), registry, metrics=Metrics(process=False), mgmt_address="127.0.0.1:0",
                    store_url="postgresql://postgres@127.0.0.1:1/nothing", environ={})
    run = asyncio.create_task(engine.run())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while engine.health.readiness()[1]["components"].get("store", {}).get("state") != "retrying":
        assert loop.time() < deadline, "the store never reported retrying"
        assert not run.done(), run
        await asyncio.sleep(0.05)
    engine.request_stop()
    await asyncio.wait_for(run, 10)  # ends, without an error
    assert not engine.started.is_set()
