"""The module, inline: versions, hot reload with draining, refused versions, release, timeouts, concurrency."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path
from typing import Any

import pytest

from tests.factories import wait_until
from tests.modules.dynamic.conftest import ComponentFactory, ops, versions, write_source
from workflow_engine.errors import ComponentLoadError, ComponentUnavailableError, ModuleError, StepTimeoutError
from workflow_engine.modules.base import ModuleContext
from workflow_engine.modules.dynamic.component import DynamicComponent
from workflow_engine.modules.dynamic.config import DynamicComponentConfig
from workflow_engine.modules.dynamic.isolation import InlineRunner
from workflow_engine.observability.metrics import Metrics

VERSIONED = """
EVENTS = None
GATE = None

async def setup(config):
    global EVENTS, GATE
    EVENTS = config["events"]
    GATE = config.get("gate")
    EVENTS.append("setup v{n}")

async def teardown():
    EVENTS.append("teardown v{n}")

async def execute(ctx, input):
    if input.get("block"):
        await GATE.wait()
    return {{"version": {n}}}
"""


def versioned(n: int) -> str:
    return VERSIONED.format(n=n)


async def test_reload_reaches_the_next_call_and_running_calls_finish_on_their_version(
        make_component: ComponentFactory, metrics: Metrics, tmp_path: Path) -> None:
    events: list[str] = []
    gate = asyncio.Event()  # holds the first call on v1 until the test has swapped in v2
    component = await make_component(versioned(1), config={"events": events, "gate": gate})
    assert await component.call({}, "e0") == {"version": 1}
    slow = asyncio.create_task(component.call({"block": True}, "e1"))
    await wait_until(lambda: component.current is not None and component.current.in_flight == 1, "call started")

    write_source(tmp_path / "comp.py", versioned(2))
    await component.reload_file()

    assert await component.call({}, "e2") == {"version": 2}
    assert versions(metrics, "comp") == 2  # v1 is held until its call drains
    assert events == ["setup v1", "setup v2"]
    gate.set()
    assert await slow == {"version": 1}
    await wait_until(lambda: versions(metrics, "comp") == 1, "v1 unloaded")
    assert events == ["setup v1", "setup v2", "teardown v1"]
    assert ops(metrics, "comp", "load", "success") == 1
    assert ops(metrics, "comp", "reload", "success") == 1
    assert ops(metrics, "comp", "unload", "success") == 1
    assert ops(metrics, "comp", "execute", "success") == 3


async def test_unchanged_file_does_not_make_a_new_version(make_component: ComponentFactory, metrics: Metrics) -> None:
    component = await make_component(versioned(1), config={"events": []})
    first = component.current
    assert await component.reload_file() is first
    assert ops(metrics, "comp", "reload", "success") == 0


@pytest.mark.parametrize(("bad", "reason"), [
    ("def execute(ctx, input):\n    return {\n", "syntax error"),
    ("import os\ndef execute(ctx, input):\n    return {}\n", "'os' is not allowed"),
    ("def run(ctx, input):\n    return {}\n", "defines no function `execute"),
    ("def setup(config):\n    raise RuntimeError('no db')\ndef execute(ctx, input):\n    return {}\n", "no db"),
])
async def test_a_refused_version_never_replaces_the_working_one(
        make_component: ComponentFactory, metrics: Metrics, tmp_path: Path, bad: str, reason: str) -> None:
    component = await make_component(versioned(1), config={"events": []})
    write_source(tmp_path / "comp.py", bad)
    with pytest.raises(ComponentLoadError) as info:
        await component.reload_file()
    assert reason in info.value.reason
    assert info.value.file == str(tmp_path / "comp.py")
    assert await component.call({}, "e1") == {"version": 1}
    assert ops(metrics, "comp", "reload", "error") == 1
    assert versions(metrics, "comp") == 1
    assert component.last_error is not None
    assert component.last_error["line"] == info.value.line
    assert component.describe()["version"] == 1


async def test_a_bad_file_at_start_fails_the_module_start(make_component: ComponentFactory, metrics: Metrics) -> None:
    with pytest.raises(ModuleError, match=r"comp\.py:2: syntax error"):
        await make_component("def execute(ctx, input):\n    return {\n")
    assert ops(metrics, "comp", "load", "error") == 1


async def test_old_versions_are_released(make_component: ComponentFactory, metrics: Metrics, tmp_path: Path) -> None:
    component = await make_component(versioned(1), config={"events": []})
    refs: list[weakref.ref[Any]] = []
    for n in range(2, 12):
        current = component.current
        assert current is not None
        runner = current.runner
        assert isinstance(runner, InlineRunner)
        assert runner.contract is not None
        refs += [weakref.ref(current), weakref.ref(runner), weakref.ref(runner.contract.namespace)]
        del current, runner
        write_source(tmp_path / "comp.py", versioned(n))
        await component.reload_file()
        assert await component.call({}, f"e{n}") == {"version": n}
    gc.collect()
    assert [r for r in refs if r() is not None] == []
    assert versions(metrics, "comp") == 1
    assert component.versions_held == 1


async def test_async_timeout_cancels_the_call_and_is_counted(make_component: ComponentFactory,
                                                             metrics: Metrics) -> None:
    component = await make_component(
        "async def execute(ctx, input):\n    await ctx.sleep(30)\n    return {}\n", timeout="100ms")
    with pytest.raises(StepTimeoutError, match=r"timed out after 0\.\d+s"):
        await component.call({}, "e1")
    assert ops(metrics, "comp", "execute", "timeout") == 1
    assert component.current is not None
    assert component.current.in_flight == 0


async def test_a_shorter_step_deadline_wins(make_component: ComponentFactory, metrics: Metrics) -> None:
    component = await make_component("async def execute(ctx, input):\n    await ctx.sleep(30)\n    return {}\n")
    with pytest.raises(StepTimeoutError, match=r"after 0\.0\d+s"):
        await component.call({}, "e1", 0.05)


async def test_sync_code_runs_off_the_loop(make_component: ComponentFactory) -> None:
    component = await make_component("""
