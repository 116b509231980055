"""`isolation: process`: worker pool, rlimits, hard timeouts that kill and replace, crashes that fail one call."""

from __future__ import annotations

import asyncio

import pytest

from tests.factories import wait_until
from tests.modules.dynamic.conftest import ComponentFactory, ops
from workflow_engine.errors import StepError, StepTimeoutError
from workflow_engine.observability.metrics import Metrics

WORKER = """
import time

CONFIG = {}

def setup(config):
    CONFIG.update(config)

def execute(ctx, input):
    action = input.get("action")
    if action == "sleep":
        time.sleep(input["seconds"])
    elif action == "allocate":
        block = bytearray(input["mib"] * 1024 * 1024)
        return {"allocated": len(block)}
    elif action == "spin":
        while True:
            pass
    ctx.log.info("served", action=action)
    return {"greeting": CONFIG["greeting"], "execution": ctx.execution_id}
"""


def pids(component: object) -> list[int]:
    return list(component.describe()["worker_pids"])  # type: ignore[attr-defined]


async def test_calls_run_in_a_worker_with_setup_config(make_component: ComponentFactory) -> None:
    component = await make_component(WORKER, isolation="process", workers=1, config={"greeting": "hi"})
    assert await component.call({}, "e1") == {"greeting": "hi", "execution": "e1"}
    assert len(pids(component)) == 1


async def test_timeout_kills_and_replaces_the_worker(make_component: ComponentFactory, metrics: Metrics) -> None:
    component = await make_component(WORKER, isolation="process", workers=1, config={"greeting": "hi"},
                                     timeout="300ms")
    [before] = pids(component)
    with pytest.raises(StepTimeoutError, match=f"worker {before} was killed"):
        await component.call({"action": "sleep", "seconds": 30}, "e1")
    assert ops(metrics, "comp", "execute", "timeout") == 1
    await wait_until(lambda: len(pids(component)) == 1, "a replacement worker started")
    [after] = pids(component)
    assert after != before
    assert await component.call({}, "e2") == {"greeting": "hi", "execution": "e2"}


async def test_memory_past_the_limit_fails_only_that_call(make_component: ComponentFactory) -> None:
    component = await make_component(WORKER, isolation="process", workers=1, config={"greeting": "hi"},
                                     memory_limit="256Mi")
    assert await component.call({"action": "allocate", "mib": 8}, "e1") == {"allocated": 8 * 1024 * 1024}
    with pytest.raises(StepError, match="MemoryError"):
        await component.call({"action": "allocate", "mib": 1024}, "e2")
    assert await component.call({}, "e3") == {"greeting": "hi", "execution": "e3"}


async def test_a_crash_fails_only_that_call_and_the_worker_is_replaced(make_component: ComponentFactory,
                                                                      metrics: Metrics) -> None:
    source = WORKER.replace("import time", "import os\nimport time").replace(
        '    elif action == "spin":', '    elif action == "exit":\n        os._exit(3)\n    elif action == "spin":')
    component = await make_component(source, isolation="process", workers=2, config={"greeting": "hi"},
                                     allow_imports=["os"])
    before = set(pids(component))
    slow = asyncio.create_task(component.call({"action": "sleep", "seconds": 0.3}, "e1"))
    await asyncio.sleep(0.05)
    with pytest.raises(StepError, match="died \\(exit code 3\\)") as info:
        await component.call({"action": "exit"}, "e2")
    assert info.value.code == "component_crashed"
    assert await slow == {"greeting": "hi", "execution": "e1"}  # the other worker's call is untouched
    await wait_until(lambda: len(pids(component)) == 2, "a replacement worker started")
    assert len(set(pids(component)) - before) == 1
    assert await component.call({}, "e3") == {"greeting": "hi", "execution": "e3"}
    assert ops(metrics, "comp", "execute", "error") == 1


async def test_cpu_limit_kills_a_spinning_call(make_component: ComponentFactory) -> None:
    component = await make_component(WORKER, isolation="process", workers=1, config={"greeting": "hi"},
                                     cpu_limit="1s", timeout="20s")
    with pytest.raises(StepError, match=r"SIGXCPU|SIGKILL"):
        await component.call({"action": "spin"}, "e1")
    await wait_until(lambda: len(pids(component)) == 1, "a replacement worker started")
    assert await component.call({}, "e2") == {"greeting": "hi", "execution": "e2"}


async def test_a_refused_version_starts_no_worker(make_component: ComponentFactory, tmp_path: object) -> None:
    component = await make_component(WORKER, isolation="process", workers=1, config={"greeting": "hi"})
    with pytest.raises(Exception, match="'subprocess' is not allowed"):
        await component.upload("import subprocess\ndef execute(ctx, input):\n    return {}\n")
    with pytest.raises(Exception, match="setup failed: KeyError"):
        await component.upload("def setup(config):\n    config['missing']\ndef execute(ctx, input):\n    return {}\n")
    assert await component.call({}, "e1") == {"greeting": "hi", "execution": "e1"}


async def test_reload_swaps_worker_pools(make_component: ComponentFactory, metrics: Metrics) -> None:
    component = await make_component(WORKER, isolation="process", workers=1, config={"greeting": "hi"})
    [old] = pids(component)
    await wait_until(lambda: len(component.describe()["spare_worker_pids"]) == 1, "a spare worker started")
    [spare] = component.describe()["spare_worker_pids"]
    await component.upload(WORKER.replace('CONFIG["greeting"]', '"new " + CONFIG["greeting"]'))
    assert await component.call({}, "e1") == {"greeting": "new hi", "execution": "e1"}
    assert pids(component) == [spare]  # the new version took the spare: no interpreter start on the way
    assert spare != old
    # The old version's workers stop in the background (teardown runs in them), off the reload path.
    await wait_until(lambda: ops(metrics, "comp", "unload", "success") == 1, "the old version unloaded")
    assert component.versions_held == 1


async def test_workers_do_not_inherit_the_engines_environment(make_component: ComponentFactory,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKFLOW_TEST_SECRET", "s3cret")
    component = await make_component(
        "import os\n\ndef execute(ctx, input):\n    return {'secret': os.environ.get('WORKFLOW_TEST_SECRET'),"
        " 'path': 'PATH' in os.environ}\n", isolation="process", workers=1, allow_imports=["os"])
    assert await component.call({}, "e1") == {"secret": None, "path": True}

