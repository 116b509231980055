"""The `call` step in running engines: shorthand and mapping forms, config checks, timeouts in both modes, and
file saves reaching the live workflow through the module's own watcher task."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.factories import config_issues, running_engine, sample, wait_until
from tests.modules.dynamic.conftest import write_source
from workflow_engine.engine.engine import Engine

COMPONENT = """
import time

async def execute(ctx, input):
    if input.get("sleep"):
        await ctx.sleep(input["sleep"])
    return {"version": VERSION, "total": sum(input.get("items", [])), "execution": ctx.execution_id}

VERSION = 1
"""
SLEEPER = "import time\n\ndef execute(ctx, input):\n    time.sleep(input['sleep'])\n    return {}\n"


def app(source: Path, *, isolation: str = "inline", extra: str = "") -> str:
    return f"""
version: 1
name: calls
engine: {{shutdown_grace: 2s}}
modules:
  - name: pricing
    type: dynamic.component
    config: {{source: "{source}", isolation: {isolation}, workers: 1, timeout: 5s{extra}}}
workflows:
  price:
    steps:
      - id: price
        call: pricing
        with: {{items: "{{{{ input['items'] }}}}", sleep: "{{{{ input.sleep }}}}"}}
        timeout: 300ms
      - set: {{total: "{{{{ steps.price.output.total }}}}", version: "{{{{ steps.price.output.version }}}}"}}
  mapping-form:
    steps:
      - call: {{component: pricing, with: {{items: [1, 2, 3]}}}}
"""


async def ready(engine: Engine) -> None:
    await asyncio.gather(*(s.ready.wait() for s in engine.supervisors.values()))


async def run(engine: Engine, workflow: str, data: object) -> tuple[object, dict[str, object] | None]:
    execution = await engine.start_execution(workflow, data, wait=True)
    return execution.output, execution.error


async def test_shorthand_and_mapping_forms(tmp_path: Path) -> None:
    source = tmp_path / "pricing.py"
    write_source(source, COMPONENT)
    async with running_engine(app(source)) as engine:
        await ready(engine)
        assert await run(engine, "price", {"items": [1, 2]}) == ({"total": 3, "version": 1}, None)
        output, error = await run(engine, "mapping-form", None)
        assert error is None
        assert isinstance(output, dict)
        assert output["total"] == 6


def test_call_config_is_checked_with_locations() -> None:
    issues = config_issues("""
        version: 1
        name: bad
        modules:
          - name: pricing
            type: dynamic.component
            config: {source: x.py, isolation: thread}
          - name: api
            type: http.client
        workflows:
          w:
            steps:
              - call: api
              - call: pricng
              - call: pricing
                with: {a: 1}
                wit: {a: 1}
    """)
    assert any("app.yaml:7:" in i and "isolation" in i for i in issues), issues
    assert any("app.yaml:13:" in i and "expected one of: dynamic" in i for i in issues), issues
    assert any("app.yaml:14:" in i and "unknown module 'pricng'" in i and "pricing" in i for i in issues), issues
    assert any("app.yaml:17:" in i and "unknown field 'wit'" in i for i in issues), issues


@pytest.mark.parametrize("isolation", ["inline", "process"])
async def test_a_call_past_its_timeout_fails_the_execution_and_is_counted(tmp_path: Path, isolation: str) -> None:
    source = tmp_path / "pricing.py"
    write_source(source, COMPONENT if isolation == "inline" else SLEEPER)
    async with running_engine(app(source, isolation=isolation)) as engine:
        await ready(engine)
        before = engine.modules["pricing"].describe().get("worker_pids")
        _, error = await run(engine, "price", {"items": [1], "sleep": 30})
        assert error is not None
        assert error["code"] == "timeout"
        assert "pricing" in str(error["message"])
        labels = {"module": "dynamic", "name": "pricing", "operation": "execute"}
        assert sample(engine.metrics, "module_operations_total", status="timeout", **labels) == 1
        if isolation == "process":
            await wait_until(lambda: engine.modules["pricing"].describe()["worker_pids"] not in ([], before),
                             "the runaway worker was replaced")
            output, error = await run(engine, "price", {"items": [4], "sleep": 0})
            assert error is None
            assert output == {"total": None, "version": None}  # SLEEPER returns {}


async def test_saving_the_file_reaches_the_live_workflow(tmp_path: Path) -> None:
    source = tmp_path / "pricing.py"
    write_source(source, COMPONENT)
    async with running_engine(app(source, extra=", debounce: 10ms")) as engine:
        await ready(engine)
        assert any(t.get_name() == "module:pricing:watch" for t in engine._tasks)
        for version in (2, 3):
            write_source(source, COMPONENT.replace("VERSION = 1", f"VERSION = {version}"))
            await wait_until(lambda v=version: engine.modules["pricing"].describe().get("version") == v,
                             f"version {version} loaded")
            assert (await run(engine, "price", {"items": [1]}))[0] == {"total": 1, "version": version}
        write_source(source, "import socket\n" + COMPONENT)
        labels = {"module": "dynamic", "name": "pricing", "operation": "reload", "status": "error"}
        await wait_until(lambda: sample(engine.metrics, "module_operations_total", **labels) == 1,
                         "the bad save was refused")
        assert (await run(engine, "price", {"items": [2]}))[0] == {"total": 2, "version": 3}
        assert sample(engine.metrics, "dynamic_component_versions", name="pricing") == 1