import time

def execute(ctx, input):
    time.sleep(0.2)
    return {"remaining_positive": ctx.remaining() > 0, "execution": ctx.execution_id}
""")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    try:
        assert await component.call({}, "e7") == {"remaining_positive": True, "execution": "e7"}
    finally:
        ticker.cancel()
    assert ticks > 1  # the loop kept running while the sync call slept


async def test_max_concurrency_bounds_calls(make_component: ComponentFactory) -> None:
    component = await make_component("""
STATE = {"running": 0, "peak": 0}

async def execute(ctx, input):
    STATE["running"] += 1
    STATE["peak"] = max(STATE["peak"], STATE["running"])
    await ctx.sleep(0.02)
    STATE["running"] -= 1
    return dict(STATE)
""", max_concurrency=2)
    results = await asyncio.gather(*(component.call({}, f"e{i}") for i in range(6)))
    assert max(r["peak"] for r in results) == 2


async def test_component_errors_are_step_errors_with_the_line(make_component: ComponentFactory,
                                                              metrics: Metrics) -> None:
    component = await make_component("def execute(ctx, input):\n    return {'x': 1 / input['n']}\n")
    with pytest.raises(Exception, match="ZeroDivisionError") as info:
        await component.call({"n": 0}, "e1")
    assert getattr(info.value, "code", None) == "component_error"
    assert getattr(info.value, "details", None) == {"line": 2}
    assert ops(metrics, "comp", "execute", "error") == 1


async def test_upload_overrides_the_file_until_removed(make_component: ComponentFactory, metrics: Metrics) -> None:
    component = await make_component(versioned(1), config={"events": []})
    await component.upload(versioned(5))
    assert await component.call({}, "e1") == {"version": 5}
    assert component.describe()["origin"] == "upload"
    assert await component.remove_upload()
    assert await component.call({}, "e2") == {"version": 1}
    assert not await component.remove_upload()  # nothing uploaded any more
    assert versions(metrics, "comp") == 1


async def test_without_any_source_calls_are_unavailable(metrics: Metrics) -> None:
    ctx = ModuleContext("api-only", metrics, {}, lambda coro, name: coro.close(), ".")
    component = DynamicComponent("api-only", DynamicComponentConfig(), ctx)
    await component.start()
    with pytest.raises(ComponentUnavailableError):
        await component.call({}, "e1")
    await component.upload("def execute(ctx, input):\n    return {'ok': 1}\n")
    assert await component.call({}, "e2") == {"ok": 1}
    assert await component.remove_upload()
    assert component.describe()["status"] == "empty"
    assert versions(metrics, "api-only") == 0
    await component.stop()


async def test_sync_code_runs_on_the_components_own_threads(make_component: ComponentFactory) -> None:
    component = await make_component(
        "import threading\nimport time\n\ndef execute(ctx, input):\n    time.sleep(input['sleep'])\n"
        "    return {'thread': threading.current_thread().name}\n", allow_imports=["threading"], timeout="50ms",
        max_concurrency=8)
    assert (await component.call({"sleep": 0}, "e0"))["thread"].startswith("component-comp")
    overrun = [component.call({"sleep": 3}, f"e{i}") for i in range(8)]
    results = await asyncio.gather(*overrun, return_exceptions=True)
    assert all(isinstance(r, StepTimeoutError) for r in results)
    # Eight threads are still sleeping, none of them the engine's: its default executor still answers at once.
    assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 2) == "free"
