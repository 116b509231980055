"""The engine: wires modules, runtime and triggers from an AppConfig; runs them; shuts down in order."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog

from workflow_engine.api.app import mount_api
from workflow_engine.config.models import AppConfig
from workflow_engine.config.validate import load_config_text
from workflow_engine.engine.control import Control
from workflow_engine.engine.reload import restart_needed, swap_generation
from workflow_engine.engine.supervisor import ModuleSupervisor
from workflow_engine.errors import ConfigError
from workflow_engine.ids import uuid7
from workflow_engine.modules.base import Module, ModuleContext, ModuleState
from workflow_engine.modules.broker.base import Broker
from workflow_engine.modules.eventbus.broker import BrokerEventBus
from workflow_engine.modules.eventbus.memory import EventBus
from workflow_engine.modules.http.client import HttpClient, HttpClientConfig
from workflow_engine.observability.health import Health
from workflow_engine.observability.loop_monitor import LoopMonitor
from workflow_engine.observability.management import ManagementServer
from workflow_engine.observability.memory import publish_memory_limit
from workflow_engine.observability.metrics import Metrics
from workflow_engine.registry.specs import Registry
from workflow_engine.runtime import maintenance
from workflow_engine.runtime.execution import Execution
from workflow_engine.runtime.program import CompiledWorkflow, compile_program, load_program
from workflow_engine.runtime.recorder import Recorder
from workflow_engine.runtime.runtime import Runtime
from workflow_engine.runtime.step import Services
from workflow_engine.runtime.waiters import GROUP as WAITERS_GROUP
from workflow_engine.runtime.waiters import Waiters
from workflow_engine.store.base import SchemaTooNewError, Store
from workflow_engine.store.factory import open_store_from_url
from workflow_engine.triggers.base import Trigger, Wiring
from workflow_engine.triggers.event import EventTrigger, event_patterns

log = structlog.get_logger("workflow_engine.engine")

MODULE_STOP_TIMEOUT = 15.0
CONSUMER_SETTLE_TIMEOUT = 5.0
# Net allocations of container objects between two collections of the youngest generation (see `run`).
GC_YOUNG_THRESHOLD = 10_000


class Engine:
    """One running application. Build it, `await run()`, call `request_stop()` (SIGTERM does) to end it."""

    def __init__(
        self,
        app: AppConfig,
        registry: Registry,
        *,
        metrics: Metrics | None = None,
        mgmt_address: str | None = None,
        environ: dict[str, str] | None = None,
        store_url: str | None = None,
        watch: bool = False,
    ) -> None:
        self.app = app
        self.registry = registry
        self.metrics = metrics or Metrics()
        self.program = compile_program(app, registry)
        self.loop_monitor = LoopMonitor(self.metrics, app.engine.loop_lag_interval)
        self.health = Health(self.loop_monitor)
        self.metrics.engine_ready.set_function(lambda: 1.0 if self.health.readiness()[0] else 0.0)
        self.store: Store = open_store_from_url(store_url or app.engine.store)
        self.replica = app.engine.replica_id or f"{socket.gethostname()}-{os.getpid()}-{uuid7()[-6:]}"
        self.recorder = Recorder(self.store, self.replica, app.engine.lease)
        self.runtime = Runtime(self.program, self.metrics, self.recorder)
        self.runtime.poll_interval = app.engine.poll_interval
        self.runtime.park_after = app.engine.park_after
        self.modules: dict[str, Module] = {}
        self.supervisors: dict[str, ModuleSupervisor] = {}
        self.mgmt_address = mgmt_address or app.engine.management.address
        self.management: ManagementServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._group: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self.started = asyncio.Event()
        config_dir = str(Path(app.source_file).parent) if app.source_file else "."
        for mdef in app.modules:
            spec = registry.modules[mdef.type]
            ctx = ModuleContext(mdef.name, self.metrics, self.modules, self._spawn, config_dir, self.store)
            self.modules[mdef.name] = module = spec.factory(mdef.name, mdef.config, ctx)
            self.supervisors[mdef.name] = ModuleSupervisor(module, spec.kind, mdef.depends_on, self.health)
        self.bus = self._event_bus()
        self.wiring = Wiring(self.runtime, self.modules, self.bus, self.metrics)
        self.waiters = Waiters(self.runtime, self.program)
        self.waiters.attach(self.bus)
        self.route_events()
        self._reload_lock = asyncio.Lock()
        self._trigger_tasks: dict[asyncio.Task[Any], Trigger] = {}
        self.watch = watch
        for workflow in self.program.values():
            if workflow.trigger is not None:
                workflow.trigger.attach(self.wiring)
        env = os.environ if environ is None else environ
        self.template_env = {name: env[name] for name in app.engine.template_env if name in env}

    def _event_bus(self) -> EventBus:
        """In-process, or backed by the broker module `engine.event_bus.broker` (used once it is ready)."""
        config = self.app.engine.event_bus
        if config is None:
            return EventBus()
        return BrokerEventBus(config, self.modules, self.supervisors[config.broker].ready)

    def route_events(self) -> None:
        """Tell a broker-backed bus which topics the running program's triggers and waits want, and its broker
        which consumer groups to keep the bus's messages for from the start (RabbitMQ, MQTT)."""
        if not isinstance(self.bus, BrokerEventBus):
            return
        self.bus.route([*event_patterns(self.program.values()), *self.waiters.topics])
        broker = self.modules.get(self.bus.config.broker)
        if isinstance(broker, Broker):
            for group in _bus_groups(self.program, self.waiters.topics):
                broker.keep_for(self.bus.config.topic, group)

    async def keep_event_groups(self, program: dict[str, CompiledWorkflow]) -> None:
        """Before `program` runs (config apply): on RabbitMQ/MQTT, declare the bus's consumer groups it adds now,
        so that the events published between its routing and its consumers' first subscription are kept."""
        if not isinstance(self.bus, BrokerEventBus):
            return
        broker = self.modules.get(self.bus.config.broker)
        if not isinstance(broker, Broker):
            return
        for group in _bus_groups(program, Waiters(self.runtime, program).topics):
            await broker.keep(self.bus.config.topic, group)

    # -- running ---------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until `request_stop()`; then drain and stop everything in order."""
        publish_memory_limit(self.metrics, self.app.engine.memory_limit)
        if self.app.engine.management.enabled:
            self.management = ManagementServer(self.mgmt_address, self.metrics, self.health)
            mount_api(self.management, Control(self))
            await self.management.start()
        http_default = HttpClient.standalone("default", HttpClientConfig(), self.metrics)
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                if not await self._unless_stopped(self._open_store()):
                    log.info("stopped before the store was ready")
                    return
                await http_default.start()
                await self._start(http_default)
                await self._stop.wait()
                await self._shutdown()
        finally:
            self._group = None
            await http_default.stop()
            await self.store.close()
            self.health.set_component("store", "store", ModuleState.STOPPED)
            if self.management is not None:
                await self.management.stop()
        log.info("engine stopped", app=self.app.name)

    async def _unless_stopped(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run `work`, unless `request_stop()` comes first (then cancel it): True when it finished. SIGTERM
        while the store is still unreachable at start must end the process, not wait for the store."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            task.result()  # its error, if any
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False

    async def _open_store(self) -> None:
        """Connect to the store (retrying while it is down, visible in /readyz), migrate, record the config."""
        backoff = 0.2
        while True:
            self.health.set_component("store", "store", ModuleState.STARTING)
            try:
                await self.store.open(migrate=self.app.engine.auto_migrate)
                digest = hashlib.sha256(self.app.source_text.encode()).hexdigest()
                self.recorder.config_version = await self.store.save_config(self.app.source_text, digest)
                break
            except SchemaTooNewError:
                raise
            except Exception as exc:  # supervision boundary: the store may come up later
                self.health.set_component("store", "store", ModuleState.RETRYING, f"{type(exc).__name__}: {exc}")
                log.warning("store not ready, retrying", store=_redact(self.store.url), error=exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
        self.health.set_component("store", "store", ModuleState.READY)
        log.info("store ready", store=_redact(self.store.url), config_version=self.recorder.config_version,
                 replica=self.replica)

    async def _start(self, http_default: HttpClient) -> None:
        self._spawn(self.loop_monitor.run(), "loop-monitor")
        self.bus.start(self._spawn)
        services = Services(self.metrics, self.bus, self.modules, self.runtime, http_default, self.template_env)
        self.runtime.start(services, self._spawn)
        engine = self.app.engine
        if engine.replica_id:  # a restarted replica with a stable id takes its executions back at once
            taken = await self.store.release_owner(engine.replica_id)
            log.info("released executions of this replica's previous run", count=taken)
        self._spawn(self.recorder.write_summaries(), "summary-writer")
        self._spawn(maintenance.heartbeat(self.runtime, engine.lease / 3), "heartbeat")
        self._spawn(maintenance.recover(self.runtime, engine.poll_interval), "recovery")
        self._spawn(maintenance.prune(self.runtime, engine.retention), "retention")
        for name, supervisor in self.supervisors.items():
            self._spawn(supervisor.run(self.supervisors), f"start:{name}")
        self.restart_trigger_loops()
        if self.watch:
            self._spawn(self._watch_config(), "config-watcher")
        # Everything built so far lives as long as the engine: keep it out of the collector's full passes,
        # whose pauses (100+ ms with a compiled program and the libraries loaded) would show as p99 latency.
        gc.collect()
        gc.freeze()
        # A young-generation pass every 700 net allocations (CPython's default) runs every few requests; one
        # every 10,000 saves an HTTP route ~2 % of its instructions per request (callgrind) and ~4 % of its CPU
        # (bench/RESULTS.md), for at most that many more objects waiting to be collected. The older
        # generations keep their ratios.
        young, older, oldest = gc.get_threshold()
        gc.set_threshold(max(GC_YOUNG_THRESHOLD, young), older, oldest)
        self.started.set()
        log.info("engine started", app=self.app.name, modules=len(self.modules), workflows=len(self.program))

    def restart_trigger_loops(self) -> None:
        """(Re)start the loops of the current program's triggers (schedules, consumers of a broker-backed event
        bus), stopping the previous ones."""
        self._stop_trigger_loops()
        for workflow in self.program.values():
            trigger = workflow.trigger
            if trigger is not None and trigger.has_loop:
                task = self._spawn(trigger.run(self.wiring), f"trigger:{trigger.kind}:{workflow.name}")
                self._trigger_tasks[task] = trigger
                task.add_done_callback(self._trigger_tasks.pop)
        if isinstance(self.bus, BrokerEventBus) and self.waiters.topics:
            self._spawn(self.waiters.run(self.bus), "trigger:wait_for")

    def _stop_trigger_loops(self) -> list[asyncio.Task[Any]]:
        """Stop the running trigger loops: graceful ones (message consumers) take nothing new and end once what
        they hold is settled (returned, to wait for); the others are cancelled."""
        graceful = []
        for task in list(self._tasks):
            if not task.get_name().startswith("trigger:"):
                continue
            trigger = self._trigger_tasks.get(task)
            if trigger is not None and trigger.graceful:
                trigger.stop()
                graceful.append(task)
            else:
                task.cancel()
        return graceful

    async def _watch_config(self) -> None:
        """`workflow run --watch`: apply the config file each time it is saved; a bad save changes nothing."""
        from watchfiles import awatch

        path = Path(self.app.source_file)
        async for _changes in awatch(path, debounce=300, step=50):
            try:
                text = await asyncio.to_thread(path.read_text, encoding="utf-8")
                await self.apply_config(text)
            except ConfigError as err:
                log.error("config change not applied", file=str(path), issues=[str(i) for i in err.issues])
            except OSError as err:
                log.error("config file unreadable", file=str(path), error=err)

    async def apply_config(self, text: str) -> int:
        """Apply a new config without restart; returns its version. A bad one raises ConfigError with every
        issue and changes nothing; in-flight executions finish on the code they started with."""
        async with self._reload_lock:
            app, program = load_program(lambda: load_config_text(text, self.app.source_file, self.registry),
                                        self.registry)
            issues = restart_needed(self.app, app)
            if issues:
                raise ConfigError(issues)
            version = await self.store.save_config(text, hashlib.sha256(text.encode()).hexdigest())
            await self.keep_event_groups(program)
            swap_generation(self, app, program)
            self.recorder.config_version = version
            log.info("config applied", version=version, workflows=len(program))
            return version

    def request_stop(self) -> None:
        """Begin the shutdown sequence (safe to call more than once, from a signal handler too)."""
        self.health.set_draining(True)
        self._stop.set()

    async def _shutdown(self) -> None:
        grace = self.app.engine.shutdown_grace
        log.info("shutting down: intake stopped, draining executions", grace_seconds=grace,
                 running=len(self.runtime.live))
        self.health.set_draining(True)
        self.runtime.accepting = False
        # Schedules stop firing; consumers take no more messages; modules still retrying their start give up.
        consumers = self._stop_trigger_loops()
        for task in list(self._tasks):
            if task.get_name().startswith("start:"):
                task.cancel()
        await self.runtime.drain(grace)
        if consumers:
            # The executions above have ended: their messages are acked now instead of being delivered again
            # after the broker's redelivery wait. A message whose execution was interrupted stays unsettled.
            _, stuck = await asyncio.wait(consumers, timeout=CONSUMER_SETTLE_TIMEOUT)
            for task in stuck:
                task.cancel()
        for name in reversed(list(self.supervisors)):
            await self.supervisors[name].stop(MODULE_STOP_TIMEOUT)
        for task in list(self._tasks):
            task.cancel()

    # -- task ownership --------------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run `coro` in the engine's task group; a crash is logged and marks its module failed."""
        if self._group is None:
            coro.close()
            raise RuntimeError(f"task '{name}' spawned while the engine is not running")
        task = self._group.create_task(self._guard(coro, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro: Coroutine[Any, Any, Any], name: str) -> Any:
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # supervision boundary: one crashed task must not take the engine down
            log.error("task crashed", task=name, error=exc)
            kind, _, rest = name.partition(":")
            owner = self.supervisors.get(rest.split(":", 1)[0]) if kind == "module" else None
            if owner is not None:
                owner.failed(exc)
            return None

    # -- manual start ----------------------------------------------------------------------------------------

    async def start_execution(self, workflow: str, input: Any = None, *, wait: bool = False) -> Execution:
        """Start `workflow` by hand (the `manual` trigger); with `wait`, return once it finished."""
        execution = await self.runtime.admit(workflow, input, trigger="manual")
        if wait:
            await asyncio.shield(execution.done)
        return execution



def _redact(url: str) -> str:
    """A store URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _bus_groups(program: dict[str, CompiledWorkflow], wait_topics: set[str]) -> list[str]:
    """The consumer groups a broker-backed bus uses for `program`: one per `event`-triggered workflow, and the
    waiters' group when some `wait_for` waits on the bus."""
    groups = [wf.name for wf in program.values() if isinstance(wf.trigger, EventTrigger)]
    return [*groups, *([WAITERS_GROUP] if wait_topics else [])]
