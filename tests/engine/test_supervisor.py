"""Module supervision inside a real engine: retry until ready, dependency order, reverse stop, crashed tasks."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from pydantic import Field

from tests.factories import load_app, running_engine, wait_until
from workflow_engine.config.models import Strict
from workflow_engine.engine.engine import Engine
from workflow_engine.modules.base import Module, ModuleContext, ModuleState
from workflow_engine.registry.builtins import default_registry
from workflow_engine.registry.specs import ModuleSpec, Registry


class ProbeConfig(Strict):
    fail_starts: int = Field(0, ge=0, description="Start attempts that fail before one succeeds.")
    crash_task: bool = Field(False, description="Run a background task that crashes when told to.")
    retry_takes: float = Field(0.0, ge=0, description="Seconds each attempt after the first takes (a connect timeout).")


@dataclass
class Journal:
    """What the probe modules of one test did, in order."""

    entries: list[str] = field(default_factory=list)
    crash: asyncio.Event = field(default_factory=asyncio.Event)


class ProbeModule(Module):
    """A module that records its lifecycle, can fail its first starts and can own a task that crashes."""

    kind = "probe"

    def __init__(self, name: str, config: ProbeConfig, ctx: ModuleContext, journal: Journal) -> None:
        super().__init__(name, ctx)
        self.config = config
        self.journal = journal
        self.attempts = 0

    async def start(self) -> None:
        self.attempts += 1
        if self.attempts > 1:
            await asyncio.sleep(self.config.retry_takes)
        if self.attempts <= self.config.fail_starts:
            self.journal.entries.append(f"{self.name}:start-failed")
            raise ConnectionError(f"{self.name} is not reachable yet (attempt {self.attempts})")
        if self.config.crash_task:
            self.ctx.spawn(self._crash_later(), "worker")
        self.journal.entries.append(f"{self.name}:started")

    async def stop(self) -> None:
        self.journal.entries.append(f"{self.name}:stopped")

    async def _crash_later(self) -> None:
        await self.journal.crash.wait()
        raise RuntimeError("worker lost its connection")


def probe_registry(journal: Journal) -> Registry:
    registry = default_registry()

    def factory(name: str, config: ProbeConfig, ctx: ModuleContext) -> ProbeModule:
        return ProbeModule(name, config, ctx, journal)

    registry.add_module(ModuleSpec("test.probe", "probe", ProbeConfig, factory, "A module tests can steer."))
    return registry


def app(modules: str) -> str:
    return f"""
version: 1
name: app
engine: {{shutdown_grace: 1s}}
modules:
{modules}
workflows:
  w:
    steps:
      - set: {{a: 1}}
"""


def state(engine: Engine, module: str) -> str:
    _, body = engine.health.readiness()
    return str(body["components"][module]["state"])


async def test_a_module_that_fails_to_start_is_retrying_then_ready() -> None:
    journal = Journal()
    async with running_engine(app("""
  - name: db
    type: test.probe
    config: {fail_starts: 2}
"""), registry=probe_registry(journal)) as engine:
        await wait_until(lambda: state(engine, "db") == "retrying", "db is retrying")
        ready, body = engine.health.readiness()
        assert ready is False
        assert "not reachable yet" in body["components"]["db"]["detail"]
        await wait_until(lambda: state(engine, "db") == "ready", "db is ready")
        assert engine.health.readiness()[0] is True
        assert engine.supervisors["db"].attempts == 3
    assert journal.entries == ["db:start-failed", "db:start-failed", "db:started", "db:stopped"]


async def test_a_retry_in_progress_stays_retrying_with_the_last_reason() -> None:
    """A retry can take as long as a connect timeout; meanwhile /readyz still says why the module is not ready."""
    journal = Journal()
    async with running_engine(app("""
  - name: db
    type: test.probe
    config: {fail_starts: 2, retry_takes: 0.4}
"""), registry=probe_registry(journal)) as engine:
        await wait_until(lambda: engine.supervisors["db"].attempts == 2, "the first retry runs")
        seen = []
        while engine.supervisors["db"].attempts == 2:
            _, body = engine.health.readiness()
            seen.append((body["components"]["db"]["state"], body["components"]["db"].get("detail")))
            await asyncio.sleep(0.05)
    # While the second attempt runs, the first one's failure; once it failed (backoff), its own.
    assert seen[0] == ("retrying", "ConnectionError: db is not reachable yet (attempt 1)")
    assert {state for state, _ in seen} == {"retrying"}
    assert {detail for _, detail in seen} <= {"ConnectionError: db is not reachable yet (attempt 1)",
                                              "ConnectionError: db is not reachable yet (attempt 2)"}


async def test_dependents_start_after_their_dependency_is_ready() -> None:
    journal = Journal()
    async with running_engine(app("""
  - name: api
    type: test.probe
    depends_on: [db]
  - name: db
    type: test.probe
    config: {fail_starts: 1}
"""), registry=probe_registry(journal)) as engine:
        await wait_until(lambda: state(engine, "db") == "retrying", "db is retrying")
        _, body = engine.health.readiness()
        assert body["components"]["api"]["state"] == "starting"
        assert body["components"]["api"]["detail"] == "waiting for db"
        await wait_until(lambda: engine.health.readiness()[0], "everything is ready")
    assert journal.entries[:3] == ["db:start-failed", "db:started", "api:started"]


async def test_modules_stop_in_reverse_dependency_order() -> None:
    journal = Journal()
    async with running_engine(app("""
  - name: web
    type: test.probe
    depends_on: [api]
  - name: api
    type: test.probe
    depends_on: [db]
  - name: db
    type: test.probe
"""), registry=probe_registry(journal)) as engine:
        await wait_until(lambda: engine.health.readiness()[0], "everything is ready")
        assert journal.entries == ["db:started", "api:started", "web:started"]
        journal.entries.clear()
    assert journal.entries == ["web:stopped", "api:stopped", "db:stopped"]
    _, body = engine.health.readiness()
    assert {c["state"] for c in body["components"].values()} == {"stopped"}


async def test_a_crashed_module_task_marks_the_module_failed_and_not_ready() -> None:
    journal = Journal()
    async with running_engine(app("""
  - name: cache
    type: test.probe
    config: {crash_task: true}
  - name: db
    type: test.probe
"""), registry=probe_registry(journal)) as engine:
        await wait_until(lambda: engine.health.readiness()[0], "everything is ready")
        journal.crash.set()
        await wait_until(lambda: state(engine, "cache") == "failed", "cache is failed")
        ready, body = engine.health.readiness()
        assert ready is False
        assert body["components"]["cache"]["detail"] == "RuntimeError: worker lost its connection"
        assert body["components"]["db"]["state"] == "ready"
        assert not engine.supervisors["cache"].ready.is_set()
        # The engine itself keeps serving.
        execution = await engine.start_execution("w", wait=True)
        assert execution.output == {"a": 1}
    # It started, so it is stopped (its resources released) although it failed since.
    assert journal.entries[-2:] == ["db:stopped", "cache:stopped"]


async def test_a_module_that_never_started_is_not_stopped() -> None:
    journal = Journal()
    async with running_engine(app("""
  - name: db
    type: test.probe
    config: {fail_starts: 100}
"""), registry=probe_registry(journal)) as engine:
        await wait_until(lambda: state(engine, "db") == "retrying", "db is retrying")
    assert "db:stopped" not in journal.entries
    assert state(engine, "db") == "stopped"


async def test_a_module_is_registered_with_health_before_it_starts() -> None:
    journal = Journal()
    registry = probe_registry(journal)
    engine = Engine(load_app(app("""
  - name: db
    type: test.probe
"""), registry), registry, mgmt_address="127.0.0.1:0", store_url="sqlite:///:memory:")
    ready, body = engine.health.readiness()
    assert ready is False
    assert body["components"]["db"] == {"kind": "probe", "state": ModuleState.CREATED.value}
